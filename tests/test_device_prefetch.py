"""prefetch_to_devices: batches read and placed by a background thread, in order,
a bounded number ahead, with errors raised where they belong and a clean stop."""

import contextlib
import threading
import time

import numpy as np
import pytest

from hrnet_jax.parallel import prefetch_to_devices, shard_to_devices

THREAD_NAME = "hrnet_jax device prefetch"


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_batches_come_in_order_each_with_what_place_made_of_it_in_another_thread():
    callers = []

    def place(batch):
        callers.append(threading.get_ident())
        return batch * 10

    got = list(prefetch_to_devices(range(7), place, size=2))

    assert got == [(i * 10, i) for i in range(7)]
    assert len(callers) == 7 and threading.get_ident() not in callers
    assert not _prefetch_threads()


def test_an_empty_source_yields_nothing():
    assert list(prefetch_to_devices([], lambda b: b)) == []


@pytest.mark.parametrize("size", [1, 3])
def test_at_most_size_batches_are_placed_ahead_of_the_consumer(size):
    placed = []
    batches = prefetch_to_devices(range(100), lambda b: placed.append(b) or b, size=size)
    with contextlib.closing(batches):
        for taken in range(1, 4):
            next(batches)
            time.sleep(0.3)  # ample time for the thread to run as far ahead as it may
            # `size` waiting in the queue, and one placed and waiting for room.
            assert len(placed) == taken + size + 1


def test_an_error_while_reading_is_raised_after_the_batches_before_it():
    def source():
        yield from range(3)
        raise OSError("image 3 is unreadable")

    batches = prefetch_to_devices(source(), lambda b: b)
    got = [next(batches)[1] for _ in range(3)]
    with pytest.raises(OSError, match="image 3 is unreadable"):
        next(batches)
    assert got == [0, 1, 2]
    assert not _prefetch_threads()


def test_an_error_while_placing_is_raised_at_that_batch():
    def place(batch):
        if batch == 2:
            raise ValueError("batch of 5 does not split evenly over 2 devices")
        return batch

    batches = prefetch_to_devices(range(5), place)
    assert [next(batches)[1] for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="does not split evenly"):
        next(batches)


def test_closing_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield np.full((2,), i)
                i += 1
        finally:
            closed.set()

    batches = prefetch_to_devices(endless(), lambda b: b + 1)
    first = [next(batches) for _ in range(3)]
    batches.close()

    assert [int(placed[0]) for placed, _ in first] == [1, 2, 3]
    assert closed.is_set()
    assert not _prefetch_threads()


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="prefetch size must be >= 1, got 0"):
        next(prefetch_to_devices(range(3), lambda b: b, size=0))


def test_shard_to_devices_puts_consecutive_rows_of_the_batch_on_each_device():
    import jax

    devices = jax.local_devices()
    batch = np.arange(2 * len(devices) * 3, dtype=np.float32).reshape(2 * len(devices), 3)
    placed = shard_to_devices({"x": batch})["x"]
    assert placed.shape == (len(devices), 2, 3)
    for d, shard in enumerate(sorted(placed.addressable_shards, key=lambda s: s.index[0].start)):
        assert shard.device == devices[d]
        np.testing.assert_array_equal(np.asarray(shard.data)[0], batch[2 * d:2 * d + 2])
