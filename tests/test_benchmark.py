"""The throughput benchmark: records, table and JSON of a tiny run, and its flag checks."""

import json
import re

import pytest

from conftest import SHALLOW_OVERRIDES, load_script
from hrnet_jax import benchmark


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    global HLO_DIR
    path = tmp_path_factory.mktemp("benchmark") / "out" / "bench.json"
    HLO_DIR = path.parent / "hlo"
    LOG.clear()
    records = benchmark.run_benchmark(
        "hrnet_w8", batch_size=2, dtypes="fp32", steps=1, warmup=1, image_size=64,
        overrides=SHALLOW_OVERRIDES, log=LOG.append, hlo_dir=str(HLO_DIR))
    benchmark.write_json(str(path), records)
    return records, json.loads(path.read_text())


def test_each_compiled_program_is_written_as_optimised_hlo(tiny_run):
    hlo = HLO_DIR
    names = sorted(p.name for p in hlo.iterdir())
    assert names == ["hrnet_w8_float32_blocks_eval_flip.hlo.txt",
                     "hrnet_w8_float32_blocks_train.hlo.txt"]
    for name in names:
        text = (hlo / name).read_text()
        assert text.startswith("HloModule ") and "ENTRY " in text and "fusion" in text


def test_each_record_counts_the_operations_its_compiled_program_runs(tiny_run):
    from hrnet_jax.program_census import census

    records, _ = tiny_run
    by_step = {r.step: r for r in records}
    for step, record in by_step.items():
        text = (HLO_DIR / f"hrnet_w8_float32_blocks_{step.replace('+', '_')}.hlo.txt").read_text()
        counted = census(text)
        assert (record.ops_per_step, record.loop_iterations) == (
            counted.operations, counted.loop_iterations)
        # The scanned blocks run as loops.
        assert record.loop_iterations > 0
    # Forward, backward and the optimiser run more than two forward passes.
    assert by_step["train"].ops_per_step > by_step["eval+flip"].ops_per_step


LOG: list[str] = []
HLO_DIR = None  # where the tiny run wrote its programs


def test_each_phase_of_a_measurement_is_logged_as_it_ends(tiny_run):
    # A compile that takes minutes and a slow step must be told apart while they run.
    phases = [r"hrnet_w8 float32 {step} step: compiling and timing",
              r"  traced and lowered in \d+\.\d s; compiling",
              r"  compiled in \d+\.\d s( \(from the persistent cache\))?; 1 warm-up call\(s\)",
              r"  warm-up calls took \d+\.\d\d s; timing 1 call\(s\)"]
    expected = [p.format(step=step) for step in ("train", "eval\\+flip") for p in phases]
    assert len(LOG) == len(expected), LOG
    for line, pattern in zip(LOG, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_tiny_run_times_the_train_and_flip_eval_steps(tiny_run):
    records, _ = tiny_run
    assert [(r.config, r.dtype, r.step) for r in records] == [
        ("hrnet_w8", "float32", "train"), ("hrnet_w8", "float32", "eval+flip")]
    for r in records:
        assert r.image_size == (64, 64)
        assert r.global_batch == 2 * r.device_count
        assert r.images_per_s > 0 and r.seconds > 0
        assert r.compile_s > 0 and r.xla_compile_s > 0
        assert r.flops_per_step > 0 and r.tflops_per_s > 0
        assert r.images_per_s == pytest.approx(r.global_batch * r.timed_steps / r.seconds)
    train, evaluate = records
    # Backward and update cost about twice the forward; the flip test runs two forwards.
    assert 1.0 < train.flops_per_step / evaluate.flops_per_step < 2.5


def test_cpu_has_no_known_peak_so_mfu_is_not_reported(tiny_run):
    records, _ = tiny_run
    if records[0].device_kind.lower() != "cpu":
        pytest.skip("runs on an accelerator")
    assert all(r.mfu is None and r.peak_tflops_per_device is None for r in records)
    assert "n/a" in benchmark.format_table(records)


def test_json_holds_the_records_and_the_devices(tiny_run):
    records, data = tiny_run
    assert data["device_count"] >= 1 and data["device_kind"] == records[0].device_kind
    assert len(data["records"]) == 2
    for rec in data["records"]:
        assert rec["config"] == "hrnet_w8" and rec["dtype"] == "float32"
        assert rec["images_per_s"] > 0 and rec["flops_per_step"] > 0 and rec["compile_s"] > 0


def test_table_names_the_config_dtype_and_steps(tiny_run):
    records, _ = tiny_run
    table = benchmark.format_table(records)
    assert "hrnet_w8" in table and "float32" in table
    assert "train" in table and "eval+flip" in table and "images/s" in table


def test_mfu_uses_a_given_peak_over_all_devices():
    peak = benchmark.lookup_peak("cpu", "float32", override_tflops=2.0)
    assert peak.tflops_per_device == 2.0
    assert benchmark.lookup_peak("NVIDIA H100 80GB HBM3", "bfloat16").tflops_per_device == 989.4
    assert benchmark.lookup_peak("NVIDIA H200", "bfloat16").tflops_per_device == 989.4
    assert benchmark.lookup_peak("NVIDIA A100-SXM4-40GB", "float32").tflops_per_device == 156.0
    assert benchmark.lookup_peak("cpu", "bfloat16").tflops_per_device is None


def test_unknown_dtype_is_refused_naming_it_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown dtype 'float16'.*float32.*bfloat16"):
        benchmark.parse_dtypes("float32,float16")
    assert benchmark.parse_dtypes("fp32,bf16,float32") == ("float32", "bfloat16")


def test_bad_flags_stop_the_script_before_compiling(capsys):
    script = load_script("benchmark")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--configs", "hrnet_w8", "--dtypes", "fp16"])
    assert exit_info.value.code == 2
    assert "unknown dtype 'fp16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--configs", "hrnet_w8", "--image-size", "100"])
    assert "multiples of 32" in capsys.readouterr().err
