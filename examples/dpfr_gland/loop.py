"""The training run: set-up (one process or torchrun/DDP), the loop, logs, checkpoints, evaluation."""

from __future__ import annotations

__all__ = ["labelled_split", "train"]

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from densessl.utils import unwrap_model

from . import evaluate
from .batches import BatchStream, ViewDataset, _loader, build_datasets, build_test_sets
from .checkpoint import atomic_save, atomic_write_text, inference_export, load_checkpoint
from .config import TrainConfig
from .data import label_split
from .plots import draw_loss_curves
from .step import Trainer
from .tasks import task_of


def _evaluate(model: nn.Module, dataset: Any, config: TrainConfig, out: Path) -> dict[str, Any]:
    """Test metrics by :func:`examples.dpfr_gland.evaluate.evaluate`, pictures by ``save_predictions``."""
    options = config.prediction_options
    task = task_of(config)
    metrics = task.score(model, dataset, num_classes=config.num_classes, limit=config.eval_limit or None, **options)
    if config.eval_pictures and task.has_instances:
        evaluate.save_predictions(
            model, dataset, out / "predictions", limit=config.eval_pictures, progress=False, **options
        )
    return dict(metrics)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _curve_point(trainer: Trainer, test_sets: dict[str, Any], config: TrainConfig) -> list[dict[str, Any]]:
    """The scalar scores of the student (and the teacher) on every test split at the trainer's
    iteration: one row each, ``{"iteration", "split", "weights", <score>: float}`` (``eval_every``)."""
    quiet = dataclasses.replace(config, eval_pictures=0)
    rows = []
    for split, test_set in test_sets.items():
        for weights in ("student", "teacher") if trainer.teacher is not None else ("student",):
            scores = _evaluate(trainer.eval_model(weights), test_set, quiet, Path("."))
            scalars = {k: float(v) for k, v in scores.items() if _is_number(v)}
            rows.append({"iteration": trainer.iteration, "split": split, "weights": weights, **scalars})
    return rows


def labelled_split(config: TrainConfig, count: int) -> tuple[Any, Any]:
    """The labelled and unlabelled training indices: ``config.labelled`` when given, else drawn
    by :func:`~examples.dpfr_gland.data.label_split` at ``label_ratio`` with ``seed``.

    Raises:
        ValueError: a listed index outside the ``count`` training images.

    Example:
        >>> [part.tolist() for part in labelled_split(TrainConfig(labelled="3,0"), 5)]
        [[0, 3], [1, 2, 4]]
    """
    import numpy as np

    if not config.labelled:
        return label_split(count, config.label_ratio, seed=config.seed)
    chosen = sorted(int(part) for part in config.labelled.split(","))
    if chosen[-1] >= count:
        raise ValueError(f"labelled lists image {chosen[-1]}, but there are {count} training images")
    rest = [i for i in range(count) if i not in set(chosen)]
    return np.array(chosen, dtype=np.int64), np.array(rest, dtype=np.int64)


def _resolve_device(config: TrainConfig, local_rank: int, world_size: int = 1) -> torch.device:
    if world_size > 1 and config.device.startswith("cuda:"):
        raise ValueError(
            f"device={config.device!r} under torchrun: each process takes cuda:LOCAL_RANK; set "
            f"device=cuda or auto (and CUDA_VISIBLE_DEVICES to choose the cards)"
        )
    if config.device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if config.device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(config.device)


