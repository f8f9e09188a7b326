"""Files of the recipe: the one atomic writer, and the one checkpoint reader.

Every file the recipe writes (checkpoints, ``metrics.json``, ``log.jsonl`` rewrites,
pictures) goes through :func:`atomic_write`: it is written to a temporary file in the same
folder and renamed over the target, so a reader — or a run resumed after a crash — never
sees half a file. Checkpoints are read with ``torch.load(..., weights_only=True)``: no
pickled code runs.
"""

from __future__ import annotations

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "inference_export", "load_checkpoint"]

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(handle)`` on a temporary file, then rename it into place.

    Args:
        path: the file to (re)place; its folder is created if needed.
        write: writes the content to the binary handle it is given.

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
        >>> atomic_write(target, lambda f: f.write(b"done")).read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text.

    Example:
        >>> import tempfile, pathlib
        >>> atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "m.json", "{}").read_text()
        '{}'
    """
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (plain tensors and containers: ``weights_only`` loads it).

    Example:
        >>> import tempfile, pathlib, torch
        >>> path = atomic_save({"w": torch.ones(2)}, pathlib.Path(tempfile.mkdtemp()) / "c.pt")
        >>> load_checkpoint(path)["w"].tolist()
        [1.0, 1.0]
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def inference_export(state: dict[str, torch.Tensor], config: dict[str, Any], weights: str = "student",
                     dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """What a user needs to segment images: one network's weights and the config that rebuilds it.

    Floating-point tensors are stored as ``dtype`` (float16 halves the file; loading copies them
    back into the float32 network, see
    :func:`examples.dpfr_gland.evaluate.load_checkpoint_model`); integer buffers stay as they are.
    No optimiser state, no teacher, no flow: for the CPU demo's ResNet-34 CE-Net (29 M parameters)
    this is about 58 MB against the resume checkpoint's few hundred.

    Args:
        state: the network's state dict.
        config: the run's configuration as a dict (``backbone``, ``perturb_at``, ... ).
        weights: which network it is (``"student"`` or ``"teacher"``), recorded in the file.
        dtype: the storage type of floating-point tensors.

    Returns:
        ``{"model": state, "config": config, "weights": weights, "format": "dpfr-inference-1"}``,
        for :func:`atomic_save`.

    Example:
        >>> export = inference_export({"w": torch.ones(2), "n": torch.tensor(3)}, {"backbone": "resnet34"})
        >>> export["model"]["w"].dtype, export["model"]["n"].dtype, export["format"]
        (torch.float16, torch.int64, 'dpfr-inference-1')
    """
    model = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}
    return {"model": model, "config": dict(config), "weights": weights, "format": "dpfr-inference-1"}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (no pickled code runs).

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors.

    Returns:
        ``{"iteration", "student", "optimizer", "scaler", "config", "history", ...}``
        (plus ``teacher``, ``flow``, ``flow_optimizer``, ``projector`` as the method has them).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not hold a dict.

    Example:
        >>> load_checkpoint("no/such/checkpoint.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint no/such/checkpoint.pt does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} must hold a dict, got {type(state).__name__}")
    return state
