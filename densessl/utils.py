"""Small ``nn.Module`` helpers shared by densessl and code built on it."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "unwrap_model"]


@contextlib.contextmanager
def eval_mode(*objects: object) -> Iterator[None]:
    """Put every submodule of the given modules in eval mode; restore each one's own flag.

    Flags are restored per submodule (not with ``.train(mode)``, which would overwrite a
    mixed train/eval tree with one value), also when the block raises. Non-module
    objects are left alone.

    Args:
        objects: modules (or anything else, ignored).

    Shapes:
        - no tensors: it only flips ``training`` flags

    Example:
        >>> from torch import nn
        >>> from densessl.utils import eval_mode
        >>> net = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)).train()
        >>> _ = net[1].eval()  # a mixed tree
        >>> with eval_mode(net):
        ...     print([m.training for m in net.modules()])
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    saved = [(m, m.training) for obj in objects if isinstance(obj, nn.Module) for m in obj.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` and ``torch.compile`` wrappers.

    Strips ``.module`` and ``._orig_mod`` in any nesting order; a plain module is returned
    as it is.

    Args:
        model: a module, wrapped or not.

    Shapes:
        - no tensors

    Example:
        >>> from torch import nn
        >>> from densessl.utils import unwrap_model
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = typing.cast(nn.Module, model._orig_mod)
        else:
            return model