def train(
    config: TrainConfig, out: str | Path, resume: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train as ``config`` says, write checkpoints, metrics and the loss picture to ``out``.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is set up
    here (gloo on CPU, nccl on CUDA) and torn down at the end; only rank 0 writes files.

    Args:
        config: the run's configuration.
        out: the output folder (``model.pt`` — student weights and config, for inference —
            ``checkpoint.pt`` to resume, ``metrics.json``, ``losses.png``, ``log.jsonl``).
        resume: a checkpoint to continue from (its iteration, weights, optimisers, history;
            ``log.jsonl`` is rewritten from that history, dropping rows logged after it).
        progress: show a tqdm bar on rank 0.

    Returns:
        ``{"history": [...], "metrics": {...}, "iteration": int}`` (metrics on rank 0 only).

    Raises:
        ValueError: a checkpoint whose method differs from ``config.method``.
    """
    out = Path(out)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config, local_rank, world_size)
    own_group = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        return _train(config, out, resume, progress, rank, world_size, device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    out: Path,
    resume: str | Path | None,
    progress: bool,
    rank: int,
    world_size: int,
    device: torch.device,
) -> dict[str, Any]:
    main_process = rank == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    train_set, _ = build_datasets(config)
    test_sets = build_test_sets(config) if main_process else {}
    labelled_idx, unlabelled_idx = labelled_split(config, len(train_set))
    if config.semi and len(unlabelled_idx) == 0:
        raise ValueError(f"label_ratio={config.label_ratio!r} leaves no unlabelled image for {config.method!r}")
    trainer = Trainer(config, device, rank, world_size)
    history: list[dict[str, float]] = []
    curve: list[dict[str, Any]] = []  # eval_every's scores during training
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        saved_method = state.get("config", {}).get("method")
        if saved_method is not None and saved_method != config.method:
            raise ValueError(
                f"resume: checkpoint {resume} was trained with method={saved_method!r}, "
                f"the config says {config.method!r}"
            )
        trainer.load_state_dict(state)
        history = list(state.get("history", []))
        curve = list(state.get("curve", []))
    start = trainer.iteration
    pin = device.type == "cuda"
    views = dict(
        crop_size=config.crop_size,
        seed=config.seed,
        rank=rank,
        contour_width=config.contour_width,
        task=task_of(config),
        num_classes=config.num_classes,
    )
    labelled_loader = _loader(
        ViewDataset(train_set, labelled_idx, stream=0, labelled=True, **views),
        BatchStream(len(labelled_idx), config.batch_labelled, config.seed, rank, world_size, start),
        config.num_workers,
        pin,
    )
    unlabelled_loader = None
    if config.semi:
        unlabelled_loader = _loader(
            ViewDataset(train_set, unlabelled_idx, stream=1, labelled=False, **views),
            BatchStream(len(unlabelled_idx), config.batch_unlabelled, config.seed + 1, rank, world_size, start),
            config.num_workers,
            pin,
        )
    if main_process:
        atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        # A resume drops the rows logged after its checkpoint (they will be logged again); a fresh
        # run into a used folder starts a new log instead of appending to the old run's.
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        if config.eval_every:
            atomic_write_text(out / "curve.jsonl", "".join(json.dumps(row) + "\n" for row in curve))
        print(
            f"[train] {config.method} on {config.dataset}: {len(labelled_idx)} labelled / "
            f"{len(unlabelled_idx)} unlabelled images, {world_size} process(es) on {device}, "
            f"iterations {start}..{config.iterations}",
            flush=True,
        )

    def save() -> None:
        if main_process:
            state = trainer.state_dict()
            state["config"] = dataclasses.asdict(config)
            state["history"] = history
            state["curve"] = curve
            atomic_save(state, out / "checkpoint.pt")

    bar = None
    if main_process and progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc=config.method, dynamic_ncols=True, file=sys.stderr)
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    started = time.perf_counter()
    log_file = out / "log.jsonl"
    while trainer.iteration < config.iterations:
        t = trainer.iteration
        labelled = next(labelled_loader)
        unlabelled = next(unlabelled_loader) if unlabelled_loader is not None else None
        pending.append((t, trainer.step(labelled, unlabelled)))
        done = trainer.iteration
        checkpoint_due = (
            bool(config.checkpoint_every) and done % config.checkpoint_every == 0 and done < config.iterations
        )
        # Flush before every checkpoint too: rows still pending when a checkpoint is written
        # would be missing from its history (and from log.jsonl) after a resume.
        if done % config.log_every == 0 or done == config.iterations or checkpoint_due:
            rows = _gather_logs(pending, world_size, device)
            pending = []
            history.extend(rows)
            for row in rows:  # the same (all-reduced) values on every rank: all stop together
                if not all(math.isfinite(v) for v in row.values()):
                    raise FloatingPointError(f"non-finite loss at iteration {row['iteration']}: {row}")
            if main_process:
                with log_file.open("a") as handle:
                    for row in rows:
                        handle.write(json.dumps(row) + "\n")
                last = rows[-1]
                # "+ 0.0" turns the -0.0 of graph-connected zeros into 0 for the log line
                text = " ".join(f"{k}={v + 0.0:.4g}" for k, v in last.items() if k != "iteration")
                rate = (done - start) / max(time.perf_counter() - started, 1e-9)
                message = f"[train] it {done}/{config.iterations} {text} ({rate:.2f} it/s)"
                if bar is not None:
                    bar.write(message)
                else:
                    print(message, flush=True)
        if bar is not None:
            bar.update(1)
        if main_process and config.eval_every and done % config.eval_every == 0 and done < config.iterations:
            # The other ranks go on to the next step and wait for rank 0 in its first collective.
            points = _curve_point(trainer, test_sets, config)
            curve.extend(points)
            with (out / "curve.jsonl").open("a") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in points)
        if checkpoint_due:
            save()
    if bar is not None:
        bar.close()
    save()
    if main_process:  # the small file for inference (predict / evaluate): student weights + config
        atomic_save(
            inference_export(unwrap_model(trainer.student).state_dict(), dataclasses.asdict(config)), out / "model.pt"
        )
    if world_size > 1:
        # Release the other ranks before rank 0 evaluates: a long evaluation must not hold them
        # at a barrier past the collective timeout. Evaluation runs on rank 0 alone, without
        # collectives (the unwrapped networks).
        dist.barrier()
        if not main_process:
            return {"history": history, "metrics": {}, "iteration": trainer.iteration}
    metrics: dict[str, Any] = {}
    if main_process:
        if history:
            draw_loss_curves(history, out / "losses.png")
        # The student is the headline (the paper infers with it); the teacher is reported beside it.
        # Each test split is scored on its own (GlaS testA and testB); the first is the headline.
        by_split: dict[str, dict[str, Any]] = {}
        for n, (split, test_set) in enumerate(test_sets.items()):
            folder = out if n == 0 else out / split
            scores = _evaluate(trainer.eval_model("student"), test_set, config, folder)
            if trainer.teacher is not None:
                scores["teacher"] = _evaluate(
                    trainer.eval_model("teacher"), test_set, dataclasses.replace(config, eval_pictures=0), folder
                )
            by_split[split] = scores
        if by_split:
            metrics = dict(next(iter(by_split.values())))
            if len(by_split) > 1:
                metrics["splits"] = by_split
        if config.eval_every and by_split:  # the curve ends with the final scores
            for split, scores in by_split.items():
                for weights, part in (("student", scores), ("teacher", scores.get("teacher"))):
                    if isinstance(part, dict):
                        scalars = {k: float(v) for k, v in part.items() if _is_number(v)}
                        curve.append({"iteration": trainer.iteration, "split": split, "weights": weights, **scalars})
            atomic_write_text(out / "curve.jsonl", "".join(json.dumps(row) + "\n" for row in curve))
            metrics["curve"] = curve
        metrics["method"] = config.method
        metrics["iterations"] = trainer.iteration
        metrics["evaluated"] = "student"
        if history:
            metrics["final_losses"] = {k: v for k, v in history[-1].items() if k != "iteration"}
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if by_split:
            rows = {}
            for split, scores in by_split.items():
                name = f"{config.method} {{}}" + (f" {split}" if len(by_split) > 1 else "")
                rows[name.format("student")] = scores
                if "teacher" in scores:
                    rows[name.format("teacher")] = scores["teacher"]
            print("\n" + task_of(config).table(rows, first="weights") + "\n", flush=True)
        pictures = f", {out / 'predictions'}/" if by_split and config.eval_pictures else ""
        print(
            f"[train] wrote {out / 'model.pt'} (for inference), {out / 'checkpoint.pt'} (to resume), "
            f"{out / 'metrics.json'}, {out / 'losses.png'}{pictures}",
            flush=True,
        )
    return {"history": history, "metrics": metrics, "iteration": trainer.iteration}


def _gather_logs(
    pending: list[tuple[int, dict[str, torch.Tensor]]], world_size: int, device: torch.device
) -> list[dict[str, float]]:
    """Turn the pending per-step tensors into floats with one host sync (averaged over ranks)."""
    if not pending:
        return []
    keys = sorted(pending[0][1])
    table = torch.stack([torch.stack([logs[k].float().to(device) for k in keys]) for _, logs in pending])
    if world_size > 1:
        dist.all_reduce(table)
        table /= world_size
    values = table.cpu().tolist()
    return [{"iteration": t, **dict(zip(keys, row))} for (t, _), row in zip(pending, values)]
