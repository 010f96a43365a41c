"""The convolution whose gradient XLA's CPU backend runs with Eigen inside loops."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import tiny_config
from hrnet_jax.config import override
from hrnet_jax.models import build_model, layers
from hrnet_jax.models.cpu_convolution import conv_general_dilated

LAYOUT = ("NHWC", "HWIO", "NHWC")
CANONICAL = "b01f_01io->b01f"


def _conv(x, w, stride=1, pad=1, fn=conv_general_dilated):
    return fn(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=LAYOUT)


def test_kernel_gradient_of_a_padded_3x3_convolution_counts_the_overlaps():
    # sum(conv(x, w)) over a 2x2 image of ones padded by 1: kernel tap (a, b)
    # meets the image at as many outputs as it overlaps it: 1 at the corners,
    # 2 at the edges, 4 in the centre.
    x = jnp.ones((1, 2, 2, 1))
    w = jnp.zeros((3, 3, 1, 1))
    dw = jax.grad(lambda w: jnp.sum(_conv(x, w)))(w)
    np.testing.assert_array_equal(np.asarray(dw)[..., 0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_input_gradient_of_a_padded_3x3_convolution_sums_the_kernel_taps_that_reach_it():
    # Output o reads input p through tap p - o + 1. Pixel (0, 0) is read by the
    # four outputs through taps (1,1), (1,0), (0,1), (0,0): 4 + 3 + 1 + 0 = 8;
    # pixel (1, 1) through (2,2), (2,1), (1,2), (1,1): 8 + 7 + 5 + 4 = 24.
    x = jnp.zeros((1, 2, 2, 1))
    w = jnp.arange(9.0).reshape(3, 3, 1, 1)
    dx = jax.grad(lambda x: jnp.sum(_conv(x, w)))(x)
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], [[8, 12], [20, 24]])


def test_stride_2_kernel_gradient_counts_the_overlaps_of_every_other_position():
    # A 3x3 image of ones, stride 2, padding 1: outputs read rows -1..1 and 1..3.
    # Tap row 0 meets the image once (row 1), row 1 twice (rows 0 and 2), row 2 once.
    x = jnp.ones((1, 3, 3, 1))
    dw = jax.grad(lambda w: jnp.sum(_conv(x, w, stride=2)))(jnp.zeros((3, 3, 1, 1)))
    np.testing.assert_array_equal(np.asarray(dw)[..., 0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


@pytest.mark.parametrize("size,stride,kernel", [
    ((8, 9), 1, 3), ((8, 8), 2, 3), ((7, 9), 2, 3), ((6, 5), 1, 1), ((7, 7), 2, 1)])
def test_gradients_equal_autodiff_of_the_plain_convolution(size, stride, kernel):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 7)), jnp.float32)
    pad = kernel // 2

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(_conv(x, w, stride, pad, fn)))

    np.testing.assert_array_equal(_conv(x, w, stride, pad),
                                  _conv(x, w, stride, pad, lax.conv_general_dilated))
    ours = jax.grad(loss(conv_general_dilated), (0, 1))(x, w)
    theirs = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_bfloat16_gradients_stay_bfloat16():
    x = jnp.ones((1, 4, 4, 3), jnp.bfloat16)
    w = jnp.ones((3, 3, 3, 2), jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: jnp.sum(_conv(x, w).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16


def test_dilated_and_grouped_convolutions_are_left_to_lax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 9, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    kwargs = dict(window_strides=(1, 1), padding=((2, 2), (2, 2)), rhs_dilation=(2, 2),
                  dimension_numbers=LAYOUT, feature_group_count=2)

    def loss(fn):
        return lambda w: jnp.sum(fn(x, w, **kwargs) ** 2)

    assert "custom_vjp" not in str(jax.make_jaxpr(loss(conv_general_dilated))(w))
    np.testing.assert_array_equal(jax.grad(loss(conv_general_dilated))(w),
                                  jax.grad(loss(lax.conv_general_dilated))(w))


def _dim_labels(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"dim_labels=([a-z0-9_>-]+)", text)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="about XLA's CPU backend")
def test_inside_a_scan_every_gradient_convolution_is_canonical_on_the_cpu():
    x = jnp.ones((2, 8, 8, 4))
    ws = jnp.ones((3, 3, 3, 4, 4)) * 0.1

    def loss(fn):
        def body(y, w):
            return jax.nn.relu(_conv(y, w, fn=fn)), None
        return lambda ws: jnp.sum(jax.lax.scan(body, x, ws)[0] ** 2)

    # XLA leaves autodiff's convolutions inside the loop in their own
    # dimension orders, which the CPU runs without Eigen.
    plain = _dim_labels(jax.grad(loss(lax.conv_general_dilated)), ws)
    assert any(d != CANONICAL for d in plain), plain
    ours = _dim_labels(jax.grad(loss(conv_general_dilated)), ws)
    assert len(ours) == 3 and set(ours) == {CANONICAL}, ours


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="about XLA's CPU backend")
def test_a_scanned_hrnet_train_step_compiles_to_canonical_convolutions_on_the_cpu(monkeypatch):
    # 128x128, so that the lowest branch (4x4) is no smaller than a kernel:
    # XLA swaps the operands of a convolution whose kernel is larger than its
    # input, whatever the order it came in.
    cfg = override(tiny_config(), {"model.scan": "all", "model.image_size": "128,128",
                                   "model.heatmap_size": "32,32"})
    model = build_model(cfg)
    width, height = cfg.model.image_size
    x = jnp.ones((2, 3, height, width))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), variables["params"])
    stats = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), variables["batch_stats"])

    def loss(params):
        y, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(y ** 2)

    labels = _dim_labels(jax.grad(loss), params)
    assert labels and set(labels) == {CANONICAL}, sorted(set(labels))
    monkeypatch.setattr(layers.cpu_convolution, "conv_general_dilated",
                        lax.conv_general_dilated)
    plain = _dim_labels(jax.grad(loss), params)
    assert len(plain) == len(labels) and set(plain) != {CANONICAL}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="about XLA's CPU backend")
def test_only_the_convolutions_inside_the_loops_carry_the_custom_gradient():
    x = jnp.ones((1, 3, 64, 64))
    counts = {}
    for scan in ("none", "all"):
        model = build_model(override(tiny_config(), {"model.scan": scan,
                                                     "model.stage3.num_modules": 2}))
        variables = model.init(jax.random.key(0), x, train=False)
        jaxpr = str(jax.make_jaxpr(lambda v, m=model: m.apply(v, x, train=False))(variables))
        counts[scan] = jaxpr.count("custom_vjp_call")
    # Unrolled, the network is plain: forward-mode differentiation works.
    assert counts["none"] == 0
    model = build_model(override(tiny_config(), {"model.scan": "none"}))
    variables = model.init(jax.random.key(0), x, train=False)
    _, tangent = jax.jvp(lambda x: model.apply(variables, x, train=False), (x,), (x,))
    assert tangent.shape == (1, 16, 16, 16)
    # Scanned, the two alike modules of stage 3 run in a loop: their
    # convolutions (written once in the loop's body) carry it.
    assert counts["all"] > 0
