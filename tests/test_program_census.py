"""Counting the operations a compiled program runs per call, from its HLO text."""

import jax
import jax.numpy as jnp
import pytest

from hrnet_jax.program_census import census

# A hand-written module in XLA's text form: a loop of 4 iterations whose body
# runs a fusion (rooted at an add) and a copy; around it a fusion rooted at a
# dynamic-update-slice, a custom call and a conditional whose larger branch
# runs two operations.
_MODULE = """\
HloModule example, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_add (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %add.1 = f32[8]{0} add(f32[8]{0} %p0, f32[8]{0} %p0)
}

%fused_dus (q0: f32[8], q1: f32[2], q2: s32[]) -> f32[8] {
  %q0 = f32[8]{0} parameter(0)
  %q1 = f32[2]{0} parameter(1)
  %q2 = s32[] parameter(2)
  ROOT %dynamic-update-slice.1 = f32[8]{0} dynamic-update-slice(f32[8]{0} %q0, f32[2]{0} %q1, s32[] %q2)
}

%body (state: (s32[], f32[8])) -> (s32[], f32[8]) {
  %state = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8]{0}) %state), index=0
  %x = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %state), index=1
  %one = s32[] constant(1)
  %next = s32[] add(s32[] %i, s32[] %one)
  %f = f32[8]{0} fusion(f32[8]{0} %x), kind=kLoop, calls=%fused_add
  %c = f32[8]{0} copy(f32[8]{0} %f)
  ROOT %t = (s32[], f32[8]{0}) tuple(s32[] %next, f32[8]{0} %c)
}

%cond (cstate: (s32[], f32[8])) -> pred[] {
  %cstate = (s32[], f32[8]{0}) parameter(0)
  %ci = s32[] get-tuple-element((s32[], f32[8]{0}) %cstate), index=0
  %four = s32[] constant(4)
  ROOT %lt = pred[] compare(s32[] %ci, s32[] %four), direction=LT
}

%small (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  ROOT %neg = f32[8]{0} negate(f32[8]{0} %a)
}

%large (b: f32[8]) -> f32[8] {
  %b = f32[8]{0} parameter(0)
  %e = f32[8]{0} exponential(f32[8]{0} %b)
  ROOT %l = f32[8]{0} log(f32[8]{0} %e)
}

ENTRY %main (arg: f32[8]) -> f32[8] {
  %arg = f32[8]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(s32[] %zero, f32[8]{0} %arg)
  %loop = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %init), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"4"}}
  %y = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %loop), index=1
  %u = f32[2]{0} constant({1, 2})
  %d = f32[8]{0} fusion(f32[8]{0} %y, f32[2]{0} %u, s32[] %zero), kind=kLoop, calls=%fused_dus
  %cc = f32[8]{0} custom-call(f32[8]{0} %d), custom_call_target="my_kernel"
  %pick = s32[] constant(1)
  ROOT %r = f32[8]{0} conditional(s32[] %pick, f32[8]{0} %cc, f32[8]{0} %cc), \
branch_computations={%small, %large}
}
"""


def test_a_loop_counts_its_body_once_per_iteration_and_free_bookkeeping_not_at_all():
    c = census(_MODULE)
    # loop body: add (counter), fusion, copy, 4 times; then the DUS fusion, the
    # custom call and the larger branch's exponential and log.
    assert c.by_kind == {"add": 4, "fusion:add": 4, "copy": 4,
                         "fusion:dynamic-update-slice": 1, "custom-call:my_kernel": 1,
                         "exponential": 1, "log": 1}
    assert c.operations == 16
    assert c.loop_iterations == 4
    assert c.unknown_trip_counts == 0
    assert c.count("fusion:") == 5


def test_a_loop_of_unknown_trip_count_is_counted_once_and_reported():
    c = census(_MODULE.replace(', backend_config={"known_trip_count":{"n":"4"}}', ""))
    assert c.by_kind["fusion:add"] == 1
    assert (c.loop_iterations, c.unknown_trip_counts) == (1, 1)


def test_a_module_without_an_entry_computation_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        census(_MODULE.replace("ENTRY %main", "%main"))


def test_a_jitted_scan_runs_its_body_once_per_step_of_the_scan():
    def twice_scanned(x):
        def body(c, _):
            return jnp.sin(c) * 2.0 + c, None
        return jax.lax.scan(body, x, None, length=7)[0]

    x = jnp.ones((16,), jnp.float32)
    one = census(jax.jit(lambda x: jnp.sin(x) * 2.0 + x).lower(x).compile().as_text())
    looped = census(jax.jit(twice_scanned).lower(x).compile().as_text())
    assert looped.loop_iterations == 7
    # Seven times the body's elementwise work, whatever fusion XLA chose for it.
    assert looped.count("fusion:") >= 7 * max(one.count("fusion:"), 1)
