"""modgap: balanced multimodal classification.

LFM ("Facilitating Multimodal Classification via Dynamically Learning Modality Gap", Yang et al.,
NeurIPS 2024) with heuristic (lfm-h) and learned (lfm-lb) weights, its baselines, and an honest
evaluation protocol. Public API:

    from modgap import Config, make_config, fit             # the trainer, as `modgap train` runs it
    from modgap.methods.hypergrad import lfm_objective, AlphaLearner   # in your own loop
    from modgap.methods.schedules import matching_weight
    from modgap.methods.matching import js_divergence, info_nce
"""

# The one place the version is written: pyproject.toml reads this line (statically, without importing torch).
__version__ = "0.2.0"

from .config import Config, make_config  # noqa: E402
from .tracking import train_tracked as fit  # noqa: E402  (modgap.train stays the subpackage)

__all__ = ["Config", "make_config", "fit", "__version__"]
