"""Model FLOPs counted from a jaxpr: worked examples, XLA's own count, scanned = unrolled."""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from conftest import SHALLOW_OVERRIDES
from hrnet_jax import benchmark
from hrnet_jax.flop_count import dot_flops, function_flops, valid_positions
from hrnet_jax.train.state import init_variables

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, *, stride=1, padding=(0, 0), lhs_dilation=1, rhs_dilation=1, groups=1):
    return lax.conv_general_dilated(
        x, w, (stride, 1), [padding, (0, 0)], lhs_dilation=(lhs_dilation, 1),
        rhs_dilation=(rhs_dilation, 1), dimension_numbers=NHWC, feature_group_count=groups)


@pytest.mark.parametrize("kwargs, count", [
    # every output position meets every tap
    (dict(input_size=5, kernel_size=1, output_size=5), 5),
    # 3 taps, padding 1 each side: the first and last outputs lose one tap each
    (dict(input_size=3, kernel_size=3, output_size=3, padding_low=1), 7),
    # stride 2, padding 1: output 0 reads -1 (padding), 0, 1; output 1 reads 1, 2, 3
    (dict(input_size=4, kernel_size=3, output_size=2, stride=2, padding_low=1), 5),
    # input 3 dilated to 0 _ 1 _ 2, padded by 2: only the real 0, 1, 2 count, 3 taps each
    (dict(input_size=3, kernel_size=3, output_size=7, padding_low=2, lhs_dilation=2), 9),
    # taps 0, 2, 4 of a kernel dilated by 2, one output over 5 inputs
    (dict(input_size=5, kernel_size=3, output_size=1, rhs_dilation=2), 3),
])
def test_valid_positions_count_only_taps_on_real_inputs(kwargs, count):
    assert valid_positions(**kwargs) == count


def test_a_convolution_costs_two_flops_per_multiply_add_on_a_real_input():
    # 1x1, 3 -> 4 features, batch 2, 5x5: 2 * 3 * 4 * 2 * 25
    assert function_flops(_conv, jnp.ones((2, 5, 5, 3)), jnp.ones((1, 1, 3, 4))) == 1200
    # 3x3 "same" on 3x3, 2 -> 5 features: 7 (rows) * 7 (columns) tap-output pairs
    same = functools.partial(lax.conv_general_dilated, window_strides=(1, 1),
                             padding=[(1, 1), (1, 1)], dimension_numbers=NHWC)
    assert function_flops(same, jnp.ones((1, 3, 3, 2)), jnp.ones((3, 3, 2, 5))) == 2 * 2 * 5 * 49
    # two groups of 2 input features each: half the multiply-adds of the ungrouped one
    grouped = functools.partial(_conv, groups=2)
    assert function_flops(grouped, jnp.ones((1, 4, 1, 4)), jnp.ones((1, 1, 2, 6))) == 2 * 2 * 6 * 4


def test_a_dot_costs_two_flops_per_output_element_and_contracted_element():
    assert function_flops(jnp.dot, jnp.ones((4, 3)), jnp.ones((3, 5))) == 2 * 4 * 5 * 3
    assert dot_flops((7, 4, 3), (7, 4, 5), dimension_numbers=(((2,), (1,)), ((0,), (0,)))) \
        == 2 * 7 * 4 * 5 * 3


def test_a_scan_counts_its_body_per_iteration_a_cond_its_costliest_branch():
    w = jnp.ones((4, 4))

    def scanned(x):
        return lax.scan(lambda c, _: (c @ w, None), x, None, length=6)[0]

    one = 2 * 1 * 4 * 4
    assert function_flops(scanned, jnp.ones((1, 4))) == 6 * one
    assert function_flops(jax.jit(scanned), jnp.ones((1, 4))) == 6 * one

    def branches(p, x):
        return lax.cond(p, lambda x: (x @ w) @ w, lambda x: x @ w, x)

    assert function_flops(branches, True, jnp.ones((1, 4))) == 2 * one
    # elementwise work is not model FLOPs
    assert function_flops(lambda x: jnp.tanh(x) * 2 + 1, jnp.ones((8, 8))) == 0


CONV_CASES = [dict(stride=s, padding=p, lhs_dilation=ld, rhs_dilation=rd, groups=g)
              for s in (1, 2, 3) for p in ((0, 0), (1, 1), (2, 0)) for ld in (1, 2)
              for rd in (1, 2) for g in (1, 3)]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_each_convolution_and_both_its_gradients_count_as_xla_counts_them(case):
    conv = functools.partial(_conv, **case)
    x, w = jnp.ones((2, 7, 6, 3)), jnp.ones((3, 3, 3 // case["groups"], 6))
    out = jax.eval_shape(conv, x, w)
    if 0 in out.shape:
        pytest.skip("no output")
    # the two convolutions of the backward pass, each alone in its program
    input_gradient = jax.linear_transpose(functools.partial(conv, w=w), x)
    kernel_gradient = jax.linear_transpose(functools.partial(conv, x), w)
    ct = jnp.ones(out.shape)
    for fn, args in ((conv, (x, w)), (input_gradient, (ct,)), (kernel_gradient, (ct,))):
        xla = jax.jit(fn).lower(*args).cost_analysis().get("flops", 0.0)
        assert function_flops(fn, *args) == xla


def test_scanned_and_unrolled_networks_count_the_same_and_slightly_under_xla():
    counts = {}
    for scan in ("all", "none"):
        cfg = benchmark.benchmark_config("hrnet_w8", batch_size=2, dtype="float32",
                                         image_size=(64, 64),
                                         overrides=[*SHALLOW_OVERRIDES, f"model.scan={scan}"])
        variables = init_variables(cfg, jax.random.key(0))
        data = benchmark.synthetic_batch(cfg, 2, 1)
        for case in (benchmark.train_case(cfg, variables, data),
                     benchmark.eval_case(cfg, variables, data)):
            counts[scan, case.name] = case.flops()
            if scan == "none":  # XLA adds the elementwise work: BatchNorm, ReLU, Adam
                xla = case.step.lower(*case.args).cost_analysis()["flops"]
                assert 0.85 * xla < counts[scan, case.name] < xla
    assert counts["all", "train"] == counts["none", "train"]
    assert counts["all", "eval+flip"] == counts["none", "eval+flip"]
    # backward = twice the forward; the flip test's evaluation is two forwards
    assert counts["all", "train"] == pytest.approx(1.5 * counts["all", "eval+flip"], rel=0.01)
