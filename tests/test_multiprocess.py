"""Real multi-process runs on this CPU: 2 processes x 1 device, joined by jax.distributed on
127.0.0.1 (collectives through gloo), against 1 process x 2 forced host devices on the same
global batch: training, checkpoints written once and restored on both, and evaluation that
scores each validation sample once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import TINY_OVERRIDES
from hrnet_jax.data import write_synthetic_mpii
from hrnet_jax.model_file import load_model
from hrnet_jax.workdir import restore_variables

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 16 training images in global batches of 2 x 4: 2 steps an epoch; 6 validation images,
# fewer than one global batch of 8, so the evaluation pads.
RUN = ("train.batch_size_per_device=4", "test.batch_size_per_device=4", "print_freq=1",
       "workers=0")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("multiprocess_data"))
    return write_synthetic_mpii(root, num_train=16, num_valid=6, seed=0, image_size=(96, 96))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _command(script: str, args: list[str], overrides: tuple[str, ...]) -> list[str]:
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args, "--no-progress"]
    for item in (*TINY_OVERRIDES, *RUN, *overrides):
        command += ["--set", item]
    return command


def run_single(script: str, args: list[str], *overrides: str) -> str:
    """One process with two host devices."""
    proc = subprocess.run(_command(script, args, overrides), capture_output=True, text=True,
                          cwd=REPO, env=_env(2), timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_pair(script: str, args: list[str], *overrides: str) -> list[str]:
    """Two processes with one device each; returns their outputs."""
    port = free_port()
    procs = [subprocess.Popen(
        _command(script, [*args, "--multihost", "--coordinator-address", f"127.0.0.1:{port}",
                          "--num-processes", "2", "--process-id", str(i)], overrides),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=_env(1))
        for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    return outputs


def train_args(workdir: str, data_root: str) -> list[str]:
    return ["--config", "hrnet_w8", "--workdir", workdir, "--data-root", data_root,
            "--compilation-cache", "none"]


def assert_close(a, b, rtol: float) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    scale = max(float(np.max(np.abs(np.asarray(y)))) for y in leaves_b)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(leaves_a, leaves_b, strict=True))
    assert worst <= rtol * scale, f"max |difference| {worst} against max |value| {scale}"


@pytest.fixture(scope="module")
def two_epochs_on_one_process(data_root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("single"))
    run_single("train.py", train_args(workdir, data_root), "train.end_epoch=2")
    return workdir


def test_two_processes_train_as_one_process_with_two_devices_then_both_resume(
        data_root, two_epochs_on_one_process, tmp_path):
    workdir = str(tmp_path / "pair")
    first, second = run_pair("train.py", train_args(workdir, data_root), "train.end_epoch=1")
    # Process 0 reports; process 1 stays quiet; the checkpoint is written once.
    assert "in each of 2 processes (global batch 8)" in first and "Epoch: [0][2/2]" in first
    assert "Epoch:" not in second and "done:" not in second
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    # Per-device BatchNorm, same global batches: the same weights, bit for bit.
    assert_close(load_model(os.path.join(workdir, "final_model"))[0],
                 restore_variables(os.path.join(two_epochs_on_one_process, "checkpoints"), 2),
                 rtol=0.0)

    # Rerun for a second epoch: both processes restore step 2 (were one not to, the
    # replicas would train from different weights and the result would differ).
    first, _ = run_pair("train.py", train_args(workdir, data_root), "train.end_epoch=2")
    assert "resuming from" in first and "at step 2" in first
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    assert_close(load_model(os.path.join(workdir, "final_model"))[0],
                 load_model(os.path.join(two_epochs_on_one_process, "final_model"))[0],
                 rtol=0.0)


def test_synchronised_batch_norm_over_two_processes_equals_two_local_devices(data_root, tmp_path):
    pair, single = str(tmp_path / "pair"), str(tmp_path / "single")
    run_pair("train.py", train_args(pair, data_root), "train.end_epoch=1",
             "train.sync_batch_stats=true")
    run_single("train.py", train_args(single, data_root), "train.end_epoch=1",
               "train.sync_batch_stats=true")
    # Statistics averaged across processes or across local devices: float32 order only.
    assert_close(load_model(os.path.join(pair, "final_model"))[0],
                 load_model(os.path.join(single, "final_model"))[0], rtol=1e-5)


def test_evaluation_on_two_processes_scores_each_sample_once_and_prints_one_table(
        data_root, two_epochs_on_one_process, tmp_path):
    args = ["--config", "hrnet_w8", "--checkpoint", two_epochs_on_one_process, "--data-root",
            data_root, "--compilation-cache", "none"]
    pair_out, single_out = str(tmp_path / "pair"), str(tmp_path / "single")
    first, second = run_pair("test.py", [*args, "--out", pair_out])
    run_single("test.py", [*args, "--out", single_out])
    assert first.count("| Arch |") == 1 and "| Arch |" not in second
    with open(os.path.join(pair_out, "results.json")) as f:
        pair = json.load(f)
    with open(os.path.join(single_out, "results.json")) as f:
        single = json.load(f)
    for key in ("Head", "Mean", "Mean@0.1"):
        assert pair["table"][key] == pytest.approx(single["table"][key], abs=1e-9)
    assert pair["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_a_killed_process_stops_the_other_within_the_heartbeat_and_both_resume(
        data_root, two_epochs_on_one_process, tmp_path):
    """Process 1 is killed in the second epoch; process 0 stops with an error within the
    heartbeat timeout (10 s here) instead of hanging; rerunning both finishes as a run that
    was never interrupted."""
    import time

    workdir = str(tmp_path / "killed")
    port = free_port()
    args = [*train_args(workdir, data_root), "--multihost", "--coordinator-address",
            f"127.0.0.1:{port}", "--num-processes", "2", "--heartbeat-timeout", "10"]
    procs = [subprocess.Popen(_command("train.py", [*args, "--process-id", str(i)],
                                       ("train.end_epoch=2",)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=REPO, env=_env(1)) for i in range(2)]
    try:
        output = []
        for line in procs[0].stdout:
            output.append(line)
            if "Epoch: [1][1/2]" in line:
                procs[1].kill()
                break
        killed_at = time.monotonic()
        rest, _ = procs[0].communicate(timeout=120)
        waited = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    text = "".join(output) + rest
    assert procs[0].returncode != 0, text[-3000:]
    assert waited < 60, f"process 0 took {waited:.0f} s to stop"
    assert "another process has probably stopped" in text or "another task died" in text, \
        text[-3000:]
    run_pair("train.py", train_args(workdir, data_root), "train.end_epoch=2")
    assert_close(load_model(os.path.join(workdir, "final_model"))[0],
                 load_model(os.path.join(two_epochs_on_one_process, "final_model"))[0],
                 rtol=0.0)
