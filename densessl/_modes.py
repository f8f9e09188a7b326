"""Temporarily switching modules to eval mode, restoring each submodule's own flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*objects: object) -> Iterator[None]:
    """Put every submodule of the given modules in eval mode; restore each one's own flag.

    Flags are restored per submodule (not with ``.train(mode)``, which would overwrite a
    mixed train/eval tree with one value), also when the block raises. Non-module
    objects are left alone.
    """
    saved = [(m, m.training) for obj in objects if isinstance(obj, nn.Module) for m in obj.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag
