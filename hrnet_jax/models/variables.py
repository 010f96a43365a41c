"""The variables of a network, read from the network itself.

:func:`variable_shapes` is ``jax.eval_shape`` of ``build_model(cfg).init``,
traced once per distinct network and cached, with every leaf in the order
``init`` creates it. That order carries information the shapes alone do not:
Flax creates a compact module's children, and their variables, in the order
``__call__`` first calls them (:mod:`hrnet_jax.convert` names the reference's
``state_dict`` in that order). JAX's tree functions sort dict keys, so the
order is read from the dicts ``init`` returns while it is traced.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.config import Config, ModelConfig
from hrnet_jax.models.hrnet import build_model

__all__ = ["check_variables", "variable_shapes"]

# The smallest legal input side: variable shapes do not depend on the input size.
_PROBE_SIDE = 32
# ModelConfig fields that change no variable (the parameters are float32 in
# every compute dtype; init never scans). The cache sees each at one value; a
# field not listed is part of the key, so a new one is safe by default.
_FREE_FIELDS = ("name", "image_size", "heatmap_size", "sigma", "target_type", "pretrained",
                "pretrained_layers", "dtype", "scan")

Path = tuple[str, ...]


def network_key(cfg: Config | ModelConfig) -> ModelConfig:
    """``cfg``'s model section with every field that changes no variable at one value:
    two configurations with the same key have the same variables."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    plain = ModelConfig()
    return dataclasses.replace(model_cfg, **{name: getattr(plain, name) for name in _FREE_FIELDS})


def _items_in_order(tree: Mapping, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, leaf) of a nested dict in its insertion order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _items_in_order(value, prefix + (str(key),))
        else:
            yield prefix + (str(key),), value


@functools.lru_cache(maxsize=32)
def _shapes(key: ModelConfig) -> tuple[tuple[Path, tuple[int, ...]], ...]:
    model = build_model(dataclasses.replace(key, scan="none"))
    order: list[Path] = []

    def init(rng: jax.Array) -> Any:
        variables = model.init(rng, jnp.zeros((1, 3, _PROBE_SIDE, _PROBE_SIDE)), train=False)
        for collection, tree in variables.items():
            order.extend((collection,) + path for path, _ in _items_in_order(tree))
        return variables

    abstract = jax.eval_shape(init, jax.random.key(0))

    def shape(path: Path) -> tuple[int, ...]:
        node = abstract
        for name in path:
            node = node[name]
        return tuple(node.shape)

    return tuple((path, shape(path)) for path in order)


def variable_shapes(cfg: Config | ModelConfig) -> dict[Path, tuple[int, ...]]:
    """``(collection, *path) -> shape`` of every variable of ``build_model(cfg)``, in the
    order ``init`` creates them (collection by collection: ``params``, then ``batch_stats``).

    Nothing is computed: the network's ``init`` is traced abstractly, once per
    distinct network (about a second for HRNet-W32 on a CPU), then cached.
    """
    return dict(_shapes(network_key(cfg)))


def check_variables(variables: Mapping[str, Any], cfg: Config | ModelConfig) -> None:
    """Checks that ``variables`` has exactly the leaves and shapes of ``build_model(cfg)``.

    ``variables`` are neither traced nor copied.

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped variable.
    """
    expected = variable_shapes(cfg)
    given = {
        path: tuple(np.shape(leaf)) for c in ("params", "batch_stats")
        if isinstance(variables.get(c), Mapping)
        for path, leaf in _items_in_order(variables[c], (c,))
    }
    missing = [f"{'/'.join(p)} {shape}" for p, shape in expected.items() if p not in given]
    unexpected = ["/".join(p) for p in given if p not in expected]
    mismatched = [f"{'/'.join(p)}: expected {shape}, got {given[p]}"
                  for p, shape in expected.items() if p in given and given[p] != shape]
    if missing or unexpected or mismatched:
        raise ValueError(format_problems("variables do not match the network of this config",
                                         missing, unexpected, mismatched))


def format_problems(what: str, missing: list[str], unexpected: list[str],
                    mismatched: list[str]) -> str:
    """A report of ``what`` went wrong, listing every missing, unexpected and mis-shaped entry."""
    lines = [f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(mismatched)} mis-shaped"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", mismatched)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items)
    return "\n".join(lines)
