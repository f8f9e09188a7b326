"""Files of the recipe: the one atomic writer, the one checkpoint reader, and the one run loader.

Every file the recipe writes (checkpoints, ``metrics.json``, ``log.jsonl`` rewrites,
pictures) goes through :func:`atomic_write`: it is written to a temporary file in the same
folder and renamed over the target, so a reader — or a run resumed after a crash — never
sees half a file. Checkpoints are read with ``torch.load(..., weights_only=True)``: no
pickled code runs. :func:`load_run` rebuilds a run's networks (student, teacher, flow) from
either file a run writes (``checkpoint.pt`` or the ``model.pt`` export): evaluation, ``predict``,
``suggest``, ``compare`` and the benchmarks all load through it.
"""

from __future__ import annotations

__all__ = [
    "Run",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "inference_export",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_run",
]

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from torch import nn

import examples.dpfr_gland.config  # the full name in Run's annotation: the docs resolve it to one class

from .config import config_from_dict


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


def inference_export(
    state: dict[str, torch.Tensor], config: dict[str, Any], weights: str = "student", dtype: torch.dtype = torch.float16
) -> dict[str, Any]:
    """What a user needs to segment images: one network's weights and the config that rebuilds it.

    Floating-point tensors are stored as ``dtype`` (float16 halves the file; loading copies them
    back into the float32 network, see
    :func:`load_run`); integer buffers stay as they are.
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


# ----------------------------------------------------------------------------- the run loader


class Run(NamedTuple):
    """A run's networks as its checkpoint holds them, in eval mode (``None``: not asked for).

    Its fields: ``config``, the run's :class:`~examples.dpfr_gland.config.TrainConfig`; ``stored``, the
    config dict as stored in the file; ``student``, the student CE-Net; ``teacher``, the EMA
    teacher's CE-Net (resume checkpoints of semi-supervised runs, or a teacher export); ``flow``,
    the :class:`densessl.FlowDensityHead` (resume checkpoints of ``fdp``/``dpfr``); ``device``,
    where the networks are.
    """

    config: examples.dpfr_gland.config.TrainConfig
    stored: dict[str, Any]
    student: nn.Module | None
    teacher: nn.Module | None
    flow: nn.Module | None
    device: torch.device


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo wrappers' key prefixes: DDP ``module.``, ``torch.compile`` ``_orig_mod.``, EMATeacher ``model.``."""
    state = {k: v for k, v in state.items() if k != "num_updates"}  # EMATeacher's step counter
    changed = True
    while changed and state:
        changed = False
        for prefix in ("module.", "_orig_mod.", "model."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _fit(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    result = module.load_state_dict(_strip_prefixes(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} ({what}) does not fit: missing keys "
            f"{result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, unexpected keys "
            f"{result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}"
        )


def load_run(path: str | Path, device: str | torch.device = "cpu", networks: Sequence[str] = ("student",)) -> Run:
    """Rebuild the ``networks`` of a run from its ``checkpoint.pt`` or its ``model.pt`` export.

    The file is read with ``weights_only=True``; its ``"config"`` dict rebuilds the CE-Net
    (``backbone``, ``perturb_at``, the task's classes) and the flow (``flow_depth``,
    ``flow_hidden``). A ``model.pt`` export holds one network (``"model"``, named by its
    ``"weights"``); a resume checkpoint holds ``"student"`` and, as the method has them,
    ``"teacher"`` and ``"flow"``. DDP, ``torch.compile`` and ``EMATeacher`` key prefixes are removed.

    Args:
        path: the checkpoint file.
        device: where to put the networks.
        networks: which to build, of ``"student"``, ``"teacher"``, ``"flow"``.

    Returns:
        A :class:`Run`, the networks in eval mode (float32).

    Shapes:
        - the networks map ``[B, 3, H, W]`` float images (``H``, ``W`` multiples of 32) to
          ``[B, K, H, W]`` logits; the flow scores ``[B, C, h, w]`` features at the density site.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown network name; the file lacks a config or a network asked for (the
            keys it has are named, and which file holds it); weights that do not fit (the missing and
            unexpected keys are named).

    Example:
        >>> load_run("no/such/file.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint no/such/file.pt does not exist
    """
    path = Path(path)
    unknown = [n for n in networks if n not in ("student", "teacher", "flow")]
    if unknown:
        raise ValueError(f"networks must be of 'student', 'teacher', 'flow', got {unknown!r}")
    checkpoint = load_checkpoint(path, map_location="cpu")
    stored = checkpoint.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"checkpoint {path} must hold a 'config' dict, got keys {sorted(checkpoint)}")
    if "backbone" not in stored:
        raise ValueError(f"checkpoint {path} config lacks 'backbone', got keys {sorted(stored)}")
    stored = {k: v for k, v in stored.items() if not k.startswith("_")}
    config = config_from_dict(stored)
    exported = checkpoint.get("weights") if "model" in checkpoint else None  # a model.pt names its network
    from .model import CENet  # imported here: the file helpers above do not need the model

    built: dict[str, nn.Module | None] = {"student": None, "teacher": None, "flow": None}
    for name in networks:
        if name == "flow":
            continue
        if isinstance(exported, str) and name != exported:
            raise ValueError(
                f"checkpoint {path} is an inference export of the {exported} only, got {name!r}; "
                f"use the run's checkpoint.pt for the other network"
            )
        key = next((k for k in (name, "model") if isinstance(checkpoint.get(k), dict)), name)
        state = checkpoint.get(key)
        if not isinstance(state, dict):
            raise ValueError(
                f"checkpoint {path} must hold a {name!r} (or 'model') state dict and a 'config' dict, "
                f"got keys {sorted(checkpoint)}"
            )
        model = CENet(num_classes=config.num_classes, backbone=config.backbone, perturb_at=config.perturb_at)
        _fit(
            model,
            state,
            path,
            f"{key!r} into CENet({config.backbone}, {config.num_classes} classes, perturb_at={config.perturb_at!r})",
        )
        built[name] = model.to(device).eval()
    if "flow" in networks:
        if not isinstance(checkpoint.get("flow"), dict):
            raise ValueError(
                f"checkpoint {path} holds no flow (keys {sorted(checkpoint)}): the flow is in the "
                f"checkpoint.pt of an fdp or dpfr run (the model.pt export keeps one network only)"
            )
        import densessl

        channels = (
            CENet(
                num_classes=config.num_classes, backbone=config.backbone, perturb_at=config.perturb_at
            ).feature_channels
            if built["student"] is None and built["teacher"] is None
            else next(m for m in (built["student"], built["teacher"]) if m).feature_channels
        )
        flow = densessl.FlowDensityHead(
            channels, config.num_classes, depth=config.flow_depth, hidden=config.flow_hidden, ignore_index=255
        )
        _fit(flow, checkpoint["flow"], path, "'flow'")
        built["flow"] = flow.to(device).eval()
    return Run(config, stored, built["student"], built["teacher"], built["flow"], torch.device(device))


def load_checkpoint_model(
    path: str | Path, device: str | torch.device = "cpu", weights: str = "student"
) -> tuple[nn.Module, dict]:
    """One network of a run, in eval mode, and its stored config (:func:`load_run` of one network).

    Args:
        path: the checkpoint file (``checkpoint.pt`` or a ``model.pt`` export).
        device: where to put the model.
        weights: ``"student"`` (the paper infers with the student) or ``"teacher"``.

    Returns:
        ``(model, config)``: the CE-Net and the config dict as stored.

    Shapes:
        - the model maps ``[B, 3, H, W]`` float images to ``[B, K, H, W]`` logits.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``weights`` is neither, or :func:`load_run`'s errors.

    Example:
        >>> load_checkpoint_model("no/such/file.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint no/such/file.pt does not exist
    """
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights must be 'student' or 'teacher', got {weights!r}")
    run = load_run(path, device, (weights,))
    model = run.student if weights == "student" else run.teacher
    assert model is not None
    return model, run.stored
