"""The trace summariser on hand-made traces, a real profile on the CPU, and the script's flags."""

import gzip
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from conftest import SHALLOW_OVERRIDES, load_script
from hrnet_jax import profiling
from hrnet_jax.profiling import Interval


def _meta(pid, name, tid=None):
    if tid is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _x(pid, tid, name, ts, dur, **args):
    event = {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}
    if args:
        event["args"] = args
    return event


def _op(tid, name, ts, dur, run_id="1"):
    return _x(1, tid, name, ts, dur, hlo_op=name, hlo_module="jit_step", run_id=run_id)


# A CPU-like trace: op events marked by args.hlo_op on two worker threads of one
# host process, a window of [100, 200] us holding 2 steps, events outside it.
CPU_TRACE = {"traceEvents": [
    _meta(1, "/host:CPU"), _meta(1, "python", 10), _meta(1, "worker-a", 20),
    _meta(1, "worker-b", 21),
    _x(1, 10, "setup", 0, 50),                  # before the window: dropped
    _x(1, 10, "window", 100, 100),
    _x(1, 10, "call", 100, 10), _x(1, 10, "call", 150, 6),
    _op(20, "fusion.1", 110, 20),
    _op(20, "while.2", 140, 30), _op(20, "add.3.3", 145, 10),  # nested: while's self time is 20
    _op(21, "copy.5", 120, 20),                 # overlaps fusion.1 on the other thread
    _x(1, 21, "ThreadpoolListener::Record", 180, 2),
    _op(21, "fusion.7", 190, 20, run_id="2"),   # sticks out of the window: 10 inside
    _op(20, "fusion.9", 300, 10, run_id="3"),   # after the window: dropped
    _x(1, 99, "misc", 160, 4),                  # a thread without a name
    {},                                         # JAX's traces end with an empty event
]}


@pytest.fixture(scope="module")
def cpu_summary():
    return profiling.summarize_trace(CPU_TRACE, steps=2, window_name="window", call_name="call")


def test_window_spans_the_marking_event_and_host_time_sums_the_calls(cpu_summary):
    assert cpu_summary.window == Interval(100, 200)
    assert cpu_summary.wall_us == 100
    assert cpu_summary.host_call_us == 16


def test_ops_are_the_hlo_op_events_inside_the_window(cpu_summary):
    # fusion.1, while.2, add.3.3, copy.5 and the clipped fusion.7; not fusion.9.
    assert cpu_summary.op_events == 5
    assert "/host:CPU" in cpu_summary.op_source


def test_busy_time_is_the_union_of_op_intervals_clipped_to_the_window(cpu_summary):
    # [110,130] u [120,140] u [140,170] u [145,155] = [110,170]; plus [190,200].
    assert cpu_summary.busy_us == pytest.approx(70)
    gaps = cpu_summary.gaps
    assert (gaps.leading_us, gaps.trailing_us) == (10, 0)
    assert (gaps.between, gaps.total_between_us, gaps.largest_us) == (1, 20, 20)
    assert gaps.by_size == ((0, 0.0), (1, 20.0), (0, 0.0))  # 20 us is in [10, 100)


def test_op_categories_strip_instance_numbers_and_count_self_time(cpu_summary):
    # fusion: 20 + 10 (clipped); copy: 20; while: 30 less the nested add's 10; add: 10.
    assert [(op.category, op.count, op.self_us) for op in cpu_summary.ops] == [
        ("fusion", 2, 30), ("copy", 1, 20), ("while", 1, 20), ("add", 1, 10)]
    assert cpu_summary.op_self_us == pytest.approx(80)
    assert (cpu_summary.copy_us, cpu_summary.copy_count) == (20, 1)
    assert cpu_summary.kernels == ()


def test_every_line_is_reported_with_its_events_inside_the_window(cpu_summary):
    lines = {(line.process, line.thread): (line.events, line.total_us, line.busy_us)
             for line in cpu_summary.lines}
    assert lines == {
        ("/host:CPU", "python"): (2, 16, 16),        # the calls; not setup, not the window
        ("/host:CPU", "worker-a"): (3, 60, 50),       # 20 + 30 + 10; [110,130] u [140,170]
        ("/host:CPU", "worker-b"): (3, 32, 32),
        ("/host:CPU", "tid 99"): (1, 4, 4),
    }
    assert [line.thread for line in cpu_summary.lines] == ["worker-a", "worker-b", "python",
                                                           "tid 99"]


