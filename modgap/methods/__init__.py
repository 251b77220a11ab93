"""Training methods, one file each, behind one hook interface (``base.Method``), found by name in ``METHODS``."""

from . import joint, lfm, unimodal  # noqa: F401  (registers the methods)
from .base import METHODS, Losses, Method, StepContext, build_method

__all__ = ["METHODS", "Losses", "Method", "StepContext", "build_method"]
