"""A short version of the CPU quickstart really learns: the loss falls and PCKh rises.

The full quickstart (README) trains ``hrnet_quickstart`` on the synthetic
MPII-format set to PCKh@0.5 Mean >= 80; this test runs the same preset and
code path for a few minutes on a smaller set.
"""

from __future__ import annotations

import json
import os

import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.evaluation import validate
from hrnet_jax.train.loop import train
from hrnet_jax.train.state import init_variables

pytestmark = pytest.mark.slow


def test_the_quickstart_preset_learns_the_synthetic_set(tmp_path):
    root = str(tmp_path / "synthetic_mpii")
    cfg = override(get_config("hrnet_quickstart"), [
        f"dataset.root={root}", "dataset.synthetic_num_train=640",
        "dataset.synthetic_num_valid=96", "train.end_epoch=3", "train.lr_step=[2]",
        "print_freq=10", "workers=0"])
    workdir = str(tmp_path / "run")
    result = train(cfg, workdir, show_progress=False)

    import jax

    untrained = validate(cfg, init_variables(cfg, jax.random.key(cfg.seed)),
                         show_progress=False)
    trained = result.last_evaluation
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [x["train_loss"] for x in lines if "train_loss" in x]  # every 10 steps
    # Batch losses wobble by a few percent; the last three together sit well below the first.
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
    assert trained.table["Mean"] > untrained.table["Mean"] + 20.0, (
        untrained.table["Mean"], trained.table["Mean"])
