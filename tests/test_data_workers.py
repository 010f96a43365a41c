"""Data worker processes: bounded work ahead, flat memory, failures that end iteration, no leaks."""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.data import build_loader, ensure_synthetic_mpii
from hrnet_jax.data import workers as workers_module
from hrnet_jax.data.workers import (
    BatchWorkers,
    WorkerDiedError,
    WorkerError,
    WorkerTimeoutError,
    describe_exit,
)


class MakeArrays:
    """Batch ``step`` -> arrays filled with ``step``; notes each build as a file in ``log_dir``."""

    def __init__(self, log_dir=None, nbytes=4096, sleep=0.0):
        self.log_dir = log_dir
        self.nbytes = nbytes
        self.sleep = sleep

    def __call__(self, step):
        if self.log_dir is not None:
            open(os.path.join(self.log_dir, f"built_{step}"), "w").close()
        time.sleep(self.sleep)
        return {"pixels": np.full(self.nbytes // 4, step, np.float32),
                "step": np.int64(step), "name": f"image_{step}.jpg"}


class FailAt:
    """Raises, exits the process or hangs on one batch; otherwise like MakeArrays."""

    def __init__(self, step, how):
        self.step = step
        self.how = how

    def __call__(self, step):
        if step == self.step:
            if self.how == "raise":
                raise FileNotFoundError(f"image_{step}.jpg does not exist")
            if self.how == "exit":
                os._exit(3)
            if self.how == "hang":
                time.sleep(60)
        return MakeArrays()(step)


class OpenCVThreads:
    """Batch ``step`` -> the number of threads OpenCV uses in the process building it."""

    def __call__(self, step):
        import cv2

        return {"threads": np.int64(cv2.getNumThreads())}


class MakeImagesAndMeta:
    """Batch ``step`` -> a 1 MiB array of ``step`` and a small one, like images and metadata."""

    def __call__(self, step):
        return {"images": np.full(2**18, step, np.float32), "center": np.full(2, step, np.float64)}


def memory_owner(array):
    """What finally holds an array's bytes: 'mmap' (a mapped block), 'bytearray', ..."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return type(base).__name__


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("workers") / "synthetic")
    return ensure_synthetic_mpii(root, num_train=24, num_valid=12, seed=2, image_size=320)


def shm_blocks(pool):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(pool._prefix))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- order and bounds


def test_batches_come_out_in_order_and_equal_whatever_the_number_of_workers():
    for workers in (1, 3):
        with BatchWorkers(MakeArrays(), workers=workers, prefetch=2, start=5, stop=12) as pool:
            got = list(pool)
        assert [int(b["step"]) for b in got] == list(range(5, 12))
        assert [b["name"] for b in got] == [f"image_{s}.jpg" for s in range(5, 12)]
        for b in got:
            np.testing.assert_array_equal(b["pixels"], np.full(1024, b["step"], np.float32))
            assert b["pixels"].flags.writeable


def test_each_worker_runs_opencv_on_one_thread_the_workers_being_the_parallelism():
    with BatchWorkers(OpenCVThreads(), workers=2, prefetch=1, start=0, stop=2) as pool:
        assert [int(b["threads"]) for b in pool] == [1, 1]


def test_large_arrays_are_read_in_place_and_small_ones_copied_so_metadata_pins_nothing():
    with BatchWorkers(MakeImagesAndMeta(), workers=2, prefetch=1, start=0, stop=3) as pool:
        batches = list(pool)
        assert not shm_blocks(pool)  # every name is gone, the memory is still mapped
    for step, batch in enumerate(batches):
        assert memory_owner(batch["images"]) == "mmap"
        assert memory_owner(batch["center"]) == "bytearray"
        np.testing.assert_array_equal(batch["images"], np.full(2**18, step, np.float32))
        np.testing.assert_array_equal(batch["center"], [step, step])
        assert batch["images"].flags.writeable and batch["center"].flags.writeable


def test_where_shared_memory_is_not_a_directory_batches_are_copied_out(monkeypatch):
    monkeypatch.setattr(workers_module, "SHM_DIR", "/nonexistent/shm")
    with BatchWorkers(MakeImagesAndMeta(), workers=2, prefetch=1, start=0, stop=3) as pool:
        batches = list(pool)
    monkeypatch.undo()
    assert not shm_blocks(pool)
    for step, batch in enumerate(batches):
        assert memory_owner(batch["images"]) == "bytearray"
        np.testing.assert_array_equal(batch["images"], np.full(2**18, step, np.float32))
        np.testing.assert_array_equal(batch["center"], [step, step])


def test_a_paused_consumer_has_at_most_workers_times_prefetch_batches_built_ahead(tmp_path):
    workers, prefetch = 2, 3
    with BatchWorkers(MakeArrays(str(tmp_path)), workers=workers, prefetch=prefetch,
                      start=0, stop=1000) as pool:
        next(pool)
        ahead = workers * prefetch
        assert wait_until(lambda: len(shm_blocks(pool)) == ahead)
        time.sleep(2.0)  # the consumer is busy: nothing more may be built
        built = sorted(int(n.split("_")[1]) for n in os.listdir(tmp_path))
        assert built == list(range(1 + ahead))
        assert len(shm_blocks(pool)) == ahead
        assert pool.in_flight() == ahead
        # Taking one more lets exactly one more be built.
        next(pool)
        assert wait_until(lambda: len(os.listdir(tmp_path)) == 2 + ahead)
        time.sleep(1.0)
        assert len(os.listdir(tmp_path)) == 2 + ahead


def test_worker_memory_stays_flat_while_the_consumer_pauses(synthetic_root):
    cfg = override(get_config("hrnet_w32"), [f"dataset.root={synthetic_root}"])
    with build_loader(cfg, "train", batch_size=4, workers=2, prefetch=2) as loader:
        batches = iter(loader)
        first = next(batches)
        batch_bytes = sum(a.nbytes for a in first[:3])
        time.sleep(1.0)
        before = {pid: rss_bytes(pid) for pid in loader.worker_pids}
        time.sleep(6.0)
        after = {pid: rss_bytes(pid) for pid in loader.worker_pids}
        for pid in before:
            assert after[pid] - before[pid] < 2 * batch_bytes, (before, after, batch_bytes)
        # Finished batches wait in shared memory: two per worker.
        pool = loader._stream
        held = sum(os.path.getsize(f"/dev/shm/{n}") for n in shm_blocks(pool))
        assert len(shm_blocks(pool)) == 4
        assert held < 4 * 1.1 * batch_bytes


def test_an_evaluation_loader_stops_its_workers_at_the_end_of_the_epoch(synthetic_root):
    cfg = override(get_config("hrnet_w32"), [f"dataset.root={synthetic_root}"])
    loader = build_loader(cfg, "valid", batch_size=4, workers=2)
    batches = iter(loader)
    next(batches)
    pids = loader.worker_pids
    assert len(pids) == 2
    list(batches)
    assert loader.worker_pids == []
    for pid in pids:
        assert wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}")
                          or open(f"/proc/{pid}/stat").read().split()[2] == "Z")


def test_a_training_loader_keeps_its_workers_into_the_next_epoch(synthetic_root):
    cfg = override(get_config("hrnet_w32"), [f"dataset.root={synthetic_root}"])
    with build_loader(cfg, "train", batch_size=4, workers=2) as loader:
        list(loader)
        pids = loader.worker_pids
        assert len(pids) == 2
        assert loader.get_state() == {"epoch": 1, "batch": 0}
        next(iter(loader))
        assert loader.worker_pids == pids


# --------------------------------------------------------------------------- failures


def test_a_killed_worker_ends_iteration_naming_the_worker_its_signal_and_the_likely_cause():
    pool = BatchWorkers(MakeArrays(sleep=0.05), workers=2, prefetch=1, start=0, stop=100)
    next(pool)
    os.kill(pool.pids[1], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        for _ in range(10):
            next(pool)
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert "data worker 1" in text and "signal 9 (SIGKILL)" in text
    assert "out of memory" in text and "--workers" in text
    assert info.value.worker == 1 and info.value.exitcode == -signal.SIGKILL
    assert shm_blocks(pool) == []


def test_a_worker_that_exits_is_reported_with_its_exit_code():
    pool = BatchWorkers(FailAt(3, "exit"), workers=2, prefetch=2, start=0, stop=10)
    with pytest.raises(WorkerDiedError, match=r"data worker 1 \(pid \d+\) exited with code 3 "
                                              r"before delivering batch 3"):
        list(pool)
    assert shm_blocks(pool) == []


def test_a_worker_found_dead_when_it_is_sent_more_names_the_batch_it_died_on():
    # Worker 1 builds batches 1, 3, 5, ...; it exits on 3. A slow consumer finds it dead
    # only when sending it batch 5, after taking batch 1: the error still names batch 3.
    pool = BatchWorkers(FailAt(3, "exit"), workers=2, prefetch=2, start=0, stop=10)
    with pytest.raises(WorkerDiedError, match=r"data worker 1 \(pid \d+\) exited with code 3 "
                                              r"before delivering batch 3"):
        for _ in pool:
            time.sleep(1.0)
    assert shm_blocks(pool) == []


def test_an_exception_in_a_worker_is_raised_again_with_its_type_worker_and_batch():
    pool = BatchWorkers(FailAt(2, "raise"), workers=2, prefetch=2, start=0, stop=10)
    got = []
    with pytest.raises(FileNotFoundError, match="image_2.jpg does not exist") as info:
        for batch in pool:
            got.append(int(batch["step"]))
    assert got == [0, 1]
    assert "raised in data worker 0 while building batch 2" in "\n".join(info.value.__notes__)
    assert shm_blocks(pool) == []


def test_a_worker_that_builds_nothing_for_too_long_times_out_naming_it():
    pool = BatchWorkers(FailAt(1, "hang"), workers=2, prefetch=1, start=0, stop=10,
                        timeout_s=1.5)
    next(pool)
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match=r"data worker 1 .* has built nothing for"):
        next(pool)
    assert time.monotonic() - started < 10
    assert shm_blocks(pool) == []


def test_closing_with_unread_batches_stops_the_workers_and_leaves_no_shared_memory():
    pool = BatchWorkers(MakeArrays(nbytes=1 << 20), workers=3, prefetch=2, start=0, stop=100)
    next(pool)
    assert wait_until(lambda: len(shm_blocks(pool)) == 6)
    pids = pool.pids
    pool.close()
    assert shm_blocks(pool) == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")


def test_exit_codes_are_described_with_their_likely_cause():
    assert describe_exit(-9) == ("was killed by signal 9 (SIGKILL): probably out of memory "
                                 "(the kernel's OOM killer sends SIGKILL)")
    assert describe_exit(-11).startswith("was killed by signal 11 (SIGSEGV)")
    assert describe_exit(-7) == ("was killed by signal 7 (SIGBUS): most likely shared memory "
                                 "(/dev/shm, where batches travel) is full; give it more room "
                                 "(docker run --shm-size)")
    assert describe_exit(1) == "exited with code 1"


def test_a_shared_memory_too_small_for_the_batches_in_flight_is_warned_of_once(
        monkeypatch, caplog):
    # 2 workers x 2 ahead + 4 held by the consumer = 8 blocks of 256 KiB and a header:
    # just over 2 MiB, in a file system said to hold 1 MiB, then 3 MiB.
    monkeypatch.setattr(workers_module, "shared_memory_size", lambda: 2**20)
    with caplog.at_level(logging.WARNING, logger=workers_module.logger.name):
        with BatchWorkers(MakeArrays(nbytes=2**18), workers=2, prefetch=2, start=0,
                          stop=3) as pool:
            assert len(list(pool)) == 3
    warnings = [r.getMessage() for r in caplog.records if "--shm-size" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("/dev/shm holds 1 MB, but the data workers may need 2 MB")
    assert "(4 waiting batches and 4 being used, 0.3 MB each)" in warnings[0]

    caplog.clear()
    monkeypatch.setattr(workers_module, "shared_memory_size", lambda: 3 * 2**20)
    with caplog.at_level(logging.WARNING, logger=workers_module.logger.name):
        with BatchWorkers(MakeArrays(nbytes=2**18), workers=2, prefetch=2, start=0,
                          stop=3) as pool:
            assert len(list(pool)) == 3
    assert not [r for r in caplog.records if "--shm-size" in r.getMessage()]


def test_bad_pool_sizes_are_refused():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        BatchWorkers(MakeArrays(), workers=0, prefetch=1, start=0, stop=1)
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        BatchWorkers(MakeArrays(), workers=1, prefetch=0, start=0, stop=1)
    assert issubclass(WorkerDiedError, WorkerError)


# --------------------------------------------------------------------------- the scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    import sys

    from conftest import TINY_OVERRIDES

    flags = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
    return [sys.executable, os.path.join(REPO, "scripts", name), "--config", "hrnet_w8",
            "--no-progress", *flags, *args]


def worker_pids_of(parent):
    """Data workers (spawned children) of process ``parent``, not its resource tracker."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry))
    return pids


def run_to_success(command):
    import subprocess

    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_and_kill_a_worker(command):
    import subprocess

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert wait_until(lambda: worker_pids_of(proc.pid), timeout=240), "no worker started"
        os.kill(worker_pids_of(proc.pid)[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def script_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("workers_scripts") / "synthetic")
    return ensure_synthetic_mpii(root, num_train=24, num_valid=12, seed=3, image_size=96)


@pytest.mark.slow
def test_training_and_testing_with_workers_end_without_leaked_shared_memory_or_semaphores(
        script_root, tmp_path):
    workdir = str(tmp_path / "run")
    train = run_to_success(script("train.py", "--data-root", script_root, "--workdir", workdir,
                                  "--epochs", "2", "--batch-size", "4", "--workers", "2"))
    test = run_to_success(script("test.py", "--data-root", script_root, "--checkpoint", workdir,
                                 "--batch-size", "4", "--workers", "2",
                                 "--out", str(tmp_path / "eval")))
    for proc in (train, test):
        assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_training_stops_with_a_clear_message_when_a_data_worker_is_killed(script_root, tmp_path):
    code, out, err = run_and_kill_a_worker(
        script("train.py", "--data-root", script_root, "--workdir", str(tmp_path / "run"),
               "--epochs", "100", "--batch-size", "4", "--workers", "2"))
    assert code == 4, out[-2000:] + err[-3000:]
    assert "killed by signal 9 (SIGKILL): probably out of memory" in err
    assert "lower --workers or the prefetch depth" in err
    assert "Rerun the same command to resume" in err


@pytest.mark.slow
def test_testing_stops_with_a_clear_message_when_a_data_worker_is_killed(script_root, tmp_path):
    workdir = str(tmp_path / "run")
    run_to_success(script("train.py", "--data-root", script_root, "--workdir", workdir,
                          "--max-steps", "1", "--batch-size", "4", "--workers", "0"))
    code, out, err = run_and_kill_a_worker(
        script("test.py", "--data-root", script_root, "--checkpoint", workdir, "--batch-size", "1",
               "--workers", "2", "--prefetch", "1"))
    assert code == 4, out[-2000:] + err[-3000:]
    assert "data worker" in err and "killed by signal 9 (SIGKILL)" in err



_KILLED_OWNER = """
import time
import numpy as np
from hrnet_jax.data.workers import BatchWorkers
pool = BatchWorkers(np.arange, workers=2, prefetch=2, start=100_000, stop=100_100)
next(pool)
print(pool._prefix, flush=True)
time.sleep(120)
"""


def _semaphores():
    return {n for n in os.listdir("/dev/shm") if n.startswith("sem.")}


def test_a_new_pool_removes_the_blocks_of_a_run_that_was_killed_outright(caplog):
    # The whole process group is killed at once, its resource tracker with it, as
    # `timeout` does after its grace period: nothing of that run can unlink anything.
    semaphores = _semaphores()
    child = subprocess.Popen([sys.executable, "-c", _KILLED_OWNER], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        prefix = child.stdout.readline().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        assert prefix.startswith(f"hrnet_jax_{namespace}-{child.pid}_"), prefix

        def left():
            return [n for n in os.listdir("/dev/shm") if n.startswith(prefix + "_")]

        assert wait_until(lambda: len(left()) == 4)  # 2 workers x prefetch 2, one batch read
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert len(left()) == 4
    assert _semaphores() <= semaphores  # the pool made no named semaphores to leave behind
    with BatchWorkers(MakeArrays(), workers=1, prefetch=1, start=0, stop=2) as running:
        assert wait_until(lambda: len(shm_blocks(running)) == 1)
        with caplog.at_level("WARNING", logger="hrnet_jax.data.workers"):
            with BatchWorkers(MakeArrays(), workers=1, prefetch=1, start=0, stop=1) as pool:
                assert next(pool)["step"] == 0
        # the blocks of a live process stay, those of the killed one are gone
        assert len(shm_blocks(running)) == 1
        assert [int(b["step"]) for b in running] == [0, 1]
    assert left() == []
    assert "removed 4 shared-memory blocks (3.1 MB)" in caplog.text, caplog.text


def test_blocks_of_another_pid_namespace_are_never_swept():
    # Another container sharing /dev/shm: its process ids mean nothing here, so
    # even a pid that does not exist in this namespace must not lead to removal.
    from multiprocessing import resource_tracker, shared_memory

    from hrnet_jax.data.workers import remove_orphaned_blocks

    namespace = os.stat("/proc/self/ns/pid").st_ino
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = {"other": f"hrnet_jax_{namespace + 1}-{dead}_0123abcd_7",
             "ours": f"hrnet_jax_{namespace}-{dead}_0123abcd_7"}
    for name in names.values():
        block = shared_memory.SharedMemory(name=name, create=True, size=16)
        block.close()
        resource_tracker.unregister(block._name, "shared_memory")  # we unlink by hand
    try:
        removed = [name for name, _ in remove_orphaned_blocks()]
        assert names["ours"] in removed
        assert names["other"] not in removed and os.path.exists(f"/dev/shm/{names['other']}")
    finally:
        for name in names.values():
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")
