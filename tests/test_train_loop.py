"""The training run end to end on a tiny synthetic MPII-format set: resume, kill, CLI, NaN."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import scipy.io

from conftest import TINY_OVERRIDES, tiny_config
from hrnet_jax import benchmark, compilation
from hrnet_jax.config import override
from hrnet_jax.data import write_synthetic_mpii
from hrnet_jax.model_file import load_model
from hrnet_jax.train.checkpoint import Checkpoints
from hrnet_jax.train.loop import TrainingDiverged, train
from hrnet_jax.workdir import load_for_evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_VALID = 24, 10
# 24 images in batches of 4: 6 steps per epoch, 2 epochs.
RUN = ("train.batch_size_per_device=4", "test.batch_size_per_device=4", "train.end_epoch=2",
       "print_freq=2", "workers=0")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_mpii"))
    write_synthetic_mpii(root, num_train=NUM_TRAIN, num_valid=NUM_VALID, seed=0,
                         image_size=(96, 96))
    return root


def run_config(data_root, *extra):
    return tiny_config(*RUN, f"dataset.root={data_root}", *extra)


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """Two epochs (12 steps) without interruption."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    result = train(run_config(data_root), workdir, show_progress=False)
    return workdir, result


def final_variables(workdir):
    variables, _ = load_model(os.path.join(workdir, "final_model"))
    return variables


