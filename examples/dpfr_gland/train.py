r"""DPFR training for gland segmentation: Mean Teacher + flow density perturbation + contrast.

Run on one process or many::

    python -m examples.dpfr_gland.train --config examples/dpfr_gland/configs/demo_cpu.json --out outputs/train
    python -m examples.dpfr_gland.train --config CFG --out DIR --set method=mean_teacher --set iterations=50
    python -m examples.dpfr_gland.train --config CFG --out DIR --resume           # from DIR/checkpoint.pt
    torchrun --nproc_per_node=N -m examples.dpfr_gland.train --config CFG --out DIR

One iteration ``t`` (labelled batch :math:`(x_l, y_l)`, unlabelled weak batch :math:`x_w`;
the code is :meth:`examples.dpfr_gland.step.Trainer.step`):

1. **Teacher, once.** :math:`(p_T, f_T) = T([x_l;\ x_w])` — the EMA teacher (eval mode, no
   gradient) in ONE batched pass: logits :math:`p_T` and the density's features :math:`f_T`
   (the labelled half only for the flow; methods without a flow pass :math:`x_w` alone).
   :math:`\hat y = \arg\max \tilde p_T` on :math:`x_w` where the entropy :math:`H(\mathrm{softmax}\,\tilde p_T) <
   \gamma` or the pixel is among the surest 20 % of its argmax class, else ignored
   (:class:`densessl.EntropyPseudoLabeler` with ``min_class_keep``); :math:`\tilde p_T` is
   :math:`p_T` aligned to the labelled pixels' class frequencies
   (:class:`densessl.DistributionAlignment`). Both against the contour erosion measured by
   ``benchmarks.ssl_quality``: with the threshold alone no contour pixel is ever kept.
2. **Views.** :math:`x_s = \mathrm{strong}(x_w)` (photometric only, so pixel-aligned
   with :math:`x_w`), then CutMix :math:`(\tilde x_s, \tilde y, B) =
   \mathrm{cutmix}(x_s, \hat y)` pastes boxes between images of the batch, applied
   identically to the images and the pseudo labels.
3. **Student, one forward** on :math:`[x_l;\ \tilde x_s]`. With FDP (once :math:`t \ge
   t_{flow}`) the unlabelled images' maps at the perturbation site are decoded a second time,
   perturbed, in the same call (``CENet(..., perturb_last=B_u)``): the encoder runs once, only
   the part after the site runs twice. At the default site (``perturb_at="classifier"``,
   DDFP's) the last decoder map :math:`d_1` is moved, :math:`d_1 \mapsto d_1 + \rho`,
   :math:`\rho = \xi \lVert d_1\rVert\, g/\lVert g\rVert`,
   :math:`g = \nabla_{d_1}(-\log p_\phi(n(h(d_1))))` per pixel, where :math:`h` is the
   classifier block and :math:`n` the per-pixel L2 normalisation
   (:class:`densessl.DensityPerturbation` with ``head``, :math:`\xi = 0.25`, relative; the
   recipe README measures why). The clean pass's BatchNorm batch is :math:`[x_l;\ \tilde x_s]`
   for every method; the classifier block has no BatchNorm.
4. **Losses** (:func:`densessl.functional.masked_cross_entropy`, a zero with a graph when
   no pixel is kept):

   .. math::

      L = \mathrm{CE}(s_l, y_l) + w(t)\,\big[\lambda_u\,\mathrm{CE}(s_u, \tilde y)
          + \alpha_1\,\mathrm{CE}(s_{u}^{\rho}, \tilde y)
          + \alpha_2\,L_{con}(g([d_l;\ d_u]), [y_l;\ \tilde y]_{\downarrow})\big]

   with :math:`\alpha_1 = 0.5`, :math:`\alpha_2 = 0.3`; :math:`L_{con}` is
   :class:`densessl.HardAnchorContrast` (:math:`\tau = 0.5`, 256 anchors per class) on
   :class:`densessl.ProjectionHead` embeddings of the *clean* decoder maps of the labelled
   and unlabelled images (in ``fr`` and ``dpfr`` alike), labels downsampled by majority vote.
   :math:`w(t)` is 0 during the supervised warm-up, then ramps up as
   :math:`\exp(-5(1 - r)^2)`, :math:`r \in [0, 1]`. Logged: ``fdp_gain`` = CE of the perturbed
   branch minus CE of the clean one, ``flip`` = fraction of unlabelled pixels whose argmax the
   step changed.
5. **Flow** (:class:`densessl.FlowDensityHead`, own Adam, lr 1e-3), after the student's
   forward so that the perturbation of step ``t`` used the flow of step ``t - 1``:

   .. math::

      L_\phi = -\frac{1}{|P|}\Big[\sum_{i \in P_l} \log p_\phi(f_i + \epsilon_i, y_i)
               + \sum_{i \in P_u} \log \textstyle\sum_c \pi_c\, p_\phi(f_i + \epsilon_i \mid c)\Big],
      \quad \epsilon_i \sim \mathcal N(0, \sigma^2 I)

   over the *detached*, normalised teacher features :math:`f_T` — labelled pixels under their
   true class (labels at the density's resolution; a downsampled block needs a
   ``flow_label_fraction`` majority), unlabelled pixels under the mixture (as the paper and
   DDFP; ``flow_pseudo_labels`` scores them under :math:`\hat y` instead) — on a random subset
   :math:`P` of at most ``flow_pixels`` pixels. The student's loss gives the flow no gradient.
6. **Updates.** Student step (GradScaler under CUDA AMP), then ``teacher.update(student)``
   (EMA of weights and of BatchNorm statistics, ``teacher_buffers``).

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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from CKPT (default: OUT/checkpoint.pt)")
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