def test_program_executions_come_from_run_ids_on_the_cpu(cpu_summary):
    # Run 1 spans [110, 170], run 2 the clipped [190, 200]; run 3 lies outside.
    (module,) = cpu_summary.modules
    assert (module.name, module.executions, module.span_us) == ("jit_step", 2, 70)


def test_the_text_summary_gives_figures_per_step(cpu_summary):
    text = profiling.format_summary(cpu_summary, top=2)
    assert "wall: 0.050 ms/step" in text                # 100 us over 2 steps
    assert "host: 0.008 ms/step" in text                # 16 us over 2 steps
    assert "busy 0.035 ms/step (70.0% of wall)" in text
    assert "ops: 2.5/step, self time 0.040 ms/step" in text
    assert "copies/transposes: 0.010 ms/step (25.0% of op time)" in text
    assert "gaps/step by size: 0.0 0-10 us (0.000 ms), 0.5 10-100 us (0.010 ms), 0.0 >=100 us" in text
    assert re.search(r"0\.015\s+37\.5%\s+1\.0\s+15\.0  fusion", text)
    assert "(2 more)" in text and "  add" not in text   # top=2 of 4 categories
    # top=2: the two busiest of the four lines, worker-a (50 us) and worker-b (32 us)
    assert "busiest 2 of 4 lines" in text
    assert "/host:CPU / worker-b: 1.5, 0.016, 0.016" in text
    assert "/host:CPU / python" not in text


# A GPU-like trace: a device process with derived 'XLA Modules' and 'XLA Ops'
# lines and two CUDA streams; the host also has an event carrying hlo_op.
GPU_TRACE = {"traceEvents": [
    _meta(1, "/host:CPU"), _meta(1, "python", 1),
    _meta(2, "/device:GPU:0"), _meta(2, "XLA Modules", 1), _meta(2, "XLA Ops", 2),
    _meta(2, "Stream #13(Kernel,MemcpyD2D)", 3), _meta(2, "Stream #14(MemcpyH2D)", 4),
    _x(1, 1, "window", 0, 1000),
    _x(1, 1, "ThunkLaunch", 10, 5, hlo_op="fusion.1"),
    _x(2, 1, "jit_train_step(42)", 100, 800),
    _x(2, 2, "fusion.1", 100, 200),
    _x(2, 2, "%convolution.4 = bf16[2,8]{1,0} custom-call(bf16[2,8] %p)", 300, 400),
    _x(2, 2, "copy.2", 750, 50),
    _x(2, 3, "loop_fusion_1", 100, 50, hlo_op="fusion.1"),
    _x(2, 3, "loop_fusion_1", 160, 140, hlo_op="fusion.1"),
    _x(2, 3, "sm90_xmma_fprop<bf16>(Params)", 300, 350, hlo_op="convolution.4"),
    _x(2, 3, "nchwToNhwcKernel", 650, 50, hlo_op="convolution.4"),
    _x(2, 3, "MemcpyD2D", 750, 50),
    _x(2, 4, "MemcpyH2D", 600, 160),
]}


@pytest.fixture(scope="module")
def gpu_summary():
    return profiling.summarize_trace(GPU_TRACE, steps=1, window_name="window")


def test_on_a_gpu_ops_come_from_xla_ops_and_busy_time_from_the_streams(gpu_summary):
    assert gpu_summary.op_source == "/device:GPU:0 / XLA Ops"
    assert "Stream #13" in gpu_summary.activity_source
    assert "Stream #14" in gpu_summary.activity_source
    assert gpu_summary.op_events == 3                   # not the host's ThunkLaunch
    assert gpu_summary.activity_events == 6
    # [100,150]; [160,300] u [300,650] u [650,700] u [600,760] u [750,800] = [160,800].
    assert gpu_summary.busy_us == pytest.approx(50 + 640)
    gaps = gpu_summary.gaps
    assert (gaps.leading_us, gaps.between, gaps.total_between_us, gaps.trailing_us) == (
        100, 1, 10, 200)
    assert gaps.by_size == ((0, 0.0), (1, 10.0), (0, 0.0))  # 10 us is the second class