def assert_same_variables(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_run_trains_every_step_validates_each_epoch_and_writes_its_models(straight_run):
    workdir, result = straight_run
    assert result.step == 12 and result.epoch == 2
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    valid = [x for x in lines if "valid/Mean" in x and "valid/Mean@0.1" in x]
    assert [x["step"] for x in valid] == [6, 12]
    train_lines = [x for x in lines if "train_loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6, 8, 10, 12]
    assert all(x["lr"] == pytest.approx(1e-3) for x in train_lines)
    log = open(os.path.join(workdir, "train.log")).read()
    assert "Epoch: [1][6/6]" in log and "Speed" in log and "Accuracy" in log
    assert "| Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Mean | Mean@0.1 |" in log
    epochs = [x[x.index("=> epoch "):] for x in log.splitlines() if "=> epoch " in x]
    assert len(epochs) == 2
    assert epochs[0].startswith("=> epoch 0: 6 steps in ") and "compiling the step included" in epochs[0]
    assert epochs[1].startswith("=> epoch 1: 6 steps in ") and "compiling" not in epochs[1]
    assert all(", validation " in x and ", checkpoint " in x for x in epochs)
    for name in ("model_best", "final_model"):
        variables, cfg = load_model(os.path.join(workdir, name))
        assert cfg.model.image_size == (64, 64)
    assert Checkpoints(os.path.join(workdir, "checkpoints")).all_steps() == [6, 12]


def test_a_set_of_another_size_trains_with_the_step_already_compiled_for_the_first(
        straight_run, tmp_path):
    # The learning-rate boundaries are the step's data, not constants compiled into it:
    # 4 steps per epoch instead of 6 is the same program, which the persistent
    # compilation cache (on for the tests, see conftest) holds since straight_run.
    if compilation.cache_directory() is None:
        pytest.skip("JAX's persistent compilation cache is off")
    root = str(tmp_path / "smaller")
    write_synthetic_mpii(root, num_train=16, num_valid=4, seed=1, image_size=(96, 96))
    workdir = str(tmp_path / "run")
    result = train(run_config(root), workdir, max_steps=1, show_progress=False)
    assert result.step == 1
    log = open(os.path.join(workdir, "train.log")).read()
    assert "(16 samples, 4 steps per epoch," in log
    ready = [x for x in log.splitlines() if "=> train step" in x and " ready in " in x]
    assert len(ready) == 1 and "loaded from the persistent compilation cache" in ready[0], log


def test_training_loads_the_train_step_the_benchmark_compiled(data_root, tmp_path):
    # A learning rate no other test trains with (the rate is compiled into the step),
    # so only the benchmark can have put this program into the cache.
    if compilation.cache_directory() is None:
        pytest.skip("JAX's persistent compilation cache is off")
    rate = ("train.lr=0.00123",)
    records = benchmark.run_benchmark("hrnet_w8", batch_size=4, dtypes="fp32", steps=1,
                                      warmup=0, image_size=64, evaluate=False,
                                      overrides=(*TINY_OVERRIDES, *rate))
    assert [r.step for r in records] == ["train"] and not records[0].cache_hit
    workdir = str(tmp_path / "run")
    train(run_config(data_root, *rate), workdir, max_steps=1, show_progress=False)
    log = open(os.path.join(workdir, "train.log")).read()
    ready = [x for x in log.splitlines() if "=> train step" in x and " ready in " in x]
    assert len(ready) == 1 and "loaded from the persistent compilation cache" in ready[0], log


def test_stopping_at_max_steps_and_rerunning_continues_exactly(straight_run, data_root, tmp_path):
    workdir = str(tmp_path / "resumed")
    first = train(run_config(data_root), workdir, max_steps=4, show_progress=False)
    assert first.step == 4
    second = train(run_config(data_root), workdir, show_progress=False)
    assert second.step == 12
    assert "resuming from" in open(os.path.join(workdir, "train.log")).read()
    assert_same_variables(final_variables(workdir), final_variables(straight_run[0]))


def test_a_resumed_run_with_another_batch_size_is_refused(straight_run, data_root, tmp_path):
    workdir = str(tmp_path / "other")
    train(run_config(data_root), workdir, max_steps=1, show_progress=False)
    with pytest.raises(ValueError, match="steps per epoch"):
        train(run_config(data_root, "train.batch_size_per_device=8"), workdir,
              show_progress=False)


def test_sigkill_mid_run_then_the_same_command_finishes_as_if_never_killed(
        straight_run, data_root, tmp_path):
    workdir = str(tmp_path / "killed")
    command = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", "hrnet_w8",
               "--workdir", workdir, "--data-root", data_root, "--no-progress"]
    for item in (*TINY_OVERRIDES, *RUN, "train.checkpoint_every_steps=1"):
        command += ["--set", item]
    checkpoints = os.path.join(workdir, "checkpoints")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()] \
                if os.path.isdir(checkpoints) else []
            if steps and max(steps) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = Checkpoints(checkpoints).latest_step()
    assert killed_at is not None and killed_at < 12
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {checkpoints} at step {killed_at}" in rerun.stdout
    assert_same_variables(final_variables(workdir), final_variables(straight_run[0]))

    # scripts/test.py on the work directory, named by test.model_file (the reference's
    # TEST.MODEL_FILE) instead of --checkpoint, evaluates its best model.
    out = str(tmp_path / "test_out")
    test = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "test.py"), "--config", "hrnet_w8",
         "--set", f"test.model_file={workdir}", "--data-root", data_root, "--out", out,
         "--no-progress", "--set", "workers=0", "--batch-size", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert "Mean@0.1" in test.stdout and "best model" in test.stdout
    preds = scipy.io.loadmat(os.path.join(out, "pred.mat"))["preds"]
    assert preds.shape == (NUM_VALID, 16, 2)
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0.0 <= results["table"]["Mean"] <= 100.0 and results["headline"] == "Mean"
    assert results["flip_test"] is True and results["checkpoint"] == workdir


def test_load_for_evaluation_takes_the_best_model_of_a_work_directory(straight_run):
    workdir, _ = straight_run
    variables, cfg, source = load_for_evaluation(workdir)
    assert source.startswith("best model") and cfg.model.image_size == (64, 64)
    variables, cfg, source = load_for_evaluation(os.path.join(workdir, "checkpoints"))
    assert source.startswith("checkpoint") and cfg is not None
    assert set(variables) == {"params", "batch_stats"}
    with pytest.raises(FileNotFoundError, match="holds no model"):
        load_for_evaluation(os.path.join(workdir, "tensorboard")
                            if os.path.isdir(os.path.join(workdir, "tensorboard"))
                            else os.path.dirname(workdir))


