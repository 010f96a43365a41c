"""The reference training recipe: optimiser, learning-rate steps, loss choice."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.losses import loss_from_config
from hrnet_jax.train.state import (
    learning_rate_schedule,
    lr_boundaries,
    make_optimizer,
    step_schedule,
)


def test_learning_rate_is_1e_3_until_epoch_170_then_1e_4_then_1e_5_from_epoch_200():
    cfg = get_config("hrnet_w32")
    schedule = learning_rate_schedule(cfg, steps_per_epoch=10)
    # Epoch e covers steps 10e .. 10e + 9.
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(1699)) == pytest.approx(1e-3)
    assert float(schedule(1700)) == pytest.approx(1e-4)
    assert float(schedule(1999)) == pytest.approx(1e-4)
    assert float(schedule(2000)) == pytest.approx(1e-5)
    assert float(schedule(2099)) == pytest.approx(1e-5)


def test_the_rate_drops_by_a_float32_multiplication_per_boundary_passed():
    cfg = get_config("hrnet_w32")  # lr 1e-3, factor 0.1, epochs 170 and 200
    schedule = learning_rate_schedule(cfg, steps_per_epoch=10)
    once = np.float32(1e-3) * np.float32(0.1)
    twice = once * np.float32(0.1)
    for step, expected in ((1699, np.float32(1e-3)), (1700, once), (1999, once), (2000, twice)):
        value = schedule(jnp.int32(step))
        assert value.dtype == jnp.float32 and value == expected, step
    # optax's piecewise-constant schedule gives the same bits.
    reference = optax.piecewise_constant_schedule(1e-3, {1700: 0.1, 2000: 0.1})
    steps = jnp.arange(1690, 2010, dtype=jnp.int32)
    np.testing.assert_array_equal(jax.vmap(schedule)(steps), jax.vmap(reference)(steps))


def test_an_epoch_listed_twice_drops_the_rate_twice_and_epoch_zero_never():
    # PyTorch's MultiStepLR counts milestones; a scheduler stepped after each epoch never
    # reaches a milestone at epoch 0.
    cfg = override(get_config("hrnet_w32"), {"train.lr": 1.0, "train.lr_factor": 0.5,
                                             "train.lr_step": [0, 3, 3]})
    np.testing.assert_array_equal(lr_boundaries(cfg, steps_per_epoch=4), [12, 12])
    schedule = learning_rate_schedule(cfg, steps_per_epoch=4)
    assert [float(schedule(s)) for s in (0, 11, 12)] == [1.0, 1.0, 0.25]


def test_boundaries_given_as_data_give_one_program_for_every_dataset_size():
    cfg = get_config("hrnet_w32")

    def rate(step, boundaries):
        return step_schedule(cfg, boundaries)(step)

    compiled = jax.jit(rate).lower(jnp.int32(0), lr_boundaries(cfg, 10)).compile()
    for steps_per_epoch in (3, 10, 500):
        boundaries = lr_boundaries(cfg, steps_per_epoch)
        for step in (170 * steps_per_epoch - 1, 170 * steps_per_epoch, 200 * steps_per_epoch):
            assert compiled(jnp.int32(step), boundaries) == \
                learning_rate_schedule(cfg, steps_per_epoch)(step)


def test_adam_first_step_moves_each_parameter_by_the_learning_rate_and_ignores_wd():
    # Adam's first update is lr * g / (|g| + eps) = lr * sign(g); weight decay would add to it.
    cfg = override(get_config("hrnet_w32"), {"train.lr": 0.5, "train.wd": 0.3})
    tx = make_optimizer(cfg, learning_rate_schedule(cfg, 1))
    params = {"w": jnp.array([2.0, -2.0])}
    updates, _ = tx.update({"w": jnp.array([0.1, -4.0])}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.5, 0.5], rtol=1e-5)


def test_sgd_adds_weight_decay_to_the_gradient_before_momentum():
    cfg = override(get_config("hrnet_w32"),
                   {"train.optimizer": "sgd", "train.lr": 0.1, "train.wd": 0.01,
                    "train.momentum": 0.9})
    tx = make_optimizer(cfg, learning_rate_schedule(cfg, 1))
    params = {"w": jnp.array([2.0])}
    state = tx.init(params)
    grads = {"w": jnp.array([1.0])}
    # step 1: buf = g + wd*w = 1.02; update = -0.1 * 1.02
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.102], rtol=1e-6)
    # step 2 (same params): buf = 0.9 * 1.02 + 1.02 = 1.938; update = -0.1938
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.1938], rtol=1e-6)


def test_unknown_optimizer_is_named():
    cfg = override(get_config("hrnet_w32"), {"train.optimizer": "lamb"})
    with pytest.raises(ValueError, match="train.optimizer.*'lamb'"):
        make_optimizer(cfg, learning_rate_schedule(cfg, 1))


def test_training_loss_is_joints_mse_or_ohkm_as_configured():
    out = np.zeros((1, 16, 2, 2), np.float32)
    tgt = np.zeros((1, 16, 2, 2), np.float32)
    tgt[0, 0] = 1.0  # joint 0 is off by 1 on every pixel: 0.5 * 1 = 0.5 for that joint
    w = np.ones((1, 16, 1), np.float32)
    mse = loss_from_config(get_config("hrnet_w32"))(out, tgt, w)
    assert float(mse) == pytest.approx(0.5 / 16)
    ohkm_cfg = override(get_config("hrnet_w32"), {"loss.use_ohkm": True, "loss.topk": 8})
    ohkm = loss_from_config(ohkm_cfg)(out, tgt, w)
    assert float(ohkm) == pytest.approx(0.5 / 8)
    assert jax.numpy.isfinite(ohkm)
