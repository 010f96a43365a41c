"""One pmap'd train step on two host devices against the same global batch on one."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config
    from hrnet_jax.config import override
    from hrnet_jax.targets import generate_targets
    from hrnet_jax.train.state import create_train_state, init_variables, lr_boundaries
    from hrnet_jax.parallel import replicate, shard
    from hrnet_jax.train.steps import make_train_step, sync_batch_stats

    assert jax.local_device_count() == 2, jax.devices()
    out = {}
    for sync in (True, False):
        # Plain SGD with lr 1 and no decay: the parameter change is minus the gradient.
        cfg = override(tiny_config(), {"train.optimizer": "sgd", "train.lr": 1.0, "train.wd": 0.0,
                                       "train.momentum": 0.0, "train.sync_batch_stats": sync})
        rng = np.random.default_rng(0)
        images = rng.normal(size=(4, 3, 64, 64)).astype(np.float32)
        joints = rng.uniform(0, 64, size=(4, 16, 2)).astype(np.float32)
        target, weight = generate_targets(joints, np.ones((4, 16)), image_size=(64, 64),
                                          heatmap_size=(16, 16), sigma=1.0)
        target, weight = np.asarray(target), np.asarray(weight)
        variables = init_variables(cfg, jax.random.key(0))
        state = create_train_state(cfg, variables, 10)
        step = make_train_step(cfg)
        runs = {}
        for n in (1, 2):
            devices = jax.local_devices()[:n]
            state_r = replicate(state, devices)
            new_r, metrics = step(state_r, *shard((images, target, weight), n),
                                  replicate(lr_boundaries(cfg, 10), devices))
            grads = jax.tree.map(lambda new, old: np.asarray(old) - np.asarray(new[0]),
                                 new_r.params, state.params)
            stats = new_r.batch_stats["bn1"]["mean"]
            if n == 2:
                spread_before = float(np.abs(np.asarray(stats[0] - stats[1])).max())
                synced = sync_batch_stats(new_r).batch_stats["bn1"]["mean"]
                spread_after = float(np.abs(np.asarray(synced[0] - synced[1])).max())
                out[f"spread_{sync}"] = [spread_before, spread_after]
            runs[n] = (float(metrics["loss"][0]), grads)
        g1 = np.concatenate([x.ravel() for x in jax.tree.leaves(runs[1][1])])
        g2 = np.concatenate([x.ravel() for x in jax.tree.leaves(runs[2][1])])
        out[f"loss_{sync}"] = [runs[1][0], runs[2][0]]
        out[f"grad_err_{sync}"] = float(np.abs(g1 - g2).max() / np.abs(g1).max())
        out[f"grad_norm_{sync}"] = float(np.abs(g1).max())

    # Synchronised BatchNorm inside lax.scan: the scanned network on two devices
    # against the unrolled one on two devices.
    repeats = ("model.stage2.num_blocks=2,2", "model.stage3.num_modules=2",
               "model.stage3.num_blocks=2,2,2")
    scanned = {}
    for scan in ("none", "all"):
        cfg = override(tiny_config(*repeats, f"model.scan={scan}"),
                       {"train.optimizer": "sgd", "train.lr": 1.0, "train.wd": 0.0,
                        "train.momentum": 0.0, "train.sync_batch_stats": True})
        state = create_train_state(cfg, init_variables(cfg, jax.random.key(1)), 10)
        new_r, metrics = make_train_step(cfg)(replicate(state),
                                              *shard((images, target, weight), 2),
                                              replicate(lr_boundaries(cfg, 10)))
        grads = jax.tree.map(lambda new, old: np.asarray(old) - np.asarray(new[0]),
                             new_r.params, state.params)
        scanned[scan] = (float(metrics["loss"][0]),
                         np.concatenate([x.ravel() for x in jax.tree.leaves(grads)]),
                         new_r.batch_stats)
    out["scan_loss"] = [scanned["none"][0], scanned["all"][0]]
    g_none, g_all = scanned["none"][1], scanned["all"][1]
    out["scan_grad_err"] = float(np.abs(g_none - g_all).max() / np.abs(g_none).max())
    out["scan_stats_equal"] = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(scanned["none"][2]), jax.tree.leaves(scanned["all"][2])))

    # The step keeps one compiled program: its outputs come back placed as its
    # inputs went in, also after the statistics are synchronised.
    traces = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: traces.append(event)
        if event == "/jax/core/compile/jaxpr_trace_duration" else None)
    cfg = tiny_config()
    state = create_train_state(cfg, init_variables(cfg, jax.random.key(2)), 10)
    step = make_train_step(cfg)
    state_r = replicate(state)
    batch = (*shard((images, target, weight), 2), replicate(lr_boundaries(cfg, 10)))
    state_r, _ = step(state_r, *batch)
    out["traces_first_call"] = len(traces)
    later = 0
    for sync in (False, False, True):
        if sync:
            state_r = sync_batch_stats(state_r)
        before = len(traces)
        state_r, metrics = step(state_r, *batch)
        jax.block_until_ready(metrics)
        later += len(traces) - before
    out["traces_later_calls"] = later
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def two_device_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_two_devices_with_synchronised_batchnorm_equal_one_device_on_the_global_batch(
        two_device_results):
    loss1, loss2 = two_device_results["loss_True"]
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert two_device_results["grad_norm_True"] > 0
    # Float32 reductions run in another order on two devices; per-device statistics
    # (next test) put the error three orders of magnitude higher.
    assert two_device_results["grad_err_True"] < 2e-3


def test_per_device_batchnorm_normalises_each_half_on_its_own(two_device_results):
    # Each device sees different images, so its statistics, loss and gradients differ
    # from the global batch's; after the sync before evaluation both devices agree.
    loss1, loss2 = two_device_results["loss_False"]
    assert loss2 != loss1
    assert two_device_results["grad_err_False"] > 1e-4
    before, after = two_device_results["spread_False"]
    assert before > 0 and after == 0.0
    # With synchronised statistics the devices never diverge.
    assert two_device_results["spread_True"] == [0.0, 0.0]


def test_the_scanned_network_with_synchronised_batchnorm_trains_as_the_unrolled_one(
        two_device_results):
    loss_unrolled, loss_scanned = two_device_results["scan_loss"]
    assert loss_scanned == loss_unrolled
    assert two_device_results["scan_stats_equal"]
    assert two_device_results["scan_grad_err"] < 1e-4


def test_the_train_step_compiles_once_and_not_again_on_later_steps_or_after_a_sync(
        two_device_results):
    assert two_device_results["traces_first_call"] > 0
    assert two_device_results["traces_later_calls"] == 0
