"""densessl: density-aware semi-supervised segmentation primitives for PyTorch.

The five primitives — :class:`FlowDensityHead`, :class:`DensityPerturbation`,
:class:`HardAnchorContrast`, :class:`EMATeacher`, :class:`EntropyPseudoLabeler` — are
``nn.Module`` s that compose into any segmentation network; their math lives in
:mod:`densessl.functional`, instance-segmentation metrics in :mod:`densessl.metrics`.
"""

from . import checks, functional, metrics, utils
from ._checks import value_checks, value_checks_enabled
from .alignment import DistributionAlignment
from .contrast import HardAnchorContrast, ProjectionHead
from .density import FlowDensityHead, GaussianMixturePrior
from .flows import (
    ActNorm,
    AffineCoupling,
    FlowSequence,
    InvertibleLinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    ZukoTransform,
    fixed_lu_weights,
    glow_flow,
)
from .perturbation import DensityPerturbation
from .pseudo_label import EntropyPseudoLabeler, PseudoLabels
from .teacher import EMATeacher

__version__ = "0.1.0"

__all__ = [
    # the five primitives
    "FlowDensityHead",
    "DensityPerturbation",
    "HardAnchorContrast",
    "EMATeacher",
    "EntropyPseudoLabeler",
    # their companions
    "DistributionAlignment",
    "GaussianMixturePrior",
    "ProjectionHead",
    "PseudoLabels",
    # flow blocks (nflows Transform interface)
    "ActNorm",
    "AffineCoupling",
    "FlowSequence",
    "InvertibleLinear",
    "Permutation",
    "RandomPermutation",
    "ReversePermutation",
    "ZukoTransform",
    "fixed_lu_weights",
    "glow_flow",
    # submodules and switches
    "checks",
    "functional",
    "metrics",
    "utils",
    "value_checks",
    "value_checks_enabled",
    "__version__",
]