def test_load_for_evaluation_converts_a_reference_pth_given_its_network(straight_run, tmp_path):
    workdir, _ = straight_run
    best, cfg, _ = load_for_evaluation(workdir)
    path = str(tmp_path / "reference.pth")
    open(path, "wb").close()
    with pytest.raises(ValueError, match="reference PyTorch checkpoint.*configuration"):
        load_for_evaluation(path)
    torch = pytest.importorskip("torch")
    from hrnet_jax.convert import variables_to_torch_state_dict

    torch.save({k: torch.from_numpy(v) for k, v in variables_to_torch_state_dict(best, cfg).items()},
               path)
    variables, stored, source = load_for_evaluation(path, cfg)
    assert stored is None and source == f"reference checkpoint {path}"
    assert_same_variables(variables, best)


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    workdir = str(tmp_path / "nan")
    cfg = run_config(data_root, "train.lr=1e30", "print_freq=1", "train.checkpoint_every_steps=1")
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+") as info:
        train(cfg, workdir, show_progress=False)
    bad_step = int(str(info.value).split(" at step ")[1].split()[0])
    steps = Checkpoints(os.path.join(workdir, "checkpoints")).all_steps()
    assert steps and max(steps) == bad_step - 1
    assert_logging_handed_back()


def assert_logging_handed_back():
    """train() leaves the application's logging as it found it: records propagate,
    and no handler (train.log) stays open."""
    logger = logging.getLogger("hrnet_jax")
    assert logger.propagate and not logger.handlers and logger.level == logging.NOTSET


def test_after_a_run_hrnet_jax_records_reach_the_applications_logging(straight_run, caplog):
    assert_logging_handed_back()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("hrnet_jax.data.loader").warning("after the run")
    assert "after the run" in caplog.text


def test_train_script_without_mpii_says_where_it_goes_and_suggests_synthetic(tmp_path):
    missing = str(tmp_path / "no_mpii")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", "hrnet_w32",
         "--data-root", missing, "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert missing in proc.stderr
    assert "--dataset synthetic" in proc.stderr


def test_predict_script_reads_a_training_work_directory(straight_run, data_root, tmp_path):
    workdir, _ = straight_run
    image = os.path.join(data_root, "images", sorted(os.listdir(os.path.join(data_root, "images")))[0])
    out = str(tmp_path / "pred")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "predict.py"), "--checkpoint", workdir,
         image, "--out", out], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stem = os.path.splitext(os.path.basename(image))[0]
    keypoints = json.load(open(os.path.join(out, f"{stem}.json")))["keypoints"]
    assert np.asarray(keypoints).shape == (1, 16, 3)


def test_the_compiling_first_step_is_left_out_of_the_logged_step_time(monkeypatch):
    from hrnet_jax.train import loop

    clock = iter([0.0, 50.0, 50.0, 54.0])  # start, compiled, flushed, flushed
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    meter = loop._EpochMeter(epoch=0, steps_per_epoch=3, batch_size=8)
    metrics = {"loss": np.array([0.5]), "acc_sum": np.array([1.0]), "acc_count": np.array([2.0]),
               "lr": np.array([1e-3])}
    meter.add(metrics, 0.0)
    meter.leave_out_of_timing()  # 50 s of compilation
    assert "Time (compiling)" in meter.flush(1, 1, checkpoints=None)
    meter.add(metrics, 0.0)
    meter.add(metrics, 0.0)
    line = meter.flush(3, 3, checkpoints=None)
    assert "Time 2.000s (2.000s)" in line and "Speed 4.0 samples/s" in line


def _train_command(workdir, data_root, *extra):
    command = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", "hrnet_w8",
               "--workdir", workdir, "--data-root", data_root, "--no-progress"]
    for item in (*TINY_OVERRIDES, *RUN, *extra):
        command += ["--set", item]
    return command


def test_sigterm_mid_epoch_checkpoints_the_step_exits_0_and_the_rerun_continues_exactly(
        straight_run, data_root, tmp_path):
    workdir = str(tmp_path / "preempted")
    command = _train_command(workdir, data_root, "print_freq=1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                            text=True)
    output = []
    try:
        for line in proc.stdout:  # wait for the second step of the first epoch
            output.append(line)
            if "Epoch: [0][2/6]" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=300)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(output)
    assert proc.returncode == 0, text[-3000:]
    stopped = int(text.split("stopped by SIGTERM at step ")[1].split()[0])
    assert 2 <= stopped < 6, text[-2000:]  # mid-epoch: after the step it was in
    assert "run the same command to resume" in text.lower()
    assert Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == stopped
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"at step {stopped} (epoch 0)" in rerun.stdout
    assert_same_variables(final_variables(workdir), final_variables(straight_run[0]))


