"""What every study of ``benchmarks/`` does with its runs: train one quietly, and tell whether a
stored run is still the run the study would train (so a restarted study skips it).

A stored run is reused when its config equals the one the study asks for on every field its
method reads (:func:`examples.dpfr_gland.config.fields_read`): a change of the flow's settings
does not re-run ``mean_teacher``, a change of the recipe's defaults that a method reads does.
"""

from __future__ import annotations

__all__ = ["effective_config", "fingerprint", "reusable", "train_quietly"]

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from examples.dpfr_gland.config import TrainConfig, fields_read


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's config that its method reads (the others cannot change its result).

    Example:
        >>> sorted(set(dataclasses.asdict(TrainConfig(method="dpfr"))) -
        ...        set(effective_config(dataclasses.asdict(TrainConfig(method="fr")))))[:3]
        ['alpha_perturbed', 'flow_depth', 'flow_grad_clip']
    """
    read = fields_read(config["method"])
    return {k: v for k, v in config.items() if k in read}


def reusable(stored: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a finished run's stored config is ``config`` on every field its method reads
    (fields added to the recipe since that run count at their defaults).

    Example:
        >>> reusable({"method": "fr", "xi": 3.0}, TrainConfig(method="fr"))  # fr reads no xi
        True
    """
    filled = {**dataclasses.asdict(TrainConfig()), **stored}
    return effective_config(filled) == effective_config(dataclasses.asdict(config))


def fingerprint(config: TrainConfig) -> str:
    """A short hash of the fields ``config``'s method reads: equal for runs that train alike.

    Example:
        >>> fingerprint(TrainConfig(method="fr", xi=1.0)) == fingerprint(TrainConfig(method="fr", xi=2.0))
        True
    """
    effective = effective_config(dataclasses.asdict(config))
    return hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:16]


def train_quietly(config: TrainConfig, out: Path) -> dict[str, Any]:
    """Train one run into ``out`` with the trainer's lines in ``out/train.log`` (the study's own
    progress bar stays readable); returns :func:`examples.dpfr_gland.loop.train`'s result."""
    from examples.dpfr_gland.loop import train

    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            return train(config, out, progress=False)
    finally:
        (out / "train.log").write_text(log.getvalue())
