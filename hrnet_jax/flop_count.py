"""Model FLOPs of a traced program: its convolutions and matrix products, counted exactly.

A convolution's multiply-adds are counted as XLA's cost analysis counts
them: for every spatial dimension, the (output position, kernel tap) pairs
that land on a real input element, neither in the padding nor in a hole left
by input (lhs) dilation. Per device,

    FLOPs = 2 * (C_in / feature_groups) * C_out * (N / batch_groups) * prod_d valid_d

where ``valid_d`` counts pairs ``(o, k)``, ``0 <= o < O_d``, ``0 <= k < K_d``, with
``u = o * stride_d - pad_low_d + k * rhs_dilation_d`` a multiple of
``lhs_dilation_d`` and ``0 <= u / lhs_dilation_d < I_d``. A ``dot_general`` costs
``2 * out_elements * prod(contracted dims)``. Elementwise work (BatchNorm,
ReLU, the optimizer) is not model FLOPs and is not counted.

The count is read from the jaxpr, so a scanned network is counted with each
loop body times its trip count, the same number as the unrolled network's,
and nothing is lowered or compiled. Inside ``pmap`` the shapes are one
device's, so the count of a pmap'd step is the FLOPs of one device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core


def valid_positions(*, input_size: int, kernel_size: int, output_size: int, stride: int = 1,
                    padding_low: int = 0, lhs_dilation: int = 1, rhs_dilation: int = 1) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that read a real input.

    A pair reads input index ``u / lhs_dilation`` with
    ``u = o * stride - padding_low + k * rhs_dilation``; it counts when ``u`` is a
    multiple of ``lhs_dilation`` (not a dilation hole) and the index lies in
    ``[0, input_size)`` (not padding).
    """
    o = np.arange(output_size, dtype=np.int64)[None, :]
    k = np.arange(kernel_size, dtype=np.int64)[:, None]
    u = o * stride - padding_low + k * rhs_dilation
    real = (u >= 0) & (u % lhs_dilation == 0) & (u // lhs_dilation < input_size)
    return int(real.sum())


def conv_flops(lhs_shape: Sequence[int], rhs_shape: Sequence[int], out_shape: Sequence[int], *,
               dimension_numbers: Any, window_strides: Sequence[int],
               padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int],
               rhs_dilation: Sequence[int], feature_group_count: int = 1,
               batch_group_count: int = 1, **_: Any) -> int:
    """FLOPs (2 per multiply-add) of one ``lax.conv_general_dilated``, as in the module doc.

    ``dimension_numbers`` is a ``lax.ConvDimensionNumbers`` (its ``lhs_spec`` is
    (batch, feature, spatial...), ``rhs_spec`` (out feature, in feature,
    spatial...), ``out_spec`` (batch, feature, spatial...)); the other keywords
    are the primitive's parameters, so ``conv_flops(*shapes, **eqn.params)`` works.
    """
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    positions = 1
    for d in range(len(lhs_spec) - 2):
        positions *= valid_positions(
            input_size=lhs_shape[lhs_spec[2 + d]], kernel_size=rhs_shape[rhs_spec[2 + d]],
            output_size=out_shape[out_spec[2 + d]], stride=window_strides[d],
            padding_low=padding[d][0], lhs_dilation=lhs_dilation[d], rhs_dilation=rhs_dilation[d])
    in_features = lhs_shape[lhs_spec[1]] // feature_group_count
    batch = lhs_shape[lhs_spec[0]] // batch_group_count
    return 2 * in_features * out_shape[out_spec[1]] * batch * positions


def dot_flops(lhs_shape: Sequence[int], out_shape: Sequence[int], *, dimension_numbers: Any,
              **_: Any) -> int:
    """FLOPs of one ``lax.dot_general``: 2 x output elements x contracted size."""
    (lhs_contracting, _rhs_contracting), _batch = dimension_numbers
    contracted = int(np.prod([lhs_shape[d] for d in lhs_contracting], dtype=np.int64))
    return 2 * int(np.prod(out_shape, dtype=np.int64)) * contracted


def inner_jaxprs(value: Any) -> Iterator[jex_core.Jaxpr]:
    """The jaxprs held by an equation parameter's ``value`` (closed or not, in tuples too)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from inner_jaxprs(item)


def jaxpr_flops(jaxpr: jex_core.Jaxpr | jex_core.ClosedJaxpr) -> int:
    """Model FLOPs of one run of ``jaxpr``: its convolutions and dot products, nested ones too.

    A ``scan`` body counts ``length`` times; of a ``cond``'s branches the
    costliest counts; a ``while`` loop's body counts once (its trip count is
    not known before it runs); any other primitive that carries jaxprs (jit,
    pmap, remat, custom derivatives) counts each of them once.
    """
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        shapes = [v.aval.shape for v in eqn.invars]
        if name == "conv_general_dilated":
            total += conv_flops(shapes[0], shapes[1], eqn.outvars[0].aval.shape, **eqn.params)
        elif name == "dot_general":
            total += dot_flops(shapes[0], eqn.outvars[0].aval.shape, **eqn.params)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(branch) for branch in eqn.params["branches"])
        else:
            total += sum(jaxpr_flops(inner) for value in eqn.params.values()
                         for inner in inner_jaxprs(value))
    return total


def function_flops(fn: Callable, *args: Any) -> int:
    """Model FLOPs of one call of ``fn(*args)``, traced (not run, not compiled).

    For a pmap'd ``fn`` that is one device's count.
    """
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
