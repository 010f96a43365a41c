"""Checkpoints store the train state packed: one flat array per dtype and a layout."""

import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from hrnet_jax.train.checkpoint import Checkpoints, pack_tree, unpack_into, unpack_nested
from hrnet_jax.train.state import TrainState
from hrnet_jax.workdir import restore_variables


def small_state(seed: int = 0) -> TrainState:
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4), np.float32)},
              "bn": {"scale": rng.standard_normal(4, np.float32),
                     "bias": rng.standard_normal(4, np.float32)}}
    stats = {"bn": {"mean": rng.standard_normal(4, np.float32),
                    "var": rng.random(4, np.float32) + 1}}
    state = TrainState.create(apply_fn=None, params=params, batch_stats=stats,
                              tx=optax.adam(1e-3))
    return jax.device_get(state.replace(step=np.int32(7)))


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_tree_packs_into_one_array_per_dtype_and_unpacks_exactly():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.int32(5),
            "d": np.array([0.5, -1.0], np.float32)}, "e": {}}
    arrays, layout = pack_tree(tree)
    assert sorted(arrays) == ["float32", "int32"]
    np.testing.assert_array_equal(arrays["float32"], [0, 1, 2, 3, 4, 5, 0.5, -1.0])
    np.testing.assert_array_equal(arrays["int32"], [5])
    assert layout == [{"path": ["a"], "dtype": "float32", "shape": [2, 3]},
                      {"path": ["b", "c"], "dtype": "int32", "shape": []},
                      {"path": ["b", "d"], "dtype": "float32", "shape": [2]}]
    assert_same_tree(unpack_into(tree, arrays, layout), tree)
    # Restored into a template, each leaf takes the template's dtype (a Python int's int64).
    like = {"a": np.zeros((2, 3), np.float32), "b": {"c": 0, "d": np.zeros(2, np.float32)},
            "e": {}}
    assert np.asarray(unpack_into(like, arrays, layout)["b"]["c"]).dtype == np.int64
    # Without a template the empty container is not known.
    assert_same_tree(unpack_nested(arrays, layout), {"a": tree["a"], "b": tree["b"]})


def test_unpacking_into_another_tree_names_the_differences():
    arrays, layout = pack_tree({"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"3 differences: missing c; unexpected b; a: holds "
                                         r"shape \[3\], expected \[4\]"):
        unpack_into({"a": np.zeros(4, np.float32), "c": np.zeros(2, np.float32)}, arrays, layout)
    with pytest.raises(ValueError, match="layout accounts for"):
        unpack_nested({"float32": np.zeros(6, np.float32)}, layout)


def test_a_saved_train_state_is_packed_and_restores_bit_for_bit(tmp_path):
    state = small_state()
    with Checkpoints(tmp_path / "ck", async_save=False) as checkpoints:
        checkpoints.save(3, state, {"epoch": 1})
        checkpoints.wait()
        restored, record = checkpoints.restore(small_state(seed=1))
    assert record == {"epoch": 1}
    assert_same_tree(serialization.to_state_dict(restored), serialization.to_state_dict(state))
    held = ocp.StandardCheckpointer().restore(str(tmp_path / "ck" / "3" / "state"))
    assert sorted(held) == ["float32", "int32"]
    variables = restore_variables(tmp_path / "ck")
    assert_same_tree(variables, {"params": state.params, "batch_stats": state.batch_stats})
    assert_same_tree(restore_variables(tmp_path / "ck" / "3"), variables)


def test_checkpoints_written_leaf_by_leaf_are_still_read(tmp_path):
    state = small_state()
    tree = serialization.to_state_dict(state)
    directory = str(tmp_path / "old")
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                record=ocp.args.JsonSave({"epoch": 2})))
    assert not os.path.exists(os.path.join(directory, "5", "layout"))
    with Checkpoints(directory) as checkpoints:
        restored, record = checkpoints.restore(small_state(seed=1))
    assert record == {"epoch": 2}
    assert_same_tree(serialization.to_state_dict(restored), tree)
    assert_same_tree(restore_variables(directory),
                     {"params": state.params, "batch_stats": state.batch_stats})


def test_a_checkpoint_of_another_network_is_refused_naming_the_variable(tmp_path):
    with Checkpoints(tmp_path / "ck", async_save=False) as checkpoints:
        checkpoints.save(1, small_state(), {})
        checkpoints.wait()
        other = small_state()
        other = other.replace(params={**other.params, "conv": {"kernel": np.zeros((1, 1, 2, 4),
                                                                                  np.float32)}})
        with pytest.raises(RuntimeError, match=r"params/conv/kernel: holds shape \[3, 3, 2, 4\], "
                                               r"expected \[1, 1, 2, 4\]"):
            checkpoints.restore(other)