def test_gpu_ops_and_kernels_are_ranked_by_name(gpu_summary):
    assert [(op.category, op.count, op.self_us) for op in gpu_summary.ops] == [
        ("convolution", 1, 400), ("fusion", 1, 200), ("copy", 1, 50)]
    assert [(k.category, k.count, k.self_us) for k in gpu_summary.kernels] == [
        ("sm90_xmma_fprop<bf16>(Params)", 1, 350), ("loop_fusion", 2, 190),
        ("MemcpyH2D", 1, 160), ("MemcpyD2D", 1, 50), ("nchwToNhwcKernel", 1, 50)]
    (module,) = gpu_summary.modules
    assert (module.name, module.executions, module.span_us) == ("jit_train_step", 1, 800)
    text = profiling.format_summary(gpu_summary)
    # Kernel copies: MemcpyH2D 160 + MemcpyD2D 50 + nchwToNhwc 50 of 800 us.
    assert "kernels: copies/transposes 0.260 ms/step (32.5% of kernel time)" in text


def test_without_xla_ops_the_stream_events_are_the_ops():
    trace = {"traceEvents": [
        _meta(2, "/device:GPU:0"), _meta(2, "Stream #7(Kernel)", 3), _meta(2, "CUPTI overhead", 5),
        _x(2, 3, "loop_add_fusion_3", 0, 30, hlo_op="fusion.3"),
        _x(2, 3, "loop_add_fusion_4", 40, 20),      # no hlo_op (a command buffer): its name
        _x(2, 3, "loop_add_fusion_5", 70, 30),
        _x(2, 5, "overhead", 0, 100),                # not a stream: not device work
    ]}
    summary = profiling.summarize_trace(trace, steps=2)
    assert summary.op_source == summary.activity_source == "/device:GPU:0 / Stream #7(Kernel)"
    assert [(op.category, op.count, op.self_us) for op in summary.ops] == [
        ("loop_add_fusion", 2, 50), ("fusion", 1, 30)]
    assert summary.busy_us == 80 and summary.gaps.between == 2
    assert [(k.category, k.count) for k in summary.kernels] == [("loop_add_fusion", 3)]


def test_a_trace_without_op_events_says_so():
    trace = {"traceEvents": [_meta(1, "/host:CPU"), _meta(1, "python", 1),
                             _x(1, 1, "a", 0, 30), _x(1, 1, "b", 50, 50)]}
    summary = profiling.summarize_trace(trace, steps=1)
    assert summary.window == Interval(0, 100)          # no window name: all events
    assert summary.op_events == 0 and summary.ops == ()
    assert "no per-op events" in summary.note
    text = profiling.format_summary(summary)
    assert "no per-op events" in text and "device: busy" not in text


def test_op_events_all_outside_the_window_are_called_out():
    trace = {"traceEvents": [_meta(1, "/host:CPU"), _x(1, 1, "window", 0, 10),
                             _op(2, "fusion.1", 20, 5), _op(2, "fusion.2", 30, 5)]}
    summary = profiling.summarize_trace(trace, steps=1, window_name="window")
    assert summary.op_events == 0
    assert "all 2 op events lie outside the profiled window" in summary.note


@pytest.mark.parametrize("name, category", [
    ("fusion.123", "fusion"), ("add.3.3", "add"), ("loop_add_fusion", "loop_add_fusion"),
    ("%cudnn-conv.1 = (bf16[2]{0}, u8[0]{0}) custom-call(bf16[2]{0} %p)", "cudnn-conv"),
    ("ynn_fusion.12", "ynn_fusion"), ("wrapped_sine", "wrapped_sine")])
def test_op_category_drops_instance_numbers(name, category):
    assert profiling.op_category(name) == category


@pytest.mark.parametrize("name, category", [
    ("loop_add_fusion_3", "loop_add_fusion"), ("input_reduce_fusion_12_1", "input_reduce_fusion"),
    ("void cutlass::Kernel<Gemm_1>(Params)", "void cutlass::Kernel<Gemm_1>(Params)"),
    ("sm90_xmma_gemm_128x128", "sm90_xmma_gemm_128x128")])
def test_kernel_category_drops_xlas_instance_suffix_only(name, category):
    assert profiling.kernel_category(name) == category


def test_self_times_subtract_nested_events_once():
    # A [0,100] holds B [10,40] which holds C [20,30]; D [50,60] is A's other child.
    spans = [Interval(0, 100), Interval(10, 40), Interval(20, 30), Interval(50, 60)]
    assert profiling.self_times(spans) == [60, 20, 10, 10]


def test_a_missing_window_event_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no 'window' event"):
        profiling.summarize_trace({"traceEvents": [_x(1, 1, "a", 0, 1)]}, steps=1,
                                  window_name="window")


