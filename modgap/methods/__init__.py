"""Training methods, one file each, behind one hook interface (``base.Method``), found by name in ``METHODS``."""

from .base import METHODS, Losses, Method, StepContext
from .compose import build_method

__all__ = ["METHODS", "Losses", "Method", "StepContext", "build_method"]

from ..registry import import_submodules  # noqa: E402

import_submodules(__name__, __path__)  # every file here registers itself
