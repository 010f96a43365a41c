"""Where a step's time goes: profile it under ``jax.profiler`` and summarise the trace as text.

:func:`profile_step` runs a step a few times inside ``jax.profiler.trace``
and reads back the Chrome/Perfetto trace it writes; :func:`summarize_trace`
turns the trace's events into a :class:`TraceSummary` and
:func:`format_summary` prints it, so no TensorBoard is needed.

Which lines of the trace (:mod:`hrnet_jax.trace_events`) hold the device's
work depends on the backend:

* GPU (and TPU): processes named ``/device:GPU:0`` and so on, with a line per
  CUDA stream (``Stream #N(...)``: kernels and memory copies as they ran on the
  device) and, where the profiler derives them, ``XLA Ops`` (one event per HLO
  op) and ``XLA Modules`` (one event per program execution).
* CPU: one ``/host:CPU`` process whose worker threads (``tf_XLAEigen/...``,
  ``tf_XLAPjRtCpuClient/...``) carry one event per executed HLO op, marked by
  ``args.hlo_op``, ``args.hlo_module`` and ``args.run_id`` (one run id per
  program execution), among the runtime's own bookkeeping events.

Op events are ranked by category (:func:`~hrnet_jax.trace_events.op_category`).
Op times are self times: an op event that contains others on its line (a
``while`` around its body) counts only the time its children leave.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hrnet_jax.trace_events import (
    Event,
    Interval,
    clip,
    complete_events,
    find_trace_file,
    is_copy,
    kernel_category,
    load_trace,
    merge_intervals,
    op_category,
    self_times,
    trace_events,
    union_length,
)

# Names of the annotations profile_step puts around the profiled calls.
WINDOW_ANNOTATION = "hrnet_jax.profile.window"
CALL_ANNOTATION = "hrnet_jax.profile.call"

_DEVICE_PROCESS = re.compile(r"/device:(?!CPU)", re.IGNORECASE)
# Gaps shorter than 10 us are about a kernel launch's latency; longer ones mean
# the device waited for the host (dispatch, Python) or for a transfer.
GAP_EDGES_US = (10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class LineStats:
    """One (process, thread) line's events that overlap the window.

    ``total_us`` sums their durations clipped to the window; ``busy_us`` is the
    length of their union (nested or overlapping events counted once).
    """

    process: str
    thread: str
    events: int
    total_us: float
    busy_us: float


@dataclasses.dataclass(frozen=True)
class OpStats:
    """One op category (or kernel name) over the whole window: event count and summed self time."""

    category: str
    count: int
    self_us: float


@dataclasses.dataclass(frozen=True)
class ModuleStats:
    """Executions of one XLA program and their summed span (first op start to last op end)."""

    name: str
    executions: int
    span_us: float


@dataclasses.dataclass(frozen=True)
class Gaps:
    """Idle stretches of the device within the window, in microseconds.

    ``between`` counts the gaps between consecutive stretches of device work
    and ``total_between_us`` sums them; ``by_size`` splits them at
    :data:`GAP_EDGES_US` into ``(count, total_us)`` per size class, shortest
    first. ``leading_us`` is the idle time from the window's start to the first
    event, ``trailing_us`` from the last to the end.
    """

    between: int
    total_between_us: float
    largest_us: float
    leading_us: float
    trailing_us: float
    by_size: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True)
class TraceSummary:
    """Where the time of ``steps`` profiled steps went; all times in microseconds, all steps summed.

    ``op_source`` names the lines whose events are ranked as ops, ``activity_source``
    those whose union is the device's busy time (on a GPU the CUDA streams, where
    kernels and copies actually ran; elsewhere the op lines). ``kernels`` ranks
    stream events by kernel name (GPU only; empty otherwise). ``note`` says what
    is missing, such as a trace without per-op events.
    """

    steps: int
    window: Interval
    host_call_us: float | None  # time inside the profiled step calls on the host (dispatch)
    op_source: str
    op_events: int
    op_self_us: float
    activity_source: str
    activity_events: int
    busy_us: float
    gaps: Gaps
    ops: tuple[OpStats, ...]  # by self time, largest first
    kernels: tuple[OpStats, ...]
    modules: tuple[ModuleStats, ...]
    lines: tuple[LineStats, ...]
    note: str | None = None

    @property
    def wall_us(self) -> float:
        return self.window.end - self.window.start

    @property
    def copy_us(self) -> float:
        """Self time of op categories that copy or transpose data."""
        return sum(op.self_us for op in self.ops if is_copy(op.category))

    @property
    def copy_count(self) -> int:
        return sum(op.count for op in self.ops if is_copy(op.category))




def gaps_in(window: Interval, busy: Sequence[Interval]) -> Gaps:
    """The idle stretches of ``window`` around ``busy`` (sorted, disjoint, inside the window)."""
    between = [b.start - a.end for a, b in zip(busy, busy[1:], strict=False)]
    by_size = []
    for low, high in zip((0.0, *GAP_EDGES_US), (*GAP_EDGES_US, math.inf), strict=True):
        sized = [g for g in between if low <= g < high]
        by_size.append((len(sized), sum(sized)))
    if not busy:
        return Gaps(0, 0.0, 0.0, window.end - window.start, 0.0, tuple(by_size))
    return Gaps(between=len(between), total_between_us=sum(between),
                largest_us=max(between, default=0.0), leading_us=busy[0].start - window.start,
                trailing_us=window.end - busy[-1].end, by_size=tuple(by_size))




def _window(events: Sequence[Event], window_name: str | None) -> Interval:
    if window_name is None:
        if not events:
            raise ValueError("the trace has no complete events")
        return Interval(min(e.span.start for e in events), max(e.span.end for e in events))
    marks = [e.span for e in events if e.name == window_name]
    if not marks:
        raise ValueError(f"the trace has no {window_name!r} event to mark the profiled window")
    return Interval(min(m.start for m in marks), max(m.end for m in marks))


def _line_label(process: str, thread: str) -> str:
    return f"{process} / {thread}"


def _select_lines(events: Sequence[Event]) -> tuple[list[Event], str, list[Event], str, bool]:
    """(op events, their source, activity events, their source, activity is CUDA streams)."""
    device = [e for e in events if _DEVICE_PROCESS.search(e.process)]
    op_lines = [e for e in device if e.thread.strip().lower() == "xla ops"]
    streams = [e for e in device if e.thread.strip().lower().startswith("stream")]
    if op_lines or streams:
        ops, activity = op_lines or streams, streams or op_lines
        return (ops, _sources(ops), activity, _sources(activity), bool(streams))
    tagged = [e for e in events if "hlo_op" in e.args]
    return tagged, _sources(tagged, threads=False), tagged, _sources(tagged, threads=False), False


def _sources(events: Sequence[Event], threads: bool = True) -> str:
    if not threads:
        processes = sorted({e.process for e in events})
        count = len({e.key for e in events})
        return (f"events with args.hlo_op in {', '.join(processes)} ({count} threads)"
                if events else "none")
    return ", ".join(sorted({_line_label(e.process, e.thread) for e in events})) or "none"


def _category(event: Event) -> str:
    """An op event's category: its name on ``XLA Ops``, else its ``hlo_op``, else its kernel's."""
    if event.thread.strip().lower() == "xla ops":
        return op_category(event.name)
    if "hlo_op" in event.args:
        return op_category(str(event.args["hlo_op"]))
    return kernel_category(event.name)


def _ranked(named: Iterable[tuple[str, float]]) -> tuple[OpStats, ...]:
    count: dict[str, int] = defaultdict(int)
    total: dict[str, float] = defaultdict(float)
    for category, us in named:
        count[category] += 1
        total[category] += us
    return tuple(sorted((OpStats(c, count[c], total[c]) for c in count),
                        key=lambda op: (-op.self_us, op.category)))


def _with_self_times(events: Sequence[Event]) -> list[tuple[Event, float]]:
    """Each event with its self time on its own line (events already clipped)."""
    by_line: dict[tuple[Any, Any], list[Event]] = defaultdict(list)
    for e in events:
        by_line[e.key].append(e)
    out = []
    for line in by_line.values():
        out += zip(line, self_times([e.span for e in line]), strict=True)
    return out


def _modules(device_events: Sequence[Event], op_events: Sequence[Event]) -> tuple[ModuleStats, ...]:
    """Program executions: the ``XLA Modules`` lines, else op events grouped by ``args.run_id``."""
    module_events = [e for e in device_events if e.thread.strip().lower() == "xla modules"]
    spans: dict[str, list[float]] = defaultdict(list)
    if module_events:
        for e in module_events:
            spans[op_category(re.sub(r"\(\d+\)$", "", e.name))].append(e.span.end - e.span.start)
    else:
        runs: dict[tuple[str, str], list[Interval]] = defaultdict(list)
        for e in op_events:
            if "run_id" in e.args:
                runs[(str(e.args.get("hlo_module", "?")), str(e.args["run_id"]))].append(e.span)
        for (module, _), intervals in runs.items():
            spans[module].append(max(iv.end for iv in intervals) - min(iv.start for iv in intervals))
    return tuple(sorted((ModuleStats(name, len(s), sum(s)) for name, s in spans.items()),
                        key=lambda m: (-m.span_us, m.name)))


def _line_stats(events: Iterable[Event]) -> tuple[LineStats, ...]:
    by_line: dict[tuple[Any, Any], list[Event]] = defaultdict(list)
    for e in events:
        by_line[e.key].append(e)
    return tuple(sorted(
        (LineStats(process=line[0].process, thread=line[0].thread, events=len(line),
                   total_us=sum(e.span.end - e.span.start for e in line),
                   busy_us=union_length(e.span for e in line)) for line in by_line.values()),
        key=lambda s: (s.process, -s.busy_us, s.thread)))


def _note(ops: Sequence[Event], activity: Sequence[Event], outside: int) -> str | None:
    """What the summary cannot tell; ``outside``: op events in the whole trace when none inside."""
    if outside:
        return (f"all {outside} op events lie outside the profiled window (are the device's and "
                "the host's clocks apart?)")
    if not ops:
        return ("the trace has no per-op events (no device 'XLA Ops' or 'Stream' lines and no "
                "events with args.hlo_op), so device busy time and ops cannot be reported")
    devices = len({e.process for e in activity})
    if devices > 1:
        return f"{devices} device processes: busy time is the union over them and op times their sum"
    return None


def summarize_trace(trace: Mapping[str, Any] | Sequence[Any], *, steps: int,
                    window_name: str | None = None, call_name: str | None = None) -> TraceSummary:
    """Summarises a Chrome/Perfetto trace of ``steps`` calls of a step.

    Args:
      trace: the trace object (``{"traceEvents": [...]}``), as :func:`load_trace` reads it.
      steps: how many step calls the window holds; the formatter divides by it.
      window_name: the name of the event(s) spanning the profiled calls (the
        earliest start to the latest end); None: all complete events. Events are
        clipped to the window and those outside it are dropped; the marking
        events themselves are left out of the line statistics.
      call_name: the name of the host events around each call, whose summed
        duration is the host's dispatch time; None: not reported.

    Returns:
      A :class:`TraceSummary`; its times are microseconds summed over all steps.

    Raises:
      ValueError: not a trace, a complete event without numeric times, or no
        ``window_name`` event.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    events = complete_events(trace_events(trace))
    window = _window(events, window_name)
    inside = []
    for e in events:
        span = clip(e.span, window)
        if span is not None:
            inside.append(dataclasses.replace(e, span=span))

    ops, op_source, activity, activity_source, streams = _select_lines(inside)
    with_self = _with_self_times(ops)
    kernels = (_ranked((kernel_category(e.name), us) for e, us in _with_self_times(activity))
               if streams else ())
    busy = merge_intervals(e.span for e in activity)
    calls = [e.span for e in inside if call_name is not None and e.name == call_name]
    return TraceSummary(
        steps=steps, window=window,
        host_call_us=sum(iv.end - iv.start for iv in calls) if call_name is not None else None,
        op_source=op_source, op_events=len(ops), op_self_us=sum(us for _, us in with_self),
        activity_source=activity_source, activity_events=len(activity),
        busy_us=sum(iv.end - iv.start for iv in busy), gaps=gaps_in(window, busy),
        ops=_ranked((_category(e), us) for e, us in with_self), kernels=kernels,
        modules=_modules([e for e in inside if _DEVICE_PROCESS.search(e.process)], ops),
        lines=_line_stats(e for e in inside if e.name != window_name),
        note=_note(ops, activity, outside=len(_select_lines(events)[0]) if not ops else 0))


