"""Reference PyTorch HRNet weights <-> Flax variables.

The reference ``state_dict`` names map one to one onto Flax variable paths
(see :mod:`hrnet_jax.models.hrnet` for the naming rule): convolution weights
are transposed from (O, I, kH, kW) to (kH, kW, I, O), BatchNorm
``weight``/``bias``/``running_mean``/``running_var`` become
``scale``/``bias`` (params) and ``mean``/``var`` (batch_stats), and
``num_batches_tracked`` is accepted and dropped.

Nothing here needs PyTorch except :func:`read_torch_checkpoint`, which imports
it on first use.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from hrnet_jax.config import Config, ModelConfig

_EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}
_STEM_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class ReferenceEntry:
    """One reference ``state_dict`` entry and where it lives in Flax variables.

    Attributes:
      name: reference name, e.g. ``'stage2.0.branches.0.1.conv1.weight'``.
      shape: reference (PyTorch) shape.
      collection: ``'params'``, ``'batch_stats'``, or None for
        ``num_batches_tracked`` (no Flax counterpart).
      path: Flax path inside the collection, e.g.
        ``('stage2_0', 'branches_0_1', 'conv1', 'kernel')``.
    """

    name: str
    shape: tuple[int, ...]
    collection: str | None
    path: tuple[str, ...]

    @property
    def is_conv_kernel(self) -> bool:
        return len(self.shape) == 4


def flax_module_path(reference_module: str) -> tuple[str, ...]:
    """Flax module path of a reference module name: ``'stage2.0.branches.0.1'`` ->
    ``('stage2_0', 'branches_0_1')``."""
    return tuple(re.sub(r"\.(\d+)", r"_\1", reference_module).split("."))


def reference_module_name(flax_path: tuple[str, ...]) -> str:
    """Inverse of :func:`flax_module_path`."""
    return ".".join(re.sub(r"_(\d+)", r".\1", part) for part in flax_path)


def _model_config(cfg: Config | ModelConfig) -> ModelConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


def _conv(module: str, out_ch: int, in_ch: int, k: int) -> Iterator[tuple[str, str, tuple]]:
    yield module, "weight", (out_ch, in_ch, k, k)


def _bn(module: str, ch: int) -> Iterator[tuple[str, str, tuple]]:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        yield module, leaf, (ch,)
    yield module, "num_batches_tracked", ()


def _block(prefix: str, kind: str, in_ch: int, planes: int, downsample: bool):
    out_ch = planes * _EXPANSION[kind]
    if kind == "BASIC":
        yield from _conv(f"{prefix}.conv1", planes, in_ch, 3)
        yield from _bn(f"{prefix}.bn1", planes)
        yield from _conv(f"{prefix}.conv2", planes, planes, 3)
        yield from _bn(f"{prefix}.bn2", planes)
    else:
        yield from _conv(f"{prefix}.conv1", planes, in_ch, 1)
        yield from _bn(f"{prefix}.bn1", planes)
        yield from _conv(f"{prefix}.conv2", planes, planes, 3)
        yield from _bn(f"{prefix}.bn2", planes)
        yield from _conv(f"{prefix}.conv3", out_ch, planes, 1)
        yield from _bn(f"{prefix}.bn3", out_ch)
    if downsample:
        yield from _conv(f"{prefix}.downsample.0", out_ch, in_ch, 1)
        yield from _bn(f"{prefix}.downsample.1", out_ch)


def _reference_modules(m: ModelConfig) -> Iterator[tuple[str, str, tuple]]:
    """(module, leaf, shape) in the reference's registration order."""
    yield from _conv("conv1", _STEM_WIDTH, 3, 3)
    yield from _bn("bn1", _STEM_WIDTH)
    yield from _conv("conv2", _STEM_WIDTH, _STEM_WIDTH, 3)
    yield from _bn("bn2", _STEM_WIDTH)
    in_ch = _STEM_WIDTH
    for k in range(4):
        yield from _block(f"layer1.{k}", "BOTTLENECK", in_ch, _STEM_WIDTH, k == 0)
        in_ch = _STEM_WIDTH * _EXPANSION["BOTTLENECK"]

    pre = (in_ch,)
    for s, stage in enumerate((m.stage2, m.stage3, m.stage4), start=2):
        expansion = _EXPANSION[stage.block]
        cur = tuple(c * expansion for c in stage.num_channels)
        t = f"transition{s - 1}"
        for i, width in enumerate(cur):
            if i < len(pre):
                if width != pre[i]:
                    yield from _conv(f"{t}.{i}.0", width, pre[i], 3)
                    yield from _bn(f"{t}.{i}.1", width)
                continue
            steps = i + 1 - len(pre)
            for j in range(steps):
                out = width if j == steps - 1 else pre[-1]
                yield from _conv(f"{t}.{i}.{j}.0", out, pre[-1], 3)
                yield from _bn(f"{t}.{i}.{j}.1", out)
        for mod in range(stage.num_modules):
            prefix = f"stage{s}.{mod}"
            for i in range(stage.num_branches):
                for k in range(stage.num_blocks[i]):
                    downsample = k == 0 and cur[i] != stage.num_channels[i] * expansion
                    yield from _block(f"{prefix}.branches.{i}.{k}", stage.block,
                                      cur[i], stage.num_channels[i], downsample)
            if stage.num_branches == 1:
                continue
            last = s == 4 and mod == stage.num_modules - 1
            for i in range(1 if last else stage.num_branches):
                for j in range(stage.num_branches):
                    f = f"{prefix}.fuse_layers.{i}.{j}"
                    if j > i:
                        yield from _conv(f"{f}.0", cur[i], cur[j], 1)
                        yield from _bn(f"{f}.1", cur[i])
                    elif j < i:
                        for k in range(i - j):
                            out = cur[i] if k == i - j - 1 else cur[j]
                            yield from _conv(f"{f}.{k}.0", out, cur[j], 3)
                            yield from _bn(f"{f}.{k}.1", out)
        pre = cur
    k = m.final_conv_kernel
    yield "final_layer", "weight", (m.num_joints, pre[0], k, k)
    yield "final_layer", "bias", (m.num_joints,)


