"""Network definitions."""

from hrnet_jax.models.hrnet import HRNet, build_model

__all__ = ["HRNet", "build_model"]