def summarize_file(path: str | os.PathLike, **kwargs: Any) -> TraceSummary:
    """:func:`summarize_trace` of the trace in ``path``; errors name the file."""
    trace = load_trace(path)
    try:
        return summarize_trace(trace, **kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- profiling


@dataclasses.dataclass(frozen=True)
class Profile:
    """A profiled run: its summary and the raw trace file it came from."""

    summary: TraceSummary
    trace_path: pathlib.Path


def profile_step(fn: Callable, args: Sequence[Any], *, steps: int, warmup: int,
                 log_dir: str | os.PathLike, carry_first: bool = False,
                 python_tracer: bool = False) -> Profile:
    """Calls ``fn(*args)`` ``warmup`` times untimed, then ``steps`` times under the profiler.

    The profiled calls are marked by :data:`WINDOW_ANNOTATION` (which ends after
    blocking on their results, so the device's work lies inside it) and each by
    :data:`CALL_ANNOTATION`. The trace (and a Perfetto copy) stays under
    ``log_dir/plugins/profile/<run>/``.

    Args:
      fn: the step, compiled or not (compile first, so compilation is not profiled).
      args: its arguments.
      steps: profiled calls (positive); ``warmup``: untimed calls before them.
      log_dir: where ``jax.profiler`` writes the trace.
      carry_first: the first output is the next call's first argument (a train state).
      python_tracer: also trace Python function calls (slows the host down, so off by default).
    """
    import jax

    if steps <= 0 or warmup < 0:
        raise ValueError(f"need steps > 0 and warmup >= 0, got steps={steps}, warmup={warmup}")
    args = tuple(args)

    def call(fn_: Callable, calls: int) -> Any:
        nonlocal args
        out = None
        for _ in range(calls):
            out = fn_(*args)
            if carry_first:
                args = (out[0], *args[1:])
        return out

    def annotated(*call_args: Any) -> Any:
        with jax.profiler.TraceAnnotation(CALL_ANNOTATION):
            return fn(*call_args)

    jax.block_until_ready((call(fn, warmup), args))
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 1 if python_tracer else 0
    os.makedirs(log_dir, exist_ok=True)
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True, profiler_options=options):
        with jax.profiler.TraceAnnotation(WINDOW_ANNOTATION):
            jax.block_until_ready((call(annotated, steps), args))
    path = find_trace_file(log_dir)
    summary = summarize_file(path, steps=steps, window_name=WINDOW_ANNOTATION,
                             call_name=CALL_ANNOTATION)
    return Profile(summary=summary, trace_path=path)


