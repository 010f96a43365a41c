"""Datasets chosen by name: ``cfg.dataset.name`` -> a :class:`~hrnet_jax.data.base.JointsDataset` class.

Built in: ``mpii``, ``synthetic`` (a generated MPII-format set), ``coco`` and
``synthetic_coco`` (a generated COCO-format set). A dataset of your own is one
class registered with :func:`register_dataset`, or named by import path in the
config, ``dataset.name = "my_package.my_module:MyDataset"``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from hrnet_jax.data.base import JointsDataset
from hrnet_jax.data.keypoints import Keypoints, check_joint_count

# name -> "module:Class", imported on first use so worker processes load only theirs.
_BUILTIN = {
    "mpii": "hrnet_jax.data.mpii:MPIIDataset",
    "synthetic": "hrnet_jax.data.synthetic:SyntheticMPIIDataset",
    "coco": "hrnet_jax.data.coco:COCODataset",
    "synthetic_coco": "hrnet_jax.data.synthetic_coco:SyntheticCOCODataset",
}
_REGISTERED: dict[str, type[JointsDataset]] = {}


def register_dataset(name: str, cls: type[JointsDataset]) -> type[JointsDataset]:
    """Makes ``cls`` available as ``dataset.name = name``; returns ``cls`` (usable as a decorator
    through ``functools.partial``). A built-in name cannot be taken."""
    if not (isinstance(cls, type) and issubclass(cls, JointsDataset)):
        raise TypeError(f"register_dataset({name!r}): expected a JointsDataset subclass, got {cls!r}")
    if name.lower() in _BUILTIN:
        raise ValueError(f"register_dataset: {name!r} is a built-in dataset name")
    _REGISTERED[name.lower()] = cls
    return cls


def dataset_names() -> list[str]:
    """The names :func:`dataset_class` accepts (besides ``module:Class`` paths)."""
    return [*_BUILTIN, *_REGISTERED]


def _import(path: str, name: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"dataset.name {name!r}: cannot import module {module_name!r}: {e}") \
            from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"dataset.name {name!r}: module {module_name!r} has no {attr!r}") from None


def dataset_class(name: str) -> type[JointsDataset]:
    """The dataset class called ``name`` (case-insensitive), or at import path ``module:Class``.

    Raises:
      ValueError: no such dataset (the message lists those known).
    """
    key = str(name).lower()
    if key in _REGISTERED:
        return _REGISTERED[key]
    if key in _BUILTIN:
        return _import(_BUILTIN[key], name)
    if ":" in str(name):
        cls = _import(str(name), name)
        if not (isinstance(cls, type) and issubclass(cls, JointsDataset)):
            raise ValueError(f"dataset.name {name!r} is not a JointsDataset subclass")
        return cls
    raise ValueError(f"unknown dataset {name!r}: expected one of {dataset_names()} or an import "
                     "path 'package.module:DatasetClass'")


def prepare_dataset(cfg: Any) -> str:
    """Readies ``cfg``'s dataset (a synthetic set is generated once); returns its root.

    In a multi-process JAX run, process 0 goes first and the others follow, so
    that processes sharing a disk do not generate a synthetic set at once.
    """
    prepare = dataset_class(cfg.dataset.name).prepare
    jax = sys.modules.get("jax")  # a data-only user never imports JAX for this
    if jax is None or jax.process_count() == 1:
        return prepare(cfg)
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        prepare(cfg)
    multihost_utils.sync_global_devices("hrnet_jax: dataset prepared")
    return prepare(cfg)


def build_dataset(cfg: Any, split: str, *, skip_bad_images: bool = False) -> JointsDataset:
    """The ``'train'`` (``cfg.dataset.train_set``, augmented) or ``'valid'``
    (``cfg.dataset.test_set``) dataset of ``cfg.dataset.name`` under ``cfg.dataset.root``."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    cls = dataset_class(cfg.dataset.name)
    is_train = split == "train"
    image_set = cfg.dataset.train_set if is_train else cfg.dataset.test_set
    return cls(cfg.dataset.root, image_set, is_train, cfg, skip_bad_images=skip_bad_images)


def dataset_keypoints(cfg: Any) -> Keypoints:
    """The joints of ``cfg``'s dataset, checked against ``cfg.model.num_joints``."""
    cls = dataset_class(cfg.dataset.name)
    check_joint_count(cls.keypoints, cfg.model.num_joints, cfg.dataset.name)
    return cls.keypoints
