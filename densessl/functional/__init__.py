"""Pure functions: the math behind every densessl module.

Modules in :mod:`densessl` hold parameters and state and call these functions; tests
and users can target either.
"""

from ._alignment import *  # noqa: F401,F403
from ._alignment import __all__ as _alignment_all
from ._contrast import *  # noqa: F401,F403
from ._contrast import __all__ as _contrast_all
from ._density import *  # noqa: F401,F403
from ._density import __all__ as _density_all
from ._ema import *  # noqa: F401,F403
from ._ema import __all__ as _ema_all
from ._entropy import *  # noqa: F401,F403
from ._entropy import __all__ as _entropy_all
from ._labels import *  # noqa: F401,F403
from ._labels import __all__ as _labels_all
from ._perturbation import *  # noqa: F401,F403
from ._perturbation import __all__ as _perturbation_all
from ._pixels import *  # noqa: F401,F403
from ._pixels import __all__ as _pixels_all
from ._ranking import *  # noqa: F401,F403
from ._ranking import __all__ as _ranking_all

__all__ = sorted(
    [
        *_alignment_all,
        *_contrast_all,
        *_density_all,
        *_ema_all,
        *_entropy_all,
        *_labels_all,
        *_perturbation_all,
        *_pixels_all,
        *_ranking_all,
    ]
)
