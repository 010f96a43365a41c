"""Worker processes that build batches ahead of the consumer, within a fixed bound.

:class:`BatchWorkers` runs ``make(step)`` for consecutive global batch numbers
in ``workers`` spawned processes. Batch ``step`` is always built by worker
``step % workers`` and handed out in order, so what comes out does not depend
on the number of workers.

Bounds. At most ``prefetch`` batches per worker are requested ahead of the
consumer, so however long it pauses (compiling, validating, checkpointing)
there are never more than ``workers * prefetch`` finished batches waiting, each
in one shared-memory block, and each worker holds at most the one batch it is
building. A worker whose queue is full waits on its pipe and uses no CPU.

Failures end the iteration within a bounded time, never a hang: an exception
in a worker is raised again in the consumer (with the worker and batch named);
a worker that dies (killed by the kernel's out-of-memory killer, a crash)
raises :class:`WorkerDiedError` with its exit code and the likely cause; a
worker that produces nothing for ``timeout_s`` raises :class:`WorkerTimeoutError`.

Shared memory. A finished batch is pickled with its arrays out of band into a
block named after the pool and the batch number; the consumer maps it,
unlinks its name at once, and reads the large arrays in place (the memory is
freed with the last of them; small arrays are copied, so that keeping the
metadata of a batch does not keep its images). Blocks of batches still in flight when the
pool closes (or a worker dies) are unlinked by name, so nothing is left behind
in ``/dev/shm``. A process killed outright (SIGKILL, the out-of-memory killer)
cannot do that; its blocks carry its process id in their names, and the next
pool to start removes those whose process is gone
(:func:`remove_orphaned_blocks`).
"""

from __future__ import annotations

import collections
import logging
import mmap
import multiprocessing as mp
import os
import pickle
import re
import secrets
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing import connection, resource_tracker, shared_memory
from typing import Any

import cv2

logger = logging.getLogger(__name__)

# How often a waiting consumer checks that the worker it waits on is alive.
_POLL_S = 1.0
# Bytes between out-of-band buffers, so that every array starts aligned.
_ALIGN = 64


class WorkerError(RuntimeError):
    """A data worker failed; the message names the worker and the batch."""


class WorkerDiedError(WorkerError):
    """A data worker process ended without being asked to."""

    def __init__(self, message: str, *, worker: int, exitcode: int | None) -> None:
        super().__init__(message)
        self.worker = worker
        self.exitcode = exitcode


class WorkerTimeoutError(WorkerError):
    """A data worker produced nothing for longer than the pool's timeout."""


def describe_exit(exitcode: int | None) -> str:
    """A short account of a process exit code, with the likely cause of the usual ones."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        text = f"was killed by signal {number} ({name})"
        if number == signal.SIGKILL:
            text += ": probably out of memory (the kernel's OOM killer sends SIGKILL)"
        elif number == signal.SIGSEGV:
            text += ": it crashed in native code (OpenCV or NumPy)"
        elif number == signal.SIGBUS:
            text += (f": most likely shared memory ({SHM_DIR}, where batches travel) is full; "
                     "give it more room (docker run --shm-size)")
        return text
    return f"exited with code {exitcode}"


SHM_DIR = "/dev/shm"
# hrnet_jax_<pid namespace>-<owner's pid>_<8 hex digits>_<batch number>. A process id
# means something only in its namespace: containers sharing /dev/shm (docker
# --ipc=host) each have their own, so only blocks of this one are ever swept.
_BLOCK_NAME = re.compile(r"hrnet_jax_(\d+)-(\d+)_[0-9a-f]{8}_\d+")


def _pid_namespace() -> str | None:
    """This process's pid namespace (the inode of /proc/self/ns/pid); None off Linux."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def _block_prefix() -> str:
    namespace = _pid_namespace()
    owner = f"{namespace}-{os.getpid()}" if namespace else str(os.getpid())
    return f"hrnet_jax_{owner}_{secrets.token_hex(4)}"


