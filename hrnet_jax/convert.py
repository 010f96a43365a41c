"""Reference PyTorch HRNet weights <-> Flax variables: the naming and transposition rules.

The network is the one description of its variables: :func:`reference_layout`
takes every variable's path, shape and creation order from
:func:`hrnet_jax.models.variables.variable_shapes` and names it with two rules.

Names: a Flax module path is the reference module name with each numeric
index glued to the name before it by ``_`` (:func:`flax_module_path`,
:func:`reference_module_name`; see :mod:`hrnet_jax.models.hrnet`).

Leaves: a convolution's ``kernel`` (kH, kW, I, O) is ``weight``
(O, I, kH, kW) and its ``bias`` is ``bias``; a module holding
``batch_stats`` is a BatchNorm, whose ``scale``/``bias`` (params) and
``mean``/``var`` (batch_stats) are ``weight``/``bias``/``running_mean``/
``running_var``, followed by ``num_batches_tracked``, which has no Flax
counterpart: written as 0, accepted and dropped when read.

Order: PyTorch's ``state_dict`` lists a module's own parameters, then its own
buffers, then its children in registration order. The reference registers
every module in the order its ``forward`` first calls it, and Flax creates a
compact module's children, and their variables, in the order ``__call__``
first calls them; so ``init``'s creation order of modules is the reference's
order, and within a module the ``params`` leaves (parameters, created in the
reference's order: ``kernel`` then ``bias``, ``scale`` then ``bias``) come
before its ``batch_stats`` leaves (buffers). specs/test_convert.py holds
this against the reference's own ``state_dict`` listings.

Nothing here needs PyTorch except :func:`read_torch_checkpoint`, which imports
it on first use.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hrnet_jax.config import Config, ModelConfig
from hrnet_jax.models.variables import (
    check_variables,
    format_problems,
    network_key,
    variable_shapes,
)


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


# Flax leaf -> reference leaf, per collection (the leaf rules of the module docstring).
_LEAF_NAMES = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}


@functools.lru_cache(maxsize=32)
def _entries(key: ModelConfig) -> tuple[ReferenceEntry, ...]:
    """The reference entries of the network ``key`` (see :func:`network_key`)."""
    shapes = variable_shapes(key)
    # module path -> collection -> leaf names; modules in params creation order.
    modules: dict[tuple[str, ...], dict[str, list[str]]] = {}
    for collection, *path in shapes:
        if collection not in _LEAF_NAMES:
            raise ValueError(f"convert: the network has a {collection!r} collection, "
                             f"which the reference layout has no rule for")
        module = tuple(path[:-1])
        if collection != "params" and module not in modules:
            raise ValueError(f"convert: {collection}/{'/'.join(path)} belongs to a module "
                             f"without params, which the reference layout has no rule for")
        modules.setdefault(module, {}).setdefault(collection, []).append(path[-1])

    entries = []
    for module, leaves in modules.items():
        name = reference_module_name(module)
        for collection, names in _LEAF_NAMES.items():
            for leaf in leaves.get(collection, ()):
                if leaf not in names:
                    raise ValueError(f"convert: {collection}/{'/'.join(module + (leaf,))} has no "
                                     f"reference counterpart (known leaves: {sorted(names)})")
                path = module + (leaf,)
                shape = shapes[(collection,) + path]
                if leaf == "kernel":  # (kH, kW, I, O) -> (O, I, kH, kW)
                    shape = (shape[3], shape[2], shape[0], shape[1])
                entries.append(ReferenceEntry(f"{name}.{names[leaf]}", shape, collection, path))
        if "batch_stats" in leaves:
            entries.append(ReferenceEntry(f"{name}.num_batches_tracked", (), None,
                                          module + ("num_batches_tracked",)))
    return tuple(entries)


def _layout(cfg: Config | ModelConfig) -> tuple[ReferenceEntry, ...]:
    return _entries(network_key(cfg))


def reference_layout(cfg: Config | ModelConfig) -> list[ReferenceEntry]:
    """Every reference ``state_dict`` entry of ``cfg``'s network, in reference order.

    Derived from the network itself (:func:`hrnet_jax.models.variables.variable_shapes`)
    once per distinct network; later calls are a cache lookup.

    Args:
      cfg: configuration (only the ``model`` section is used).

    Returns:
      The entries, ``num_batches_tracked`` included, as the reference's
      ``model.state_dict()`` lists them.
    """
    return list(_layout(cfg))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is never imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
    return np.asarray(value)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


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
    layout = _layout(cfg)
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
        raise ValueError(format_problems(
            "state_dict does not match the reference network of this config",
            missing if strict else [], unexpected if strict else [], mismatched))
    return variables


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
    layout = _layout(cfg)
    check_variables(variables, cfg)
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
    entries = _layout(cfg)
    layout = [e for e in entries if e.collection is not None]
    loaded = [e.name for e in layout if e.name in selected]
    left = [e.name for e in layout if e.name not in selected]
    known = {e.name for e in entries}
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
