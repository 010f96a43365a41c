"""The exported-model format every tool loads.

An exported model is a directory holding

* ``config.json``: the :class:`~hrnet_jax.config.Config` as
  :func:`~hrnet_jax.config.to_dict` writes it;
* ``variables.msgpack``: ``{'params', 'batch_stats'}`` serialised with
  :func:`flax.serialization.msgpack_serialize`.

:func:`save_model` writes both into a temporary directory beside the target,
syncs them to disk and renames the directory into place, so a reader sees a
complete model or none.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import serialization

from hrnet_jax import config as config_lib
from hrnet_jax.config import Config
from hrnet_jax.models.variables import check_variables

CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.msgpack"
_COLLECTIONS = ("params", "batch_stats")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_model(path: str | os.PathLike, variables: Mapping[str, Any], cfg: Config) -> str:
    """Writes an exported model directory atomically.

    An existing exported model at ``path`` is replaced; any other existing
    file or directory there is left alone and an error raised.

    Args:
      path: the directory to create.
      variables: ``{'params', 'batch_stats'}`` (JAX or NumPy arrays).
      cfg: the configuration the variables belong to.

    Returns:
      ``path`` as a string.

    Raises:
      ValueError: ``variables`` lacks a collection, or ``path`` exists and is
        not an exported model.
    """
    path = os.path.abspath(os.fspath(path))
    if not isinstance(cfg, Config):
        raise TypeError(f"save_model({path!r}): cfg must be a Config, got {type(cfg).__name__}")
    absent = [c for c in _COLLECTIONS if c not in variables]
    if absent:
        raise ValueError(f"save_model({path!r}): variables lack {absent}; expected the "
                         f"collections {list(_COLLECTIONS)}")
    if os.path.lexists(path) and not _is_model_dir(path):
        raise ValueError(f"save_model: {path!r} exists and is not an exported model "
                         f"(a directory holding only {CONFIG_FILE} and {VARIABLES_FILE}); "
                         "refusing to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        state = {c: jax.tree.map(np.asarray, jax.device_get(dict(variables[c])))
                 for c in _COLLECTIONS}
        _write_file(os.path.join(tmp, VARIABLES_FILE), serialization.msgpack_serialize(state))
        text = json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True)
        _write_file(os.path.join(tmp, CONFIG_FILE), text.encode())
        _fsync_path(tmp)
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "model"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _is_model_dir(path: str) -> bool:
    return os.path.isdir(path) and set(os.listdir(path)) <= {CONFIG_FILE, VARIABLES_FILE}


def load_model(path: str | os.PathLike) -> tuple[dict[str, Any], Config]:
    """Reads an exported model directory.

    Args:
      path: a directory written by :func:`save_model`.

    Returns:
      ``(variables, cfg)`` with ``variables`` as nested dicts of NumPy arrays.

    Raises:
      FileNotFoundError: ``path`` or one of its two files does not exist.
      ValueError: a file is corrupt or does not match the configuration.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"exported model {path!r} does not exist or is not a directory "
                                f"(expected one holding {CONFIG_FILE} and {VARIABLES_FILE})")
    config_path = os.path.join(path, CONFIG_FILE)
    variables_path = os.path.join(path, VARIABLES_FILE)
    for p in (config_path, variables_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"exported model {path!r}: {os.path.basename(p)} is missing")
    try:
        with open(config_path) as f:
            cfg = config_lib.from_dict(json.load(f))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"exported model {path!r}: {CONFIG_FILE} is corrupt: {e}") from None
    try:
        with open(variables_path, "rb") as f:
            state = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(f"exported model {path!r}: {VARIABLES_FILE} is corrupt: "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or any(c not in state for c in _COLLECTIONS):
        raise ValueError(f"exported model {path!r}: {VARIABLES_FILE} is corrupt: expected the "
                         f"collections {list(_COLLECTIONS)}")
    variables = {c: state[c] for c in _COLLECTIONS}
    # Checked against the network's variables (jax.eval_shape of its init, once
    # per network) so a file saved for another network fails here and not
    # deep inside apply.
    try:
        check_variables(variables, cfg)
    except ValueError as e:
        raise ValueError(f"exported model {path!r}: {VARIABLES_FILE} does not match "
                         f"{CONFIG_FILE}:\n{e}") from None
    return variables, cfg