def _shm_name(prefix: str, step: int) -> str:
    return f"{prefix}_{step}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_blocks(directory: str = SHM_DIR) -> list[tuple[str, int]]:
    """Unlinks batch blocks in ``directory`` whose owning process no longer exists.

    Only names this module writes are touched, only those made in this pid
    namespace, and only when the process id in the name is gone, so pools of
    other live runs (in other containers too) are left alone. Returns
    ``(name, bytes)`` of each block removed; nothing off Linux.
    """
    namespace = _pid_namespace()
    try:
        names = os.listdir(directory) if namespace else []
    except OSError:
        return []
    removed = []
    for name in names:
        match = _BLOCK_NAME.fullmatch(name)
        if (match is None or match.group(1) != namespace
                or _process_exists(int(match.group(2)))):
            continue
        try:
            size = os.stat(os.path.join(directory, name)).st_size
        except OSError:
            continue
        if _unlink(name):
            removed.append((name, size))
    return removed


def _unlink(name: str) -> bool:
    """Removes a shared-memory block by name; False if there was none."""
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    block.close()
    block.unlink()
    return True


def _pack(value: Any, name: str) -> tuple[str, int, list[tuple[int, int]]]:
    """Pickles ``value`` into a new shared-memory block ``name``.

    Returns ``(name, header_bytes, [(offset, size), ...])`` of the pickle
    stream and of each out-of-band buffer (the arrays' data).
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    layout, offset = [], len(header)
    for raw in raws:
        offset += -offset % _ALIGN
        layout.append((offset, raw.nbytes))
        offset += raw.nbytes
    block = shared_memory.SharedMemory(name=name, create=True, size=max(1, offset))
    try:
        block.buf[:len(header)] = header
        for (start, size), raw in zip(layout, raws, strict=True):
            block.buf[start:start + size] = raw
    finally:
        del raws, buffers
        block.close()
    return name, len(header), layout


def _block_bytes(header_bytes: int, layout: list[tuple[int, int]]) -> int:
    """The bytes a block written by :func:`_pack` uses: the pickle stream and every buffer."""
    return max([header_bytes] + [start + size for start, size in layout])


# Arrays of at least this many bytes are read in place by the consumer; smaller ones are copied.
_MAPPED_AT_LEAST = 1 << 16


def _unpack(name: str, header_bytes: int, layout: list[tuple[int, int]]) -> Any:
    """The value written by :func:`_pack`, its large arrays reading the block in place.

    The block's name is unlinked at once; its memory stays mapped for as long
    as the arrays live, and is freed with the last of them. For a 32 MB batch
    on a 2-core CPU, receiving it and reading it once took 27.5 ms copied out
    and 5.5 ms mapped. Where shared memory is not a directory of files (not
    Linux), the value is copied out instead.
    """
    if not os.path.isdir(SHM_DIR):
        return _unpack_copy(name, header_bytes, layout)
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        mapping = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
        os.unlink(path)
        # As SharedMemory.unlink does: the worker registered the block for cleanup.
        resource_tracker.unregister("/" + name, "shared_memory")
    view = memoryview(mapping)
    # Small arrays (the metadata) are copied, so that keeping one does not keep the
    # whole batch's shared memory.
    return pickle.loads(view[:header_bytes], buffers=[
        view[start:start + size] if size >= _MAPPED_AT_LEAST else bytearray(view[start:start + size])
        for start, size in layout])


def _unpack_copy(name: str, header_bytes: int, layout: list[tuple[int, int]]) -> Any:
    """:func:`_unpack` by copying the block into private memory, then unlinking it."""
    block = shared_memory.SharedMemory(name=name)
    try:
        data = bytearray(block.buf[:_block_bytes(header_bytes, layout)])
    finally:
        block.close()
        block.unlink()
    view = memoryview(data)
    return pickle.loads(view[:header_bytes],
                        buffers=[view[start:start + size] for start, size in layout])


# Received batches the training loop holds at once: two on the devices ahead, the
# one being trained on and the one being received.
_HELD_BY_CONSUMER = 4


def shared_memory_size(directory: str = SHM_DIR) -> int | None:
    """Bytes the shared-memory file system can hold in all; None if unknown."""
    try:
        stat = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return stat.f_blocks * stat.f_frsize


def _warn_if_shared_memory_is_small(payload: tuple[str, int, list[tuple[int, int]]],
                                    waiting: int) -> None:
    """Warns when ``waiting`` batches like ``payload``'s, and those the consumer holds,
    may not fit in shared memory (where a full file system kills the writer with SIGBUS)."""
    block = _block_bytes(*payload[1:])
    needed = (waiting + _HELD_BY_CONSUMER) * block
    size = shared_memory_size()
    if size is not None and needed > size:
        logger.warning(
            "%s holds %.0f MB, but the data workers may need %.0f MB of it (%d waiting batches "
            "and %d being used, %.1f MB each); a worker that finds it full dies with a bus "
            "error. Give it more room (docker run --shm-size) or lower --workers or --prefetch.",
            SHM_DIR, size / 2**20, needed / 2**20, waiting, _HELD_BY_CONSUMER, block / 2**20)


def _worker_main(make_pickled: bytes, tasks: connection.Connection,
                 results: connection.Connection, stop: connection.Connection) -> None:
    """Builds the batches asked for on ``tasks`` until told to stop or the pool is gone.

    ``stop`` becomes readable (end of file) when the pool closes its other end:
    queued requests are then dropped.
    """
    # Ctrl-C, and a preemption's SIGTERM, may reach the whole process group: the
    # consumer decides what to do (it stops the workers when it is done).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The workers are the parallelism: OpenCV's own pool (a thread per core) in each
    # of them would only contend for the same cores (4-14% fewer samples/s measured
    # with 16 threads a worker on 2 cores).
    cv2.setNumThreads(1)
    make = pickle.loads(make_pickled)
    while True:
        try:
            request = tasks.recv()
        except (EOFError, OSError):
            return  # the consumer has gone
        if request is None or stop.poll():
            return
        step, name = request
        try:
            message = ("ok", step, _pack(make(step), name))
        except BaseException as e:  # everything goes back to the consumer
            text = "".join(traceback.format_exception(e))
            try:
                error: bytes | None = pickle.dumps(e)
            except Exception:
                error = None
            message = ("error", step, (error, text))
        try:
            results.send(message)
        except (BrokenPipeError, OSError):
            if message[0] == "ok":
                _unlink(name)
            return


class _Worker:
    def __init__(self, index: int, process: Any, tasks: connection.Connection,
                 results: connection.Connection) -> None:
        self.index = index
        self.process = process
        self.tasks = tasks
        self.results = results
        self.pending: collections.deque[int] = collections.deque()


class BatchWorkers:
    """Builds ``make(step)`` for ``step`` in ``[start, stop)`` in worker processes, in order.

    Args:
      make: a picklable callable, global batch number -> batch (any picklable
        value; NumPy arrays travel through shared memory).
      workers: number of worker processes (>= 1).
      prefetch: batches each worker builds ahead of the consumer (>= 1).
      start, stop: the batch numbers to produce.
      timeout_s: longest wait for one batch before :class:`WorkerTimeoutError`
        (None waits as long as the worker lives).

    Iterate to get ``make(start), make(start + 1), ...``; :meth:`close` stops the
    workers (also on exit from a ``with`` block and when iteration ends).
    """

    def __init__(self, make: Callable[[int], Any], *, workers: int, prefetch: int,
                 start: int, stop: int, timeout_s: float | None = 600.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.num_workers = int(workers)
        self.prefetch = int(prefetch)
        self.timeout_s = timeout_s
        self._next_submit = int(start)
        self._next_out = int(start)
        self._stop = int(stop)
        orphans = remove_orphaned_blocks()
        if orphans:
            logger.warning(
                "removed %d shared-memory blocks (%.1f MB) that data workers of processes "
                "which ended without closing them (killed?) had left in %s", len(orphans),
                sum(size for _, size in orphans) / 2**20, SHM_DIR)
        self._prefix = _block_prefix()
        self._closed = False
        self._checked_room = False
        self._workers: list[_Worker] = []
        context = mp.get_context("spawn")
        # A pipe, not an Event: an Event is five named semaphores, which a run
        # killed outright would leave behind with no name to find them by.
        stop_recv, self._stop_send = context.Pipe(duplex=False)
        make_pickled = pickle.dumps(make)
        try:
            for index in range(self.num_workers):
                task_recv, task_send = context.Pipe(duplex=False)
                result_recv, result_send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker_main,
                    args=(make_pickled, task_recv, result_send, stop_recv),
                    name=f"hrnet_jax data worker {index}", daemon=True)
                process.start()
                # The child has its own copies; ours would keep a dead child's pipe open.
                task_recv.close()
                result_send.close()
                self._workers.append(_Worker(index, process, task_send, result_recv))
            self._fill()
        except BaseException:
            self.close()
            raise
        finally:
            stop_recv.close()  # the workers hold their copies

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers, by worker index."""
        return [w.process.pid for w in self._workers]

    def in_flight(self) -> int:
        """Batches requested and not yet handed out."""
        return self._next_submit - self._next_out

    def _fill(self) -> None:
        limit = min(self._stop, self._next_out + self.num_workers * self.prefetch)
        while self._next_submit < limit:
            step = self._next_submit
            worker = self._workers[step % self.num_workers]
            try:
                worker.tasks.send((step, _shm_name(self._prefix, step)))
            except (BrokenPipeError, OSError):
                raise self._died(worker, step) from None
            worker.pending.append(step)
            self._next_submit += 1

    def _died(self, worker: _Worker, step: int) -> WorkerDiedError:
        # The batch it died on is its oldest one not delivered (a later request may
        # be what found the pipe broken).
        step = worker.pending[0] if worker.pending else step
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        message = (f"data worker {worker.index} (pid {worker.process.pid}) "
                   f"{describe_exit(code)} before delivering batch {step}; lower --workers or "
                   f"the prefetch depth (each of {self.num_workers} worker(s) holds up to "
                   f"{self.prefetch} batch(es) ahead) if memory is short")
        return WorkerDiedError(message, worker=worker.index, exitcode=code)

    def __iter__(self) -> BatchWorkers:
        return self

    def __next__(self) -> Any:
        if self._closed or self._next_out >= self._stop:
            self.close()
            raise StopIteration
        step = self._next_out
        worker = self._workers[step % self.num_workers]
        try:
            message = self._receive(worker, step)
        except BaseException:
            self.close()
            raise
        kind, got, payload = message
        if got != step:  # cannot happen: one pipe per worker, answered in order
            self.close()
            raise WorkerError(f"data worker {worker.index} answered batch {got}, expected {step}")
        worker.pending.popleft()
        self._next_out += 1
        if kind == "error":
            self.close()
            pickled, text = payload
            note = f"raised in data worker {worker.index} while building batch {step}"
            try:
                error = pickle.loads(pickled) if pickled is not None else None
            except Exception:  # an exception type that does not unpickle
                error = None
            if isinstance(error, BaseException):
                error.add_note(note)
                raise error
            raise WorkerError(f"{note}:\n{text}")
        batch = _unpack(*payload)
        if not self._checked_room:
            self._checked_room = True
            _warn_if_shared_memory_is_small(payload, self.num_workers * self.prefetch)
        try:
            self._fill()
        except BaseException:
            self.close()
            raise
        return batch

    def _receive(self, worker: _Worker, step: int) -> Any:
        started = time.monotonic()
        sentinel = worker.process.sentinel
        while True:
            ready = connection.wait([worker.results, sentinel], timeout=_POLL_S)
            if worker.results in ready:
                try:
                    return worker.results.recv()
                except (EOFError, OSError):
                    raise self._died(worker, step) from None
            if sentinel in ready or not worker.process.is_alive():
                raise self._died(worker, step)
            waited = time.monotonic() - started
            if self.timeout_s is not None and waited > self.timeout_s:
                raise WorkerTimeoutError(
                    f"data worker {worker.index} (pid {worker.process.pid}) has built nothing "
                    f"for {waited:.0f} s while building batch {step}; it may be stuck reading "
                    "the dataset")

    def close(self) -> None:
        """Stops the workers and removes the shared memory of unread batches."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "_stop_send"):
            self._stop_send.close()
        for worker in self._workers:
            try:
                worker.tasks.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5.0)
        for worker in self._workers:
            # Finished batches nobody read, and blocks a dying worker left half made.
            while worker.results.poll():
                try:
                    kind, step, payload = worker.results.recv()
                except (EOFError, OSError):
                    break
                if kind == "ok":
                    _unlink(payload[0])
            for step in worker.pending:
                _unlink(_shm_name(self._prefix, step))
            worker.pending.clear()
            for end in (worker.tasks, worker.results):
                end.close()
            if worker.process.exitcode is not None:
                worker.process.close()

    def __enter__(self) -> BatchWorkers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
