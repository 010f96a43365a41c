"""Chrome/Perfetto trace files as spans on named lines, and the interval arithmetic on them.

A trace is a JSON object whose ``traceEvents`` list holds complete events
(``"ph": "X"``: ``ts`` and ``dur`` in microseconds, ``pid``, ``tid``, ``name``,
``args``) and metadata events (``"ph": "M"``) naming each ``pid``
(``process_name``) and ``(pid, tid)`` (``thread_name``); a (process, thread)
pair is a *line*. ``jax.profiler.trace(..., create_perfetto_trace=True)``
writes one under ``log_dir/plugins/profile/<run>/``.

HLO op names are grouped by *category*, the name with its instance numbers
stripped (``fusion.12`` and ``fusion.3`` are both ``fusion``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_COPY_PATTERN = re.compile(r"copy|transpose|memcpy|memset|nchwtonhwc|nhwctonchw", re.IGNORECASE)
_INSTANCE_SUFFIX = re.compile(r"(\.\d+)+$")
# XLA's own GPU kernels are named after their op with "_N" for ".N"; vendor
# kernels (cuDNN, cuBLAS, CUTLASS) carry template arguments and spaces instead.
_KERNEL_INSTANCE_SUFFIX = re.compile(r"^([A-Za-z][\w.-]*?)(_\d+)+$")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A span of one event on one line, in microseconds since the trace's origin."""

    start: float
    end: float



def op_category(name: str) -> str:
    """An HLO op's name without instance numbers: ``%fusion.12 = f32[2] fusion(...)`` -> ``fusion``.

    Only the instruction name counts (the part before `` = `` of an HLO text), its
    leading ``%`` dropped and every trailing ``.N`` stripped (``add.3.3`` -> ``add``).
    """
    name = name.split(" = ", 1)[0].strip().lstrip("%")
    return _INSTANCE_SUFFIX.sub("", name) or name


def kernel_category(name: str) -> str:
    """A GPU kernel's name without the ``_N`` XLA appends per instance (``loop_add_fusion_3``).

    Names with template arguments, spaces or brackets (library kernels) are kept whole.
    """
    name = op_category(name)
    match = _KERNEL_INSTANCE_SUFFIX.match(name)
    return match.group(1) if match else name


def is_copy(category: str) -> bool:
    """Whether an op category or kernel name moves data rather than computes (copy, transpose)."""
    return bool(_COPY_PATTERN.search(category))


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint intervals (touching ones merged)."""
    merged: list[Interval] = []
    for iv in sorted(intervals, key=lambda iv: (iv.start, iv.end)):
        if merged and iv.start <= merged[-1].end:
            if iv.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, iv.end)
        else:
            merged.append(iv)
    return merged


def union_length(intervals: Iterable[Interval]) -> float:
    """Total length covered by ``intervals``, overlaps counted once."""
    return sum(iv.end - iv.start for iv in merge_intervals(intervals))


def clip(interval: Interval, window: Interval) -> Interval | None:
    """``interval`` cut to ``window``; None when they do not overlap (touching is no overlap)."""
    start, end = max(interval.start, window.start), min(interval.end, window.end)
    if end < start or (end == start and interval.end > interval.start):
        return None
    return Interval(start, end)


def self_times(intervals: Sequence[Interval]) -> list[float]:
    """Each interval's length less the parts covered by intervals nested directly in it.

    ``intervals`` are the events of one line, which a sequential line nests
    properly (a ``while`` op around its body's ops); a child that sticks out of
    its parent is charged to it only where they overlap.
    """
    order = sorted(range(len(intervals)), key=lambda i: (intervals[i].start, -intervals[i].end))
    own = [iv.end - iv.start for iv in intervals]
    stack: list[int] = []
    for i in order:
        iv = intervals[i]
        while stack and intervals[stack[-1]].end <= iv.start:
            stack.pop()
        if stack:
            parent = intervals[stack[-1]]
            own[stack[-1]] -= min(iv.end, parent.end) - iv.start
        stack.append(i)
    return [max(t, 0.0) for t in own]


@dataclasses.dataclass(frozen=True)
class Event:
    """A complete event on its line: process and thread names, ``(pid, tid)``, name, span, args."""

    process: str
    thread: str
    key: tuple[Any, Any]  # (pid, tid)
    name: str
    span: Interval
    args: Mapping[str, Any]


def trace_events(trace: Mapping[str, Any] | Sequence[Any]) -> list[dict[str, Any]]:
    """The ``traceEvents`` list of a trace object (a bare list is a trace too, as Chrome reads it)."""
    events = trace if isinstance(trace, list) else trace.get("traceEvents")
    if not isinstance(events, list):
        raise ValueError("not a trace: expected an object with a 'traceEvents' list")
    return events


def complete_events(events: Sequence[Any]) -> list[Event]:
    """The complete ("X") events, each named by its process and thread metadata."""
    processes: dict[Any, str] = {}
    threads: dict[tuple[Any, Any], str] = {}
    for event in events:
        if isinstance(event, dict) and event.get("ph") == "M":
            name = (event.get("args") or {}).get("name")
            if event.get("name") == "process_name" and name is not None:
                processes[event.get("pid")] = str(name)
            elif event.get("name") == "thread_name" and name is not None:
                threads[(event.get("pid"), event.get("tid"))] = str(name)
    out = []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue  # JAX's traces end with an empty {}; flows and counters are not spans
        try:
            start, duration = float(event["ts"]), float(event.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"trace event {index} ({event.get('name')!r}): a complete event needs "
                             f"numeric 'ts' and 'dur' in microseconds, got {event!r}") from None
        pid, tid = event.get("pid"), event.get("tid")
        out.append(Event(process=processes.get(pid, f"pid {pid}"),
                          thread=threads.get((pid, tid), f"tid {tid}"), key=(pid, tid),
                          name=str(event.get("name", "")), span=Interval(start, start + duration),
                          args=event["args"] if isinstance(event.get("args"), dict) else {}))
    return out



def load_trace(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a trace JSON file, gzipped when its name ends in ``.gz``.

    Raises:
      FileNotFoundError: no such file; ValueError: not JSON or no ``traceEvents`` list
        (both naming the file).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trace file there")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            trace = json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON trace ({e})") from None
    if isinstance(trace, list):
        trace = {"traceEvents": trace}
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError(f"{path}: not a trace: expected an object with a 'traceEvents' list")
    return trace



def find_trace_file(log_dir: str | os.PathLike) -> pathlib.Path:
    """The trace of the newest profile under ``log_dir``: ``plugins/profile/<run>/``'s
    ``perfetto_trace.json.gz``, else its ``*.trace.json.gz``.

    Raises:
      FileNotFoundError: naming the directory searched, when there is none.
    """
    root = pathlib.Path(log_dir) / "plugins" / "profile"
    runs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"{root}: no profile run directory; did jax.profiler write one?")
    newest = max(runs, key=lambda d: d.stat().st_mtime)
    candidates = [newest / "perfetto_trace.json.gz", *sorted(newest.glob("*.trace.json.gz"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{newest}: no perfetto_trace.json.gz or *.trace.json.gz in the "
                            "newest profile run")

