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


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm running statistics."""

    batch_stats: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(cfg: Config, steps_per_epoch: int) -> optax.Schedule:
    """The reference's MultiStepLR: ``lr * lr_factor ** (number of lr_step epochs reached)``.

    The reference steps its scheduler once per epoch, so the rate changes at
    the first step of each epoch listed in ``train.lr_step`` (0-based epochs).
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    boundaries = {int(e) * steps_per_epoch: float(cfg.train.lr_factor)
                  for e in sorted(cfg.train.lr_step) if int(e) > 0}
    return optax.piecewise_constant_schedule(float(cfg.train.lr), boundaries)


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
    """Freshly initialised ``{'params', 'batch_stats'}`` (the reference's init_weights)."""
    width, height = cfg.model.image_size
    model = build_model(cfg)
    dummy = jnp.zeros((1, 3, height, width), jnp.float32)
    variables = jax.jit(lambda r: model.init(r, dummy, train=False))(rng)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def create_train_state(cfg: Config, variables: dict[str, Any],
                       steps_per_epoch: int) -> tuple[TrainState, optax.Schedule]:
    """A step-0 train state over ``variables``, and its learning-rate schedule."""
    schedule = learning_rate_schedule(cfg, steps_per_epoch)
    model = build_model(cfg)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=make_optimizer(cfg, schedule),
    )
    return state, schedule


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
