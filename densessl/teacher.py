"""The Mean-Teacher: an exponential moving average of the student network."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_number
from .functional._ema import ema_decay, ema_update_
from .utils import unwrap_model

__all__ = ["EMATeacher"]

_BUFFER_MODES = ("copy", "ema", "none")


def _distributed() -> bool:
    """Whether this process is one of several in an initialised ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EMATeacher(nn.Module):
    r"""A frozen copy of the student that follows it by exponential moving average.

    ``update(student)`` is update number ``t`` (``t`` = updates done before it, kept in
    the ``num_updates`` buffer, so it is saved in ``state_dict``; a host-side copy is
    used in ``update`` so that no step reads the device) and applies
    :math:`\theta_T \leftarrow d_t\,\theta_T + (1 - d_t)\,\theta_S` with
    :math:`d_t = \min(1 - 1/(t+1),\ \text{decay})` to every parameter, using fused
    ``torch._foreach_*`` kernels (:func:`densessl.functional.ema_update_`). The first
    update therefore copies the student, and the early teacher is the plain mean of the
    students seen so far rather than a mix dominated by the random initialisation.

    Buffers (BatchNorm running statistics, ``num_batches_tracked``) follow ``buffers``:
    ``"copy"`` takes the student's, ``"ema"`` averages floating buffers with the same
    ``d_t`` and copies integer ones, ``"none"`` leaves the teacher's untouched.

    Under ``torch.distributed`` (an initialised process group of more than one process),
    ``sync_buffers`` broadcasts the teacher's buffers from rank 0 after each update, as
    ``DistributedDataParallel(broadcast_buffers=True)`` does for the student before each
    forward: every rank's student updates its BatchNorm statistics on its own batch, so copied
    or averaged statistics would otherwise differ per rank, and with them the pseudo labels.
    Parameters need no sync: DDP keeps the students equal and the EMA is deterministic.

    The student is unwrapped from ``DistributedDataParallel``/``DataParallel`` and
    ``torch.compile`` both at construction and at every update, so either the wrapped
    or the plain model may be passed. The teacher's parameters have
    ``requires_grad=False``; it starts in the student's train/eval mode (call
    ``.eval()``/``.train()`` on it as your recipe needs), and ``forward`` runs it under
    ``torch.no_grad()``.

    Args:
        student: the network to follow (possibly DDP- or compile-wrapped).
        decay: long-run EMA decay in ``[0, 1]``.
        buffers: ``"copy"``, ``"ema"`` or ``"none"``.
        sync_buffers: under ``torch.distributed``, broadcast the teacher's buffers from rank 0
            after each update (no effect in one process).

    Shapes:
        - forward inputs/outputs: whatever the student takes and returns

    Raises:
        TypeError: ``student`` is not an ``nn.Module`` or ``decay`` not a number.
        ValueError: ``decay`` outside ``[0, 1]`` or an unknown ``buffers`` mode; at
            ``update``, a student whose parameter/buffer names, shapes, dtypes or
            devices differ from the teacher's.

    References:
        Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017.

    Example:
        >>> import torch
        >>> from densessl import EMATeacher
        >>> student = torch.nn.Linear(2, 1)
        >>> teacher = EMATeacher(student, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = student.weight.fill_(1.0)
        >>> teacher.update(student)  # t = 0: decay 0, a copy
        >>> teacher.model.weight
        Parameter containing:
        tensor([[1., 1.]])
        >>> with torch.no_grad():
        ...     _ = student.weight.fill_(3.0)
        >>> teacher.update(student)  # t = 1: decay 1/2
        >>> teacher.model.weight.flatten().tolist(), int(teacher.num_updates)
        ([2.0, 2.0], 2)
    """

    num_updates: torch.Tensor

    def __init__(
        self, student: nn.Module, decay: float = 0.99, buffers: str = "copy", sync_buffers: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(sync_buffers, bool):
            raise TypeError(f"sync_buffers must be a bool, got {type(sync_buffers).__name__}")
        self.sync_buffers = sync_buffers
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        self.decay = float(check_number("decay", decay, low=0.0, high=1.0))
        if buffers not in _BUFFER_MODES:
            raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}")
        self.buffers_mode = buffers
        self.model = copy.deepcopy(unwrap_model(student))
        self.model.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Host-side copy of num_updates: the decay schedule needs t as a Python number,
        # and reading the buffer back every step would sync the device. Refreshed from
        # the buffer when a state dict is loaded.
        self._step = 0

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._step = int(self.num_updates)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, buffers={self.buffers_mode!r}, sync_buffers={self.sync_buffers}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher under ``torch.no_grad()``; arguments go to the student's ``forward``."""
        with torch.no_grad():
            return self.model(*args, **kwargs)

    @staticmethod
    def _paired(
        kind: str, teacher: Sequence[tuple[str, torch.Tensor]], student: Sequence[tuple[str, torch.Tensor]]
    ) -> None:
        """Raise a ``ValueError`` naming the first mismatch between two (name, tensor) lists."""
        t_names, s_names = [n for n, _ in teacher], [n for n, _ in student]
        if t_names != s_names:
            missing = sorted(set(t_names) - set(s_names))
            extra = sorted(set(s_names) - set(t_names))
            raise ValueError(
                f"student must have the teacher's {kind} (same names, same order); "
                f"missing: {missing[:5]}, unexpected: {extra[:5]}" + ("" if missing or extra else "; the order differs")
            )
        for (name, t), (_, s) in zip(teacher, student):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                raise ValueError(
                    f"student {kind[:-1]} {name!r} must have shape {tuple(t.shape)}, dtype {t.dtype}, "
                    f"device {t.device} like the teacher's, got {tuple(s.shape)}, {s.dtype}, {s.device}"
                )

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the teacher one EMA step towards ``student`` and count the step.

        Args:
            student: the network the teacher was built from (wrapped or not), after
                its optimiser step.

        Raises:
            TypeError: ``student`` is not an ``nn.Module``.
            ValueError: its parameters or buffers differ from the teacher's in names,
                shapes, dtypes or devices.

        Example:
            >>> import torch
            >>> from densessl import EMATeacher
            >>> net = torch.nn.BatchNorm1d(2)
            >>> teacher = EMATeacher(net, buffers="ema")
            >>> teacher.update(net)
            >>> int(teacher.num_updates)
            1
        """
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        student = unwrap_model(student)
        t_params, s_params = list(self.model.named_parameters()), list(student.named_parameters())
        self._paired("parameters", t_params, s_params)
        t_bufs, s_bufs = list(self.model.named_buffers()), list(student.named_buffers())
        if self.buffers_mode != "none":
            self._paired("buffers", t_bufs, s_bufs)

        decay = ema_decay(self._step, self.decay)
        ema_update_([p for _, p in t_params], [p.detach() for _, p in s_params], decay)
        if self.buffers_mode == "copy" and t_bufs:
            torch._foreach_copy_([b for _, b in t_bufs], [b for _, b in s_bufs])
        elif self.buffers_mode == "ema":
            floating = [(t, s) for (_, t), (_, s) in zip(t_bufs, s_bufs) if t.is_floating_point()]
            others = [(t, s) for (_, t), (_, s) in zip(t_bufs, s_bufs) if not t.is_floating_point()]
            if floating:
                ema_update_([t for t, _ in floating], [s for _, s in floating], decay)
            if others:
                torch._foreach_copy_([t for t, _ in others], [s for _, s in others])
        if self.sync_buffers and self.buffers_mode != "none" and t_bufs and _distributed():
            for _, buffer in t_bufs:  # small (BatchNorm statistics): one broadcast each
                dist.broadcast(buffer, src=0)
        self.num_updates += 1
        self._step += 1