_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": (None, "num_batches_tracked"),
}


def reference_layout(cfg: Config | ModelConfig) -> list[ReferenceEntry]:
    """Every reference ``state_dict`` entry of ``cfg``'s network, in reference order.

    Args:
      cfg: configuration (only the ``model`` section is used).

    Returns:
      The entries, ``num_batches_tracked`` included, as the reference's
      ``model.state_dict()`` lists them.
    """
    entries = []
    for module, leaf, shape in _reference_modules(_model_config(cfg)):
        base = flax_module_path(module)
        if len(shape) == 4:
            collection, flax_leaf = "params", "kernel"
        elif module == "final_layer" and leaf == "bias":
            collection, flax_leaf = "params", "bias"
        else:
            collection, flax_leaf = _BN_LEAVES[leaf]
        entries.append(ReferenceEntry(f"{module}.{leaf}", tuple(shape), collection,
                                      base + (flax_leaf,)))
    return entries


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is never imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
    return np.asarray(value)


def _flax_shape(entry: ReferenceEntry) -> tuple[int, ...]:
    if entry.is_conv_kernel:
        o, i, kh, kw = entry.shape
        return (kh, kw, i, o)
    return entry.shape


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _format_problems(what: str, missing: list[str], unexpected: list[str],
                     mismatched: list[str]) -> str:
    lines = [f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(mismatched)} mis-shaped"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", mismatched)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items)
    return "\n".join(lines)


def torch_state_dict_to_variables(
    state_dict: Mapping[str, Any], cfg: Config | ModelConfig, *, strict: bool = True
) -> dict[str, dict]:
    """Flax variables for ``build_model(cfg)`` from a reference ``state_dict``.

    Args:
      state_dict: reference name -> array (NumPy arrays, or torch tensors).
      cfg: configuration whose network the weights belong to.
      strict: raise if any reference entry is missing or any key is
        unexpected. Shape mismatches always raise. With ``strict=False``
        unexpected keys are ignored and missing entries are left out of the
        result (a partial tree, to merge into initialised variables).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` nested dicts of float32 NumPy
      arrays.

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped key.
    """
    layout = reference_layout(cfg)
    known = {e.name: e for e in layout}
    missing, mismatched = [], []
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for entry in layout:
        if entry.collection is None:
            continue  # num_batches_tracked: optional (older checkpoints lack it), unused
        if entry.name not in state_dict:
            missing.append(f"{entry.name} {entry.shape}")
            continue
        value = _to_numpy(state_dict[entry.name])
        if tuple(value.shape) != entry.shape:
            mismatched.append(f"{entry.name}: expected {entry.shape}, got {tuple(value.shape)}")
            continue
        if entry.is_conv_kernel:
            value = np.transpose(value, (2, 3, 1, 0))
        # A copy: np.asarray of a CPU tensor shares its memory, and a later
        # training step in torch would change these arrays under our feet.
        _set(variables[entry.collection], entry.path, np.array(value, dtype=np.float32))
    unexpected = [k for k in state_dict if k not in known]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(_format_problems(
            "state_dict does not match the reference network of this config",
            missing if strict else [], unexpected if strict else [], mismatched))
    return variables