# --------------------------------------------------------------------------- reporting


def _ms(us: float, steps: int) -> str:
    return f"{us / steps / 1e3:.3f}"


def _table(rows: Sequence[OpStats], steps: int, total_us: float, top: int) -> list[str]:
    lines = [f"  {'ms/step':>9} {'%':>6} {'n/step':>8} {'us/each':>9}  name"]
    for op in rows[:top]:
        share = 100 * op.self_us / total_us if total_us else 0.0
        name = op.category if len(op.category) <= 100 else op.category[:97] + "..."
        lines.append(f"  {op.self_us / steps / 1e3:9.3f} {share:5.1f}% {op.count / steps:8.1f} "
                     f"{op.self_us / op.count:9.1f}  {name}")
    if len(rows) > top:
        rest = rows[top:]
        lines.append(f"  {sum(op.self_us for op in rest) / steps / 1e3:9.3f} "
                     f"{100 * sum(op.self_us for op in rest) / total_us if total_us else 0:5.1f}% "
                     f"{sum(op.count for op in rest) / steps:8.1f} {'':>9}  "
                     f"({len(rest)} more)")
    return lines


def format_summary(summary: TraceSummary, *, top: int = 25) -> str:
    """The summary as text: per step wall, host and device time, gaps, top ops and the busiest lines."""
    s, n = summary, summary.steps
    wall = s.wall_us
    out = [f"wall: {_ms(wall, n)} ms/step ({wall / 1e3:.3f} ms for {n} steps, from the first "
           "call to the results being ready)"]
    if s.host_call_us is not None:
        out.append(f"host: {_ms(s.host_call_us, n)} ms/step inside the step calls (dispatch; "
                   f"{100 * s.host_call_us / wall:.1f}% of wall)")
    if s.note:
        out.append(f"note: {s.note}")
    if s.op_events:
        g = s.gaps
        edges = (0.0, *GAP_EDGES_US)
        sizes = ", ".join(
            f"{count / n:.1f} {f'{low:g}-{high:g}' if high else f'>={low:g}'} us ({_ms(us, n)} ms)"
            for (count, us), low, high in zip(g.by_size, edges, (*GAP_EDGES_US, None),
                                              strict=True))
        if s.activity_source == s.op_source:
            out.append(f"ops and device activity from: {s.op_source}")
        else:
            out += [f"device activity from: {s.activity_source}", f"ops from: {s.op_source}"]
        out += [
            f"device: busy {_ms(s.busy_us, n)} ms/step ({100 * s.busy_us / wall:.1f}% of wall), "
            f"idle {_ms(wall - s.busy_us, n)} ms/step; {s.activity_events / n:.1f} device "
            "events/step",
            f"idle: {_ms(g.leading_us, n)} ms/step before the first event, "
            f"{_ms(g.trailing_us, n)} ms/step after the last, {_ms(g.total_between_us, n)} ms/step "
            f"in {g.between / n:.1f} gaps/step between events (largest {g.largest_us / 1e3:.3f} "
            "ms)",
            f"gaps/step by size: {sizes}",
            f"ops: {s.op_events / n:.1f}/step, self time {_ms(s.op_self_us, n)} ms/step"
            + (f" ({s.op_self_us / s.busy_us:.2f} x busy: ops ran concurrently)"
               if s.busy_us and s.op_self_us > 1.05 * s.busy_us else ""),
            f"copies/transposes: {_ms(s.copy_us, n)} ms/step "
            f"({100 * s.copy_us / s.op_self_us if s.op_self_us else 0:.1f}% of op time) in "
            f"{s.copy_count / n:.1f} ops/step",
        ]
    for m in s.modules:
        out.append(f"program {m.name}: {m.executions / n:.1f} executions/step, "
                   f"{_ms(m.span_us, n)} ms/step from its start to its end")
    if s.ops:
        out.append(f"top {min(top, len(s.ops))} of {len(s.ops)} op categories by self time:")
        out += _table(s.ops, n, s.op_self_us, top)
    if s.kernels:
        kernel_us = sum(k.self_us for k in s.kernels)
        copies = sum(k.self_us for k in s.kernels if is_copy(k.category))
        out.append(f"kernels: copies/transposes {_ms(copies, n)} ms/step "
                   f"({100 * copies / kernel_us if kernel_us else 0:.1f}% of kernel time); "
                   f"top {min(top, len(s.kernels))} of {len(s.kernels)} by time:")
        out += _table(s.kernels, n, kernel_us, top)
    # A GPU host has many threads; the busiest lines say where the time went.
    busiest = sorted(s.lines, key=lambda line: -line.busy_us)[:top]
    out.append(f"busiest {len(busiest)} of {len(s.lines)} lines (process / thread: events/step, "
               "summed ms/step, busy ms/step):")
    for line in busiest:
        out.append(f"  {_line_label(line.process, line.thread)}: {line.events / n:.1f}, "
                   f"{_ms(line.total_us, n)}, {_ms(line.busy_us, n)}")
    return "\n".join(out)
