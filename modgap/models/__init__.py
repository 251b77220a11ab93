"""Models: encoders (registry ENCODERS), fusions (registry FUSIONS) and the classifier."""

from .classifier import ModelOutput, MultimodalClassifier, build_model
from .encoders import ENCODERS
from .fusions import FUSIONS

__all__ = ["ModelOutput", "MultimodalClassifier", "build_model", "ENCODERS", "FUSIONS"]

from ..registry import import_submodules  # noqa: E402

import_submodules(__name__, __path__)  # every file here registers itself