def _check_variables(variables: Mapping[str, Any], layout: list[ReferenceEntry]) -> None:
    missing, mismatched = [], []
    expected_paths = set()
    for entry in layout:
        if entry.collection is None:
            continue
        expected_paths.add((entry.collection,) + entry.path)
        label = f"{entry.collection}/{'/'.join(entry.path)}"
        try:
            shape = tuple(np.shape(_get(variables[entry.collection], entry.path)))
        except (KeyError, TypeError):
            missing.append(f"{label} {_flax_shape(entry)}")
            continue
        if shape != _flax_shape(entry):
            mismatched.append(f"{label}: expected {_flax_shape(entry)}, got {shape}")
    unexpected = [
        "/".join(p) for c in ("params", "batch_stats") if isinstance(variables.get(c), Mapping)
        for p in _leaf_paths(variables[c], (c,)) if p not in expected_paths
    ]
    if missing or unexpected or mismatched:
        raise ValueError(_format_problems(
            "variables do not match the network of this config", missing, unexpected,
            mismatched))


def check_variables(variables: Mapping[str, Any], cfg: Config | ModelConfig) -> None:
    """Checks that ``variables`` has exactly the leaves and shapes of ``build_model(cfg)``.

    Pure Python over the reference layout: nothing is traced or copied.

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped variable.
    """
    _check_variables(variables, reference_layout(cfg))


def variables_to_torch_state_dict(
    variables: Mapping[str, Any], cfg: Config | ModelConfig
) -> collections.OrderedDict[str, np.ndarray]:
    """The reference ``state_dict`` of Flax variables, in reference order.

    Args:
      variables: ``{'params', 'batch_stats'}`` of ``build_model(cfg)``.
      cfg: configuration the variables belong to.

    Returns:
      OrderedDict reference name -> NumPy array (float32; convolution weights
      (O, I, kH, kW)); ``num_batches_tracked`` entries are int64 scalars 0.

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped variable.
    """
    layout = reference_layout(cfg)
    _check_variables(variables, layout)
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for entry in layout:
        if entry.collection is None:
            out[entry.name] = np.array(0, dtype=np.int64)
            continue
        value = np.asarray(_get(variables[entry.collection], entry.path))
        if entry.is_conv_kernel:
            value = np.transpose(value, (3, 2, 0, 1))
        out[entry.name] = np.array(value, dtype=np.float32)
    return out


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaf_paths(value, prefix + (str(key),))
    else:
        yield prefix


def _merge(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def load_pretrained_backbone(
    variables: Mapping[str, Any], state_dict: Mapping[str, Any], cfg: Config | ModelConfig
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Initialises the backbone from an (ImageNet) HRNet ``state_dict``, as the reference trains.

    Only keys whose first component is in ``cfg.model.pretrained_layers`` are
    taken (all keys if that list starts with ``'*'``); keys the pose network
    does not have (the classification heads, extra fuse layers of the
    ImageNet model's last module) are ignored; shape mismatches raise.

    Args:
      variables: initialised ``{'params', 'batch_stats'}`` of ``build_model(cfg)``.
      state_dict: reference name -> array.
      cfg: configuration.

    Returns:
      ``(variables, report)``: the updated variables and a report with
      ``'loaded'`` (reference names taken), ``'left_at_init'`` (reference
      names of the network not in the checkpoint's selected layers) and
      ``'ignored'`` (checkpoint keys not used).
    """
    layers = tuple(_model_config(cfg).pretrained_layers)
    take_all = bool(layers) and layers[0] == "*"
    selected = {k: v for k, v in state_dict.items()
                if take_all or k.split(".", 1)[0] in layers}
    loaded_tree = torch_state_dict_to_variables(selected, cfg, strict=False)
    layout = [e for e in reference_layout(cfg) if e.collection is not None]
    loaded = [e.name for e in layout if e.name in selected]
    left = [e.name for e in layout if e.name not in selected]
    known = {e.name for e in reference_layout(cfg)}
    ignored = [k for k in state_dict if k not in selected or k not in known]
    merged = {key: _merge(variables.get(key, {}), loaded_tree.get(key, {}))
              for key in ("params", "batch_stats")}
    for key, value in variables.items():
        merged.setdefault(key, value)
    return merged, {"loaded": loaded, "left_at_init": left, "ignored": ignored}


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a reference ``.pth`` file into name -> NumPy array (needs torch).

    Accepts a bare ``state_dict`` or a training checkpoint holding one under
    ``'state_dict'``; strips the ``'module.'`` prefix DataParallel adds.

    Raises:
      ImportError: torch is not installed (``pip install hrnet_jax[torch]``).
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file holds no state_dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading the PyTorch checkpoint {path!r} needs torch: "
            "pip install 'hrnet_jax[torch]'"
        ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for unreadable files
        raise ValueError(f"checkpoint {path!r} could not be read by torch.load: {e}") from None
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"],
                                                                        Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"checkpoint {path!r}: expected a state_dict (name -> tensor), "
                         f"got {type(data).__name__}")
    out = {}
    for name, value in data.items():
        name = name[len("module."):] if name.startswith("module.") else name
        out[name] = _to_numpy(value)
    return out
