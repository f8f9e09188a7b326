r"""DPFR training for gland segmentation: Mean Teacher + flow density perturbation + contrast.

Run on one process or many::

    python -m examples.dpfr_gland.train --config examples/dpfr_gland/configs/demo_cpu.json --out outputs/train
    python -m examples.dpfr_gland.train --config CFG --out DIR --set method=mean_teacher --set iterations=50
    python -m examples.dpfr_gland.train --config CFG --out DIR --resume           # from DIR/checkpoint.pt
    torchrun --nproc_per_node=N -m examples.dpfr_gland.train --config CFG --out DIR

One iteration, its equations and the code that reads like them: :mod:`examples.dpfr_gland.step`.
The loop around it (batches, logs, checkpoints, evaluation): :mod:`examples.dpfr_gland.loop`.

Methods (ablation): ``supervised`` (step 4's first term only), ``mean_teacher`` (+ the
:math:`\lambda_u` term), ``fdp`` (+ :math:`\alpha_1`, flow), ``fr`` (+ :math:`\alpha_2` on the
clean branch, no flow), ``dpfr`` (everything).

All randomness of iteration ``t`` (views, CutMix, noise, pixel subsets, negatives) is drawn
from generators seeded by ``(seed, t, rank)``, and the batches from a stream indexed by
``t``, so ``--resume`` continues exactly where a run stopped. Checkpoints are written
atomically (temporary file + rename) and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

__all__ = [
    "METHODS",
    "BatchStream",
    "TrainConfig",
    "Trainer",
    "ViewDataset",
    "apply_overrides",
    "build_datasets",
    "build_test_sets",
    "evaluation_splits",
    "config_from_dict",
    "draw_loss_curves",
    "load_checkpoint",
    "load_config",
    "main",
    "train",
    "unsupervised_weight",
]

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# The recipe's parts, each in the module named for it; re-exported here, the command's home.
from .batches import BatchStream, ViewDataset, build_datasets, build_test_sets, evaluation_splits
from .checkpoint import load_checkpoint
from .config import METHODS, TrainConfig, apply_overrides, config_from_dict, load_config
from .loop import train
from .plots import draw_loss_curves
from .step import Trainer, unsupervised_weight


def main(argv: Sequence[str] | None = None) -> int:
    """The training command line (see the module docstring).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status, 0.

    Raises:
        SystemExit: bad arguments, a bad config or ``--set`` (argparse prints the message,
            which names the key).
    """
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON config (examples/dpfr_gland/configs/*.json)")
    parser.add_argument("--out", default="outputs/train", help="output folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue from CKPT (default: OUT/checkpoint.pt)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.error(str(error))
    resume = None
    if args.resume is not None:
        resume = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        if not resume.is_file():
            parser.error(f"--resume: checkpoint {resume} does not exist")
    train(config, args.out, resume=resume, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
