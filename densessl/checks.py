"""Tensor-contract validators, public for code built on densessl (e.g. the DPFR recipe).

Every public entry point of densessl validates its inputs with these functions, so
an error always names the argument, what was expected and what was received. Shape
errors raise :class:`ValueError`; dtype and type errors :class:`TypeError`. Checks
that read values back to the host (NaN/Inf, label range) follow
:func:`densessl.value_checks`.

Example:
    >>> import torch
    >>> from densessl.checks import check_features
    >>> check_features("features", torch.zeros(2, 3))
    Traceback (most recent call last):
    ...
    ValueError: features must be a 4-D tensor [B, C, H, W], got shape (2, 3)
"""

from ._checks import *  # noqa: F401,F403
from ._checks import __all__  # noqa: F401