def test_a_complete_event_without_a_timestamp_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"trace event 0 \('a'\).*numeric 'ts'"):
        profiling.summarize_trace({"traceEvents": [{"ph": "X", "name": "a", "dur": 1}]}, steps=1)


def test_unreadable_or_missing_trace_files_are_named(tmp_path):
    broken = tmp_path / "broken.trace.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="broken.trace.json.gz"):
        profiling.load_trace(broken)
    no_events = tmp_path / "plain.json"
    no_events.write_text(json.dumps({"events": []}))
    with pytest.raises(ValueError, match="plain.json.*traceEvents"):
        profiling.load_trace(no_events)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        profiling.load_trace(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="plugins"):
        profiling.find_trace_file(tmp_path)


def test_summarize_file_reads_a_gzipped_trace_and_names_it_in_errors(tmp_path):
    path = tmp_path / "host.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(CPU_TRACE, f)
    assert profiling.summarize_file(path, steps=2, window_name="window").busy_us == 70
    with pytest.raises(ValueError, match="host.trace.json.gz.*'absent'"):
        profiling.summarize_file(path, steps=2, window_name="absent")


def test_profiling_a_donating_step_carries_its_state(tmp_path):
    def add(state, x):
        return state + x, jnp.sum(state)

    step = jax.jit(add, donate_argnums=0)
    profile = profiling.profile_step(step, (jnp.zeros(4), jnp.ones(4)), steps=3, warmup=2,
                                     log_dir=tmp_path, carry_first=True)
    assert profile.trace_path.is_file() and tmp_path in profile.trace_path.parents
    summary = profile.summary
    assert summary.steps == 3 and summary.wall_us > 0
    assert 0 < summary.host_call_us <= summary.wall_us


def test_the_script_profiles_a_tiny_eval_step_on_the_cpu(tmp_path, capsys):
    code = load_script("profile_step").main([
        "--config", "hrnet_w8", "--dtype", "fp32", "--batch-size", "2", "--image-size", "64",
        "--step", "eval", "--steps", "2", "--warmup", "1", "--logdir", str(tmp_path),
        "--compilation-cache", "none", "--top", "5", *(f"--set={o}" for o in SHALLOW_OVERRIDES)])
    out = capsys.readouterr().out
    assert code == 0
    assert "compiling ..." in out and "compiled in" in out
    trace = pathlib.Path(re.search(r"^trace: (.+)$", out, re.MULTILINE).group(1))
    assert tmp_path in trace.parents and trace.is_file()
    assert "top 5 of" in out and "lines (process / thread" in out
    summary = profiling.summarize_file(trace, steps=2, window_name=profiling.WINDOW_ANNOTATION,
                                       call_name=profiling.CALL_ANNOTATION)
    assert summary.op_events >= 2 * 50                 # a whole HRNet forward, twice
    assert 0 < summary.busy_us <= summary.wall_us
    assert 0 < summary.host_call_us <= summary.wall_us
    assert sum(m.executions for m in summary.modules) == 2
    assert any(op.category.startswith("conv") or "fusion" in op.category for op in summary.ops)
    assert sum(op.count for op in summary.ops) == summary.op_events


def test_keeping_command_buffers_adds_to_the_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=somewhere")
    with pytest.raises(SystemExit):
        load_script("profile_step").main(["--keep-command-buffers", "--steps", "0"])
    assert os.environ["XLA_FLAGS"] == (
        "--xla_dump_to=somewhere --xla_enable_command_buffers_during_profiling=true")


@pytest.mark.parametrize("flags, named", [
    (["--steps", "0"], "timed steps"),
    (["--warmup", "-1"], "warm-up"),
    (["--dtype", "fp16"], "fp16"),
    (["--dtype", "fp32,bf16"], "--dtype"),
    (["--image-size", "100"], "100x100"),
    (["--top", "0"], "--top"),
    (["--set", "model.nope=1"], "model.nope"),
    (["--set", "model.scan=sideways"], "model.scan"),
])
def test_bad_flags_exit_with_code_2_naming_the_flag_before_compiling(flags, named, capsys,
                                                                     monkeypatch):
    from hrnet_jax import benchmark
    from hrnet_jax.train import state

    def no_build(*args, **kwargs):
        raise AssertionError("built a step despite a bad flag")

    monkeypatch.setattr(benchmark, "synthetic_batch", no_build)
    monkeypatch.setattr(state, "init_variables", no_build)
    with pytest.raises(SystemExit) as exit_info:
        load_script("profile_step").main(["--config", "hrnet_w8", *flags])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
