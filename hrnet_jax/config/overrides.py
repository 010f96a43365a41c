"""Editing configurations as data: dotted overrides, and plain dicts to and from JSON.

``override(cfg, ["train.lr=5e-4"])`` parses each value to the type of the field
it replaces; :func:`to_dict` and :func:`from_dict` write and read the
``config.json`` of work directories and exported models (files written by
older versions, with fields since removed or not yet added, still load).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from hrnet_jax.config.schema import STAGES, Config, StageConfig, TestConfig


def parse_image_size(size: int | str | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` from ``256``, ``"256"``, ``"1280x720"`` (width x height) or a pair.

    Raises:
      ValueError: the text is not N or WIDTHxHEIGHT, or a side is not positive.
    """
    if isinstance(size, str):
        try:
            values = [int(p) for p in size.lower().split("x")]
        except ValueError:
            raise ValueError(f"image size {size!r}: expected N or WIDTHxHEIGHT") from None
    elif isinstance(size, numbers.Integral):
        values = [int(size)]
    else:
        values = [int(v) for v in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"image size {size!r}: expected N or WIDTHxHEIGHT")
    width, height = values
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {size!r}: both sides must be positive")
    return width, height


def _coerce(value: Any, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(like, int) and not isinstance(like, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        if like and not isinstance(like[0], StageConfig):
            return tuple(_coerce(v, like[0], key) for v in value)
        return tuple(value)
    if isinstance(like, str):
        return str(value)
    return value


def override(cfg: Config, assignments: Sequence[str] | Mapping[str, Any]) -> Config:
    """Returns ``cfg`` with dotted fields replaced, e.g. ``["train.lr=5e-4"]``.

    Values given as strings are parsed to the type of the field they replace;
    an unknown key raises ValueError naming it and the keys available.
    """
    items = (
        assignments.items()
        if isinstance(assignments, Mapping)
        else [_split_assignment(a) for a in assignments]
    )
    for key, value in items:
        if key == "test.post_process":
            # The reference's flag, kept as a spelling of test.decode.
            key = "test.decode"
            value = "reference" if _coerce(value, True, "test.post_process") else "argmax"
        cfg = _replace_path(cfg, key.split("."), value, key)
    return cfg


def _split_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value, e.g. train.lr=5e-4")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _replace_path(node: Any, path: list[str], value: Any, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(node)]
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full_key!r}: {head!r} is not one of {names}")
    current = getattr(node, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full_key!r} names a section, not a value")
        new = _coerce(value, current, full_key)
    else:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full_key!r}: {head!r} is a value, not a section")
        new = _replace_path(current, path[1:], value, full_key)
    return dataclasses.replace(node, **{head: new})


def to_dict(cfg: Config) -> dict:
    """The configuration as nested plain dicts (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict`."""

    def build(cls, values):
        if cls is TestConfig and "post_process" in values and "decode" not in values:
            # Saved before test.decode replaced the reference's post_process flag.
            values = {**values, "decode": "reference" if values["post_process"] else "argmax"}
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            default = getattr(cls(), f.name) if f.name not in STAGES else None
            if f.name in STAGES:
                v = StageConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()})
            elif dataclasses.is_dataclass(default):
                v = build(type(default), v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        return cls(**kwargs)

    return build(Config, data)