def test_a_damaged_newest_checkpoint_is_reported_set_aside_and_the_previous_one_resumed(
        straight_run, data_root, tmp_path):
    import shutil

    workdir = str(tmp_path / "damaged")
    shutil.copytree(straight_run[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert Checkpoints(checkpoints).all_steps() == [6, 12]
    # Truncate the largest file of step 12's state.
    files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(checkpoints, "12", "state"))
             for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    result = train(run_config(data_root), workdir, show_progress=False)
    log = open(os.path.join(workdir, "train.log")).read()
    assert "the checkpoint of step 12" in log and "cannot be restored" in log
    assert f"resuming from {checkpoints} at step 6" in log
    assert os.path.isdir(os.path.join(checkpoints + ".unreadable", "12"))
    assert result.step == 12 and Checkpoints(checkpoints).all_steps() == [6, 12]
    assert_same_variables(final_variables(workdir), final_variables(straight_run[0]))


def test_a_missing_model_pretrained_file_stops_a_new_run_naming_the_key(data_root, tmp_path):
    # The reference's experiment files name an ImageNet checkpoint; a new run without it
    # stops rather than train from the random initialisation unasked.
    cfg = run_config(data_root, f"model.pretrained={tmp_path / 'hrnet_w32-36af842e.pth'}")
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained .*hrnet_w32-36af842e\.pth.*"
                                                r"--set model\.pretrained="):
        train(cfg, str(tmp_path / "run"), show_progress=False)
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "0")
    assert_logging_handed_back()


def test_a_new_run_starts_its_backbone_from_model_pretrained(data_root, tmp_path):
    torch = pytest.importorskip("torch")
    from hrnet_jax.convert import variables_to_torch_state_dict
    from hrnet_jax.train.state import init_variables

    cfg = run_config(data_root)
    imagenet = init_variables(override(cfg, ["seed=7"]), jax.random.key(7))
    state_dict = variables_to_torch_state_dict(imagenet, cfg)
    path = str(tmp_path / "imagenet.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
    workdir = str(tmp_path / "run")
    train(run_config(data_root, f"model.pretrained={path}"), workdir, max_steps=0,
          show_progress=False)
    start = final_variables(workdir)
    for name in ("conv1", "layer1_0", "stage4_0"):
        for a, b in zip(jax.tree.leaves(start["params"][name]),
                        jax.tree.leaves(imagenet["params"][name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # final_layer is not among model.pretrained_layers: it keeps the run's own initialisation.
    assert not np.array_equal(start["params"]["final_layer"]["kernel"],
                              imagenet["params"]["final_layer"]["kernel"])
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["pretrained"] == path


def test_a_training_set_smaller_than_one_batch_is_refused_before_anything_is_written(
        data_root, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"24 records are fewer than one batch of 64"):
        train(run_config(data_root, "train.batch_size_per_device=64"), str(workdir),
              show_progress=False)
    assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
    assert_logging_handed_back()


def test_the_epoch_line_says_where_the_time_went():
    from hrnet_jax.logs import epoch_line

    assert epoch_line(3, steps=100, train_s=12.5, data_s=1.0, validation_s=4.26,
                      checkpoint_s=0.31) == (
        "=> epoch 3: 100 steps in 12.5 s (0.125 s a step, 0.010 s of it waiting for data), "
        "validation 4.3 s, checkpoint 0.3 s")
    assert epoch_line(0, steps=4, train_s=20.0, data_s=0.0, validation_s=None, checkpoint_s=None,
                      compiled=True) == (
        "=> epoch 0: 4 steps in 20.0 s (5.000 s a step, 0.000 s of it waiting for data; "
        "compiling the step included)")
    # A fifth of the time or more waiting for batches: data loading bounds the rate.
    assert epoch_line(2, steps=10, train_s=2.0, data_s=0.4, validation_s=None,
                      checkpoint_s=None, workers=4) == (
        "=> epoch 2: 10 steps in 2.0 s (0.200 s a step, 0.040 s of it waiting for data); "
        "data loading bounds the step rate: the loop waited for batches 20% of the time "
        "(more --workers than 4 would help while cores are free)")
    assert epoch_line(2, steps=10, train_s=2.0, data_s=1.5, validation_s=None,
                      checkpoint_s=None, workers=0).endswith(
        "75% of the time (batches are built in the training process: --workers N would help)")
    assert "bounds" not in epoch_line(2, steps=10, train_s=2.0, data_s=0.39, validation_s=None,
                                      checkpoint_s=None, workers=4)
