"""A 2-D convolution whose gradient XLA's CPU backend runs fast inside loops.

XLA's CPU backend runs a convolution with Eigen only when its dimensions are
in the canonical order (input NHWC, kernel HWIO, output NHWC); any other
order falls back to a generic loop nest many times slower. Autodiff writes
the gradient of a convolution as two convolutions in other orders: the input
gradient with the kernel's in/out swapped, and the kernel gradient with the
batch taken as the contracted dimension. XLA rewrites these into canonical
form with transposes, but only in the program's top-level computation, not
inside the body of a loop, so with ``model.scan`` the backward pass through
every scanned convolution ran that slow path (a W32 train step at batch 8
on two CPU cores took 197 s; with this module, 7.7 s).

:func:`conv_general_dilated` computes the same forward convolution and writes
its gradient with explicit transposes around canonical convolutions, the
rewrite XLA would have made; the results are the same. For a convolution of
``x`` (N, H, W, I) with ``w`` (kh, kw, I, O), stride s and padding (lo, hi)
per spatial dimension, giving ``dy`` (N, Ho, Wo, O):

  dx = conv(dy, flip(w) with I and O swapped; input dilated by s,
            padding (k - 1 - lo, H - (Ho - 1) s - 1 + lo))
  dw = conv(x as (I, H, W, N), dy as (Ho, Wo, N, O); kernel dilated by s,
            padding (lo, k + (Ho - 1) s - H - lo)), read as (kh, kw, I, O)

Other convolutions (dilated, grouped, other layouts) go to
``jax.lax.conv_general_dilated`` unchanged. Only worth using on the CPU and
inside loops (``layers.conv2d`` with ``in_loop``): elsewhere XLA makes the
same rewrite itself, and GPU backends match autodiff's form to their own
backward kernels. Being a ``jax.custom_vjp``, it supports reverse-mode
differentiation (``jax.grad``, ``jax.vjp``, and ``jax.vmap`` of them) but not
forward mode (``jax.jvp``, ``jax.jacfwd``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ("NHWC", "HWIO", "NHWC")


def _convolve(x: jax.Array, w: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_LAYOUT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return _convolve(x, w, strides, padding)


def _forward(x, w, strides, padding):
    return _convolve(x, w, strides, padding), (x, w)


def _backward(strides, padding, residuals, dy):
    x, w = residuals
    input_padding, kernel_padding = [], []
    for size, out, k, s, (lo, _) in zip(x.shape[1:3], dy.shape[1:3], w.shape[:2], strides,
                                         padding, strict=True):
        input_padding.append((k - 1 - lo, size - (out - 1) * s - 1 + lo))
        kernel_padding.append((lo, k + (out - 1) * s - size - lo))
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = lax.conv_general_dilated(dy, flipped, (1, 1), input_padding, lhs_dilation=strides,
                                  dimension_numbers=_LAYOUT)
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
                                  kernel_padding, rhs_dilation=strides,
                                  dimension_numbers=_LAYOUT)
    return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_canonical_conv.defvjp(_forward, _backward)


def _is_one(dilation: Sequence[int] | None) -> bool:
    return dilation is None or all(d == 1 for d in dilation)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``jax.lax.conv_general_dilated`` with a gradient made of canonical convolutions.

    Takes the same arguments. An NHWC x HWIO 2-D convolution with explicit
    padding, no dilation and no groups gets the gradient described in this
    module's docstring; anything else is passed to
    ``jax.lax.conv_general_dilated`` as it is.
    """
    canonical = (
        lhs.ndim == 4 and rhs.ndim == 4
        and not isinstance(padding, str)
        and _is_one(lhs_dilation) and _is_one(rhs_dilation)
        and feature_group_count == 1 and batch_group_count == 1
        and precision is None and preferred_element_type is None
        and dimension_numbers is not None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT))
    if not canonical:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    return _canonical_conv(lhs, rhs, tuple(int(s) for s in window_strides),
                           tuple((int(lo), int(hi)) for lo, hi in padding))
