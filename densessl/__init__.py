"""densessl: density-aware semi-supervised segmentation primitives for PyTorch."""

from . import functional, metrics
from ._checks import finite_checks, finite_checks_enabled
from .contrast import *  # noqa: F401,F403
from .density import *  # noqa: F401,F403
from .flows import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403
from .pseudo_label import *  # noqa: F401,F403
from .teacher import *  # noqa: F401,F403

__version__ = "0.1.0"
