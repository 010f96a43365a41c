"""Evaluation tables printed as the reference logs them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def format_table(results: Mapping[str, Any], arch: str = "pose_hrnet") -> str:
    """The table as the reference logs it: a header row, a rule, a row of values.

    Only scalar entries are printed (the PCKh curve and per-joint extras of
    :func:`~hrnet_jax.metrics.mpii_evaluate` are skipped); values with 3 decimals. Architecture
    names longer than 15 characters are shortened as in the reference.

    Example::

      | Arch | Head | Shoulder | ... | Mean | Mean@0.1 | Mean@0.1(true) |
      |---|---|---|...|---|
      | pose_hrnet | 97.101 | 95.941 | ... | 90.330 | 38.110 | 33.012 |
    """
    scalars = [(k, v) for k, v in results.items() if np.ndim(v) == 0]
    if len(arch) > 15:
        arch = arch[:8] + "..."
    header = "| Arch " + " ".join(f"| {name}" for name, _ in scalars) + " |"
    rule = "|---" * (len(scalars) + 1) + "|"
    row = "| " + arch + " " + " ".join(f"| {float(v):.3f}" for _, v in scalars) + " |"
    return "\n".join([header, rule, row])


# The MPII table was the first one printed; the name stays.
format_pckh_table = format_table
