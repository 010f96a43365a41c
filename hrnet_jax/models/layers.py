"""The layers HRNet is made of, as the reference defines them: PyTorch-padded
convolutions, BatchNorm with PyTorch's statistics, the BASIC and BOTTLENECK
residual blocks, and nearest upsampling. Tensors are NHWC.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrnet_jax.models import cpu_convolution

# The reference's init_weights: every convolution kernel from N(0, KERNEL_STDDEV^2), every
# other variable a constant by its name. The layers below use these, and so does
# hrnet_jax.train.state.init_variables, which draws a whole network's kernels at once.
KERNEL_STDDEV = 0.001
INITIAL_CONSTANTS = {"bias": 0.0, "scale": 1.0, "mean": 0.0, "var": 1.0}
_BN_EPSILON = 1e-5
# PyTorch momentum 0.1 is a running average that keeps 0.9 of the old value.
_BN_MOMENTUM = 0.9
# Block kind -> channel expansion: a block of `planes` outputs planes * expansion channels.
EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}


def conv2d(features: int, kernel: int, stride: int, name: str, dtype: Any = jnp.float32,
           use_bias: bool = False, in_loop: bool = False) -> nn.Conv:
    """A square convolution padded like PyTorch's ``padding=kernel // 2``.

    Kernels start from N(0, 0.001^2) and biases from 0, as the reference's
    ``init_weights``; parameters are float32, computation in ``dtype``. With
    ``in_loop`` (the convolution runs inside ``model.scan``'s loop) on the CPU,
    its gradient is written in the form XLA's CPU backend runs fast there
    (:mod:`~hrnet_jax.models.cpu_convolution`).
    """
    # Explicit symmetric padding as PyTorch's padding=k//2; Flax 'SAME' pads a
    # stride-2 convolution on even inputs only at the bottom/right.
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=nn.initializers.normal(stddev=KERNEL_STDDEV),
        bias_init=nn.initializers.constant(INITIAL_CONSTANTS["bias"]),
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=(cpu_convolution.conv_general_dilated
                              if in_loop and jax.default_backend() == "cpu" else None),
        name=name,
    )


class BatchNorm(nn.Module):
    """BatchNorm over (N, H, W) of an NHWC tensor with PyTorch's statistics rules.

    Training normalises with the biased batch variance and updates
    ``var`` with the unbiased one (``n / (n - 1)``), as ``torch.nn.BatchNorm2d``
    does; evaluation uses ``mean``/``var``. Statistics are computed in float32
    whatever the compute dtype. With ``axis_name`` the batch statistics are
    averaged over that mapped axis (synchronised BatchNorm; equal per-device
    batches assumed).

    Attributes:
      momentum: weight of the old running value (Flax convention; PyTorch 0.1).
      epsilon: added to the variance.
      dtype: dtype of the output.
      axis_name: pmap/vmap axis to synchronise statistics over, or None.
    """

    momentum: float = _BN_MOMENTUM
    epsilon: float = _BN_EPSILON
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.constant(INITIAL_CONSTANTS["scale"]),
                           (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.constant(INITIAL_CONSTANTS["bias"]),
                          (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.full, (features,),
                                INITIAL_CONSTANTS["mean"], jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.full, (features,),
                               INITIAL_CONSTANTS["var"], jnp.float32)
        if not train:
            y = (x.astype(jnp.float32) - ra_mean.value) * (
                jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            return y.astype(self.dtype)
        count = 1
        for size in x.shape[:-1]:
            count *= size
        if self.axis_name is not None:
            count = count * jax.lax.psum(1, self.axis_name)
        y, mean, var = _train_batch_norm(x, scale, bias, self.epsilon, self.axis_name,
                                         self.dtype)
        # The running averages take no gradient (_train_batch_norm passes none back).
        mean, var = jax.lax.stop_gradient((mean, var))
        if not self.is_initializing():
            unbiased = var * (count / jnp.maximum(count - 1, 1))
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _train_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                      axis_name: str | None, dtype: Any
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises (..., C) ``x`` with its batch statistics, in float32; returns (y in
    ``dtype``, mean (C,), biased variance (C,)).

    Its gradient is written out (:func:`_train_batch_norm_backward`) rather
    than derived by autodiff, which takes three or four reductions over
    ``x`` where two suffice, and keeps only ``x``, in its own dtype, and three (C,)
    vectors for the backward pass: a float32 copy of every normalised
    tensor, kept, was most of a bfloat16 train step's memory. The statistics
    it returns are for the running averages, which take no gradient: their
    cotangents are not propagated.
    """
    return _train_batch_norm_forward(x, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_mean(values: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean over every axis but the last, and over the mapped axis ``axis_name``."""
    mean = jnp.mean(values, axis=tuple(range(values.ndim - 1)))
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def batch_moments(x: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over every axis of (..., C) ``x`` but the last, in one pass.

    With ``shift`` the first element of each channel (the same on every device
    of ``axis_name``: their mean), ``d = x - shift`` and means over the batch::

        mean = shift + E[d]        var = max(E[d^2] - E[d]^2, 0)

    Both sums read ``x`` once, in one reduction (two passes, mean then
    E[(x - mean)^2], are two reductions and two kernels on a GPU). Shifting
    by a value of the batch keeps the subtraction from cancelling: the
    rounding error of ``var`` is about float32's epsilon times
    ``1 + (shift - mean)^2 / var``, where unshifted moments would have
    ``mean^2 / var``, which is large for a channel far from zero.
    """
    shift = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
    if axis_name is not None:
        shift = jax.lax.pmean(shift, axis_name)
    d = x - shift
    mean_d = _batch_mean(d, axis_name)
    mean_d2 = _batch_mean(jnp.square(d), axis_name)
    return shift + mean_d, jnp.maximum(mean_d2 - jnp.square(mean_d), 0.0)


def _train_batch_norm_forward(x, scale, bias, epsilon, axis_name, dtype):
    x32 = x.astype(jnp.float32)
    mean, var = batch_moments(x32, axis_name)
    inverse_std = jax.lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inverse_std * scale) + bias
    return (y.astype(dtype), mean, var), (x, scale, mean, inverse_std)


def _train_batch_norm_backward(epsilon, axis_name, dtype, residuals, cotangents):
    """For y = scale * xhat + bias, xhat = (x - mean) * inverse_std, with mean and
    variance over the batch (and ``axis_name``) and an upstream gradient g:
    d bias = sum g, d scale = sum g * xhat (over this device's batch) and
    d x = scale * inverse_std * (g - mean(g) - xhat * mean(g * xhat)), the means
    over the whole batch the statistics were taken over.
    """
    del epsilon, dtype
    x, scale, mean, inverse_std = residuals
    g = cotangents[0].astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * inverse_std
    axes = tuple(range(x.ndim - 1))
    d_bias = jnp.sum(g, axis=axes)
    d_scale = jnp.sum(g * xhat, axis=axes)
    count = x.size // x.shape[-1]
    mean_g, mean_g_xhat = d_bias / count, d_scale / count
    if axis_name is not None:
        mean_g, mean_g_xhat = jax.lax.pmean((mean_g, mean_g_xhat), axis_name)
    d_x = (scale * inverse_std) * (g - mean_g - xhat * mean_g_xhat)
    return d_x.astype(x.dtype), d_scale, d_bias


_train_batch_norm.defvjp(_train_batch_norm_forward, _train_batch_norm_backward)


class ResidualBlock(nn.Module):
    """BASIC (two 3x3) or BOTTLENECK (1x1, 3x3, 1x1 with 4x expansion) residual block."""

    kind: str
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    in_loop: bool = False  # runs inside model.scan's loop (see conv2d)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def bn(name: str) -> BatchNorm:
            return BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name=name)

        def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
            return conv2d(features, kernel, stride, name, self.dtype, in_loop=self.in_loop)

        out_features = self.planes * EXPANSION[self.kind]
        if self.kind == "BASIC":
            y = conv(self.planes, 3, self.stride, "conv1")(x)
            y = nn.relu(bn("bn1")(y, train))
            y = conv(self.planes, 3, 1, "conv2")(y)
            y = bn("bn2")(y, train)
        else:
            y = conv(self.planes, 1, 1, "conv1")(x)
            y = nn.relu(bn("bn1")(y, train))
            y = conv(self.planes, 3, self.stride, "conv2")(y)
            y = nn.relu(bn("bn2")(y, train))
            y = conv(out_features, 1, 1, "conv3")(y)
            y = bn("bn3")(y, train)
        residual = x
        if self.downsample:
            residual = conv(out_features, 1, self.stride, "downsample_0")(x)
            residual = bn("downsample_1")(residual, train)
        return nn.relu(y + residual)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of (N, H, W, C) by an integer factor.

    Each pixel becomes a ``factor`` x ``factor`` block, which is what PyTorch's
    ``nn.Upsample(scale_factor=factor, mode='nearest')`` computes.
    """
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
