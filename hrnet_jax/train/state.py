"""The train state and the reference's optimisers and step learning-rate schedule."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from hrnet_jax.config import Config
from hrnet_jax.models import build_model
from hrnet_jax.models.layers import INITIAL_CONSTANTS, KERNEL_STDDEV


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm running statistics."""

    batch_stats: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def lr_boundaries(cfg: Config, steps_per_epoch: int) -> np.ndarray:
    """(K,) int32: the steps at which the rate is multiplied by ``train.lr_factor``.

    The reference steps its scheduler once per epoch, so the rate changes at
    the first step of each epoch listed in ``train.lr_step`` (0-based epochs;
    epoch 0 and below never drop, an epoch listed twice drops twice, as in
    PyTorch's MultiStepLR).
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    epochs = sorted(int(e) for e in cfg.train.lr_step if int(e) > 0)
    return np.asarray([e * steps_per_epoch for e in epochs], np.int32).reshape(-1)


def step_schedule(cfg: Config, boundaries: Any) -> optax.Schedule:
    """``lr * lr_factor ** (number of boundaries <= step)``, in float32.

    The factor is multiplied in once per boundary passed, in order, which is
    ``optax.piecewise_constant_schedule`` bit for bit. ``boundaries`` (K,)
    int32 may be traced: a compiled train step that takes them as an argument
    serves every dataset size and batch count.
    """
    rate, factor = float(cfg.train.lr), float(cfg.train.lr_factor)
    boundaries = jnp.asarray(boundaries, jnp.int32)

    def schedule(count: Any) -> jax.Array:
        value = jnp.asarray(rate, jnp.float32)
        for k in range(boundaries.shape[0]):
            value = jnp.where(count >= boundaries[k], value * factor, value)
        return value

    return schedule


def learning_rate_schedule(cfg: Config, steps_per_epoch: int) -> optax.Schedule:
    """The reference's MultiStepLR over steps: :func:`step_schedule` at
    :func:`lr_boundaries`."""
    return step_schedule(cfg, lr_boundaries(cfg, steps_per_epoch))


def make_optimizer(cfg: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam without weight decay or SGD with coupled weight decay, as the reference builds them."""
    name = cfg.train.optimizer.lower()
    if name == "adam":
        # torch.optim.Adam defaults; the reference passes no weight decay to Adam.
        return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
    if name == "sgd":
        # torch.optim.SGD adds wd * param to the gradient before momentum.
        return optax.chain(
            optax.add_decayed_weights(float(cfg.train.wd)),
            optax.sgd(schedule, momentum=float(cfg.train.momentum), nesterov=cfg.train.nesterov),
        )
    raise ValueError(f"train.optimizer: expected 'adam' or 'sgd', got {cfg.train.optimizer!r}")


def init_variables(cfg: Config, rng: jax.Array) -> dict[str, Any]:
    """Freshly initialised ``{'params', 'batch_stats'}`` (the reference's init_weights).

    Every convolution kernel is drawn from N(0, 0.001^2); BatchNorm scales and
    running variances start at 1, biases and running means at 0
    (:data:`~hrnet_jax.models.layers.KERNEL_STDDEV` and
    :data:`~hrnet_jax.models.layers.INITIAL_CONSTANTS`). All kernels come from
    one ``jax.random.normal`` draw of ``rng``, cut in the order of the
    flattened tree, so what XLA compiles is one small program whatever the
    network: the network's own ``init`` draws each variable in its own part of
    one large program, which took half a minute to compile for HRNet-W32 on a
    CPU and about two minutes on an H200. The tree is the network's, the same
    for every ``model.scan``.

    Raises:
      ValueError: a variable with no known initial value (a layer this rule
        does not cover).
    """
    width, height = cfg.model.image_size
    model = build_model(cfg)
    abstract = jax.eval_shape(lambda r: model.init(
        r, jnp.zeros((1, 3, height, width), jnp.float32), train=False), rng)
    tree = {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [str(getattr(path[-1], "key", path[-1])) for path, _ in leaves]
    unknown = [jax.tree_util.keystr(path) for (path, _), name in zip(leaves, names, strict=True)
               if name != "kernel" and name not in INITIAL_CONSTANTS]
    if unknown:
        raise ValueError(f"init_variables: no initial value for {', '.join(unknown)} (known: "
                         f"kernel, {', '.join(INITIAL_CONSTANTS)})")
    total = sum(leaf.size for (_, leaf), name in zip(leaves, names, strict=True)
                if name == "kernel")
    draw = jax.jit(lambda key: KERNEL_STDDEV * jax.random.normal(key, (total,), jnp.float32))
    kernels = np.asarray(draw(rng))
    values, offset = [], 0
    for (_, leaf), name in zip(leaves, names, strict=True):
        if name == "kernel":
            values.append(kernels[offset:offset + leaf.size].reshape(leaf.shape))
            offset += leaf.size
        else:
            values.append(np.full(leaf.shape, INITIAL_CONSTANTS[name], leaf.dtype))
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, values))


def create_train_state(cfg: Config, variables: dict[str, Any],
                       steps_per_epoch: int) -> TrainState:
    """A step-0 train state over ``variables``, its optimiser on the
    :func:`learning_rate_schedule` of ``steps_per_epoch``."""
    model = build_model(cfg)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=make_optimizer(cfg, learning_rate_schedule(cfg, steps_per_epoch)),
    )


def trained_scale_variables(cfg: Config, seed: int = 0) -> dict[str, Any]:
    """Random variables at the scale of trained ones, for timing and for checking exports.

    He-normal kernels, BatchNorm scale 1 + 0.1 N(0, 1), bias, mean 0.1 N(0, 1)
    and variance 1 + 0.5 |N(0, 1)|: activations stay in float32's normal range
    as a trained network's do. (The N(0, 0.001^2) initialisation shrinks them
    towards subnormal numbers, which some CPU kernels handle far more slowly.)
    """
    width, height = cfg.model.image_size
    abstract = jax.eval_shape(lambda: build_model(cfg).init(
        jax.random.key(0), np.zeros((1, 3, height, width), np.float32), train=False))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: Any) -> np.ndarray:
        noise = rng.standard_normal(leaf.shape, np.float32)
        name = path[-1].key
        if name == "kernel":
            return noise * np.float32(np.sqrt(2.0 / np.prod(leaf.shape[:-1])))
        if name == "var":
            return 1 + 0.5 * np.abs(noise)
        return (name == "scale") + 0.1 * noise

    return jax.tree_util.tree_map_with_path(draw, abstract)
