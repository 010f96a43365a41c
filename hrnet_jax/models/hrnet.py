"""HRNet (pose_hrnet) as a Flax linen module.

The network keeps a high-resolution branch from the stem to the output and
adds lower-resolution branches stage by stage, exchanging information between
them after every HighResolutionModule. Its layout, padding, normalisation and
initialisation are those of the reference PyTorch implementation, so the
reference's weights load unchanged (see :mod:`hrnet_jax.convert`). After the
64-channel stem, ``layer1`` is ``model.stage1``'s single branch of residual
blocks: the reference pose network's four BOTTLENECK blocks of 64 planes by
default, two in HRNet-W18-small-v2.

Parameter naming. Every Flax variable path is the reference ``state_dict``
module path with each numeric index glued to the name before it by ``_``:

==================================================  ==========================================
reference name                                       Flax path (collection, path, leaf)
==================================================  ==========================================
``conv1.weight``                                     params ``conv1/kernel``
``bn1.running_var``                                  batch_stats ``bn1/var``
``layer1.0.downsample.1.weight``                     params ``layer1_0/downsample_1/scale``
``transition2.2.0.0.weight``                         params ``transition2_2_0_0/kernel``
``stage2.0.branches.1.3.conv2.weight``               params ``stage2_0/branches_1_3/conv2/kernel``
``stage3.0.fuse_layers.2.0.1.1.bias``                params ``stage3_0/fuse_layers_2_0_1_1/bias``
``final_layer.bias``                                 params ``final_layer/bias``
==================================================  ==========================================

Leaves: convolution ``weight`` (O, I, kH, kW) is ``kernel`` (kH, kW, I, O);
BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` are
``scale``/``bias`` (params) and ``mean``/``var`` (batch_stats);
``num_batches_tracked`` has no counterpart.

Scanning. HRNet repeats identical pieces: the residual blocks of a branch
(four per branch in W32) and the modules of a stage (stage 3's four). With
``model.scan`` these run as one ``jax.lax.scan`` each over their variables
stacked on the fly, so XLA compiles each piece once: the W32 train step
lowers to 391 convolutions instead of 877 with the blocks scanned (the
default), 202 with the modules scanned too. The variables keep the unrolled
network's names and shapes (initialisation always runs unrolled), so
checkpoints, conversion and results are the same whichever way it runs
(:mod:`hrnet_jax.models.scan`; the layers are in :mod:`hrnet_jax.models.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrnet_jax.config import Config, ModelConfig, StageConfig
from hrnet_jax.models.layers import EXPANSION, BatchNorm, ResidualBlock, conv2d, upsample_nearest
from hrnet_jax.models.scan import run_stacked, scan_mode

# The stem divides H and W by 4 and each of the three lower branches by 2 more.
_INPUT_MULTIPLE = 32
# The stem's two stride-2 convolutions have 64 channels in every HRNet.
_STEM_WIDTH = 64
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _residual_blocks(parent: nn.Module, x: jax.Array, prefix: str, kind: str, in_width: int,
                     planes: int, count: int, scan: bool, train: bool, dtype: Any,
                     bn_axis_name: str | None, in_loop: bool = False) -> jax.Array:
    """``count`` residual blocks of ``kind``, children of ``parent`` named ``{prefix}{k}``.

    The first block's shortcut is a 1x1 conv + BN when ``in_width`` differs
    from the blocks' output width ``planes * expansion``. The blocks after it
    (all of them when it has none) are alike: with ``scan``, outside
    initialisation, more than one alike block run as one ``lax.scan``.
    ``in_loop``: ``parent`` itself runs inside a ``lax.scan``.
    """
    downsample = in_width != planes * EXPANSION[kind]
    start = 1 if downsample else 0
    scanned = scan and not parent.is_initializing() and count - start > 1
    for k in range(start if scanned else count):
        x = ResidualBlock(kind, planes, 1, downsample=k == 0 and downsample, dtype=dtype,
                          bn_axis_name=bn_axis_name, in_loop=in_loop,
                          name=f"{prefix}{k}")(x, train)
    if scanned:
        template = ResidualBlock(kind, planes, 1, dtype=dtype, bn_axis_name=bn_axis_name,
                                 in_loop=True, parent=None)
        x = run_stacked(parent, template, [f"{prefix}{k}" for k in range(start, count)], x,
                         train)
    return x


class HighResolutionModule(nn.Module):
    """Parallel branches of residual blocks followed by the all-to-all fuse.

    Output i sums every branch j brought to branch i's resolution and width:
    j > i by 1x1 conv + BN + nearest upsampling x2^(j-i); j < i by (i-j)
    3x3 stride-2 conv + BN, with ReLU between them but not after the last;
    then ReLU. With ``multi_scale_output`` False only output 0 is formed.
    """

    in_channels: tuple[int, ...]
    stage: StageConfig
    multi_scale_output: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    scan_blocks: bool = False
    in_loop: bool = False  # runs inside model.scan's loop (see layers.conv2d)

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        stage = self.stage
        expansion = EXPANSION[stage.block]
        n = stage.num_branches

        def bn(name: str) -> BatchNorm:
            return BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name=name)

        ys = [
            _residual_blocks(self, xs[i], f"branches_{i}_", stage.block, self.in_channels[i],
                             stage.num_channels[i], stage.num_blocks[i], self.scan_blocks,
                             train, self.dtype, self.bn_axis_name, self.in_loop)
            for i in range(n)
        ]
        if n == 1:
            return ys

        channels = [c * expansion for c in stage.num_channels]
        fused = []
        for i in range(n if self.multi_scale_output else 1):
            total = None
            # Summed in branch order from 0, as the reference does.
            for j in range(n):
                prefix = f"fuse_layers_{i}_{j}"
                if j == i:
                    z = ys[j]
                elif j > i:
                    z = conv2d(channels[i], 1, 1, f"{prefix}_0", self.dtype,
                               in_loop=self.in_loop)(ys[j])
                    z = bn(f"{prefix}_1")(z, train)
                    z = upsample_nearest(z, 2 ** (j - i))
                else:
                    z = ys[j]
                    for k in range(i - j):
                        last = k == i - j - 1
                        width = channels[i] if last else channels[j]
                        z = conv2d(width, 3, 2, f"{prefix}_{k}_0", self.dtype,
                                   in_loop=self.in_loop)(z)
                        z = bn(f"{prefix}_{k}_1")(z, train)
                        if not last:
                            z = nn.relu(z)
                total = z if total is None else total + z
            fused.append(nn.relu(total))
        return fused


class HRNet(nn.Module):
    """Pose HRNet: (N, 3, H, W) images to (N, J, H/4, W/4) heatmaps.

    Attributes:
      config: the model section of a :class:`~hrnet_jax.config.Config`.
      bn_axis_name: mapped axis over which BatchNorm statistics are averaged
        in training (synchronised BatchNorm), or None for per-device statistics.
    """

    config: ModelConfig
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Heatmaps for a batch of normalised images.

        Args:
          x: (N, 3, H, W) float images, H and W multiples of 32.
          train: use batch statistics and update ``batch_stats`` (apply with
            ``mutable=['batch_stats']``); otherwise use the running statistics.

        Returns:
          (N, J, H/4, W/4) float32 heatmaps.
        """
        cfg = self.config
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(
                f"HRNet input: expected images of shape (N, 3, H, W) (NCHW, 3 colour channels), "
                f"got {shape}"
            )
        if shape[2] % _INPUT_MULTIPLE or shape[3] % _INPUT_MULTIPLE:
            raise ValueError(
                f"HRNet input: expected H and W to be multiples of {_INPUT_MULTIPLE} so that the "
                f"branches' resolutions divide evenly, got (N, 3, H, W) = {shape}"
            )
        if cfg.dtype not in _DTYPES:
            raise ValueError(f"model.dtype: expected one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
        dtype = _DTYPES[cfg.dtype]
        axis = self.bn_axis_name
        scan_blocks, scan_modules = scan_mode(cfg.scan)
        if self.is_initializing():  # variables are made once, under their own names
            scan_blocks = scan_modules = False

        def bn(name: str) -> BatchNorm:
            return BatchNorm(dtype=dtype, axis_name=axis, name=name)

        y = jnp.transpose(x, (0, 2, 3, 1)).astype(dtype)
        y = nn.relu(bn("bn1")(conv2d(_STEM_WIDTH, 3, 2, "conv1", dtype)(y), train))
        y = nn.relu(bn("bn2")(conv2d(_STEM_WIDTH, 3, 2, "conv2", dtype)(y), train))
        # layer1: stage 1's single branch, without transition or fuse.
        stage1 = cfg.stage1
        y = _residual_blocks(self, y, "layer1_", stage1.block, _STEM_WIDTH,
                             stage1.num_channels[0], stage1.num_blocks[0], scan_blocks, train,
                             dtype, axis)

        ys = [y]
        pre_channels: tuple[int, ...] = (stage1.num_channels[0] * EXPANSION[stage1.block],)
        stages = (cfg.stage2, cfg.stage3, cfg.stage4)
        for s, stage in enumerate(stages, start=2):
            channels = tuple(c * EXPANSION[stage.block] for c in stage.num_channels)
            ys = self._transition(f"transition{s - 1}", ys, pre_channels, channels,
                                  train, dtype)

            # Every module of a stage but the network's last is alike: scan them.
            alike = stage.num_modules - (1 if s == 4 else 0)
            scanned = scan_modules and alike > 1
            if scanned:
                template = HighResolutionModule(channels, stage, dtype=dtype, bn_axis_name=axis,
                                                scan_blocks=scan_blocks, in_loop=True,
                                                parent=None)
                ys = run_stacked(self, template, [f"stage{s}_{m}" for m in range(alike)],
                                  list(ys), train)
            for m in range(alike if scanned else 0, stage.num_modules):
                last_of_net = s == 4 and m == stage.num_modules - 1
                ys = HighResolutionModule(
                    channels, stage,
                    multi_scale_output=not last_of_net, dtype=dtype,
                    bn_axis_name=axis, scan_blocks=scan_blocks, name=f"stage{s}_{m}",
                )(ys, train)
            pre_channels = channels

        k = cfg.final_conv_kernel
        if k not in (1, 3):
            raise ValueError(f"model.final_conv_kernel: expected 1 or 3, got {k}")
        out = conv2d(cfg.num_joints, k, 1, "final_layer", dtype, use_bias=True)(ys[0])
        return jnp.transpose(out, (0, 3, 1, 2)).astype(jnp.float32)

    def _transition(self, name: str, ys: list[jax.Array], pre: tuple[int, ...],
                    cur: tuple[int, ...], train: bool, dtype: Any) -> list[jax.Array]:
        axis = self.bn_axis_name
        out = []
        for i, width in enumerate(cur):
            if i < len(pre):
                if width == pre[i]:
                    out.append(ys[i])
                    continue
                # The reference feeds its last branch here, which only runs when
                # that is branch i (a single input branch); branch i is the same
                # there and keeps the weights' shapes right everywhere else.
                z = conv2d(width, 3, 1, f"{name}_{i}_0", dtype)(ys[i])
                out.append(nn.relu(BatchNorm(dtype=dtype, axis_name=axis,
                                             name=f"{name}_{i}_1")(z, train)))
                continue
            z = ys[-1]
            steps = i + 1 - len(pre)
            for j in range(steps):
                w = width if j == steps - 1 else pre[-1]
                z = conv2d(w, 3, 2, f"{name}_{i}_{j}_0", dtype)(z)
                z = nn.relu(BatchNorm(dtype=dtype, axis_name=axis,
                                      name=f"{name}_{i}_{j}_1")(z, train))
            out.append(z)
        return out


def build_model(cfg: Config | ModelConfig, bn_axis_name: str | None = None) -> HRNet:
    """The HRNet of a configuration.

    Args:
      cfg: a :class:`~hrnet_jax.config.Config` (or its ``model`` section).
      bn_axis_name: mapped axis to synchronise BatchNorm statistics over in
        training (e.g. ``'batch'`` under ``jax.pmap``), or None.

    Returns:
      An :class:`HRNet`; ``model.init(rng, x, train=False)`` gives
      ``{'params', 'batch_stats'}``.
    """
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"build_model: expected a Config or ModelConfig, got {type(cfg).__name__}")
    stage1 = model_cfg.stage1
    if (stage1.num_modules, stage1.num_branches) != (1, 1):
        raise ValueError(f"model.stage1: layer1 is one module of one branch, expected "
                         f"num_modules 1 and num_branches 1, got {stage1.num_modules} and "
                         f"{stage1.num_branches}")
    for name in ("stage1", "stage2", "stage3", "stage4"):
        stage = getattr(model_cfg, name)
        if stage.block not in EXPANSION:
            raise ValueError(f"model.{name}.block: expected one of {sorted(EXPANSION)}, "
                             f"got {stage.block!r}")
        if stage.fuse_method != "SUM":
            raise ValueError(f"model.{name}.fuse_method: only 'SUM' exists, got "
                             f"{stage.fuse_method!r}")
        if not (len(stage.num_blocks) == len(stage.num_channels) == stage.num_branches):
            raise ValueError(f"model.{name}: num_branches {stage.num_branches} does not match "
                             f"num_blocks {stage.num_blocks} and num_channels "
                             f"{stage.num_channels}")
        if min(stage.num_blocks) < 1 or stage.num_modules < 1:
            raise ValueError(f"model.{name}: expected at least 1 module and 1 block per "
                             f"branch, got num_modules {stage.num_modules} and num_blocks "
                             f"{stage.num_blocks}")
    if model_cfg.dtype not in _DTYPES:
        raise ValueError(f"model.dtype: expected one of {sorted(_DTYPES)}, "
                         f"got {model_cfg.dtype!r}")
    scan_mode(model_cfg.scan)
    return HRNet(model_cfg, bn_axis_name=bn_axis_name)
