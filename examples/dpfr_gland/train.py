r"""DPFR training for gland segmentation: Mean Teacher + flow density perturbation + contrast.

Run on one process or many::

    python -m examples.dpfr_gland.train --config examples/dpfr_gland/configs/demo_cpu.json --out outputs/train
    python -m examples.dpfr_gland.train --config CFG --out DIR --set method=mean_teacher --set iterations=50
    python -m examples.dpfr_gland.train --config CFG --out DIR --resume           # from DIR/checkpoint.pt
    torchrun --nproc_per_node=N -m examples.dpfr_gland.train --config CFG --out DIR

One iteration ``t`` (labelled batch :math:`(x_l, y_l)`, unlabelled weak batch :math:`x_w`):

1. **Teacher, once.** :math:`(p_T, f_T) = T(x_w)` — the EMA teacher (eval mode, no
   gradient) gives logits :math:`p_T` and bottleneck features :math:`f_T` in ONE pass.
   :math:`\hat y = \arg\max p_T` where the entropy :math:`H(\mathrm{softmax}\,p_T) <
   \gamma`, else ignored (:class:`densessl.EntropyPseudoLabeler`). No teacher pass on the
   labelled batch.
2. **Views.** :math:`x_s = \mathrm{strong}(x_w)` (photometric only, so pixel-aligned
   with :math:`x_w`), then CutMix :math:`(\tilde x_s, \tilde y, B) =
   \mathrm{cutmix}(x_s, \hat y)` pastes boxes between images of the batch, applied
   identically to the images and the pseudo labels.
3. **Student, one forward** on :math:`[x_l;\ \tilde x_s;\ \tilde x_s]`; the third part is
   perturbed at the bottleneck (FDP, only once :math:`t \ge t_{flow}`):
   :math:`f \mapsto f + \xi\, g/\lVert g\rVert`, :math:`g = \nabla_f(-\log p_\phi(f))`
   (:class:`densessl.DensityPerturbation`, :math:`\xi = 3`, per pixel). One forward keeps
   BatchNorm statistics over the whole batch and DDP to one forward per backward.
4. **Losses** (:func:`densessl.functional.masked_cross_entropy`, a zero with a graph when
   no pixel is kept):

   .. math::

      L = \mathrm{CE}(s_l, y_l) + w(t)\,\big[\lambda_u\,\mathrm{CE}(s_u, \tilde y)
          + \alpha_1\,\mathrm{CE}(s_{u}^{\rho}, \tilde y)
          + \alpha_2\,L_{con}(g(d_u^{\rho}), \tilde y_{\downarrow})\big]

   with :math:`\alpha_1 = 0.5`, :math:`\alpha_2 = 0.3`; :math:`L_{con}` is
   :class:`densessl.HardAnchorContrast` (:math:`\tau = 0.5`, 256 anchors per class) on
   :class:`densessl.ProjectionHead` embeddings of the perturbed branch's last decoder map
   :math:`d_u^{\rho}` (of the clean branch before :math:`t_{flow}` or for ``method="fr"``),
   with :math:`\tilde y` downsampled by majority vote, together with the labelled images'
   decoder maps and their true labels (so the loss has two classes to contrast before the
   teacher is confident about glands). :math:`w(t)` is 0 during the
   supervised warm-up, then ramps up as :math:`\exp(-5(1 - r)^2)`, :math:`r \in [0, 1]`.
5. **Flow** (:class:`densessl.FlowDensityHead`, own Adam, lr 1e-3), after the student's
   forward so that the perturbation of step ``t`` used the flow of step ``t - 1``:

   .. math::

      L_\phi = -\frac{1}{|P|}\sum_{i \in P} \log p_\phi(f_i + \epsilon_i \mid y_i),
      \quad \epsilon_i \sim \mathcal N(0, \sigma^2 I)

   over the *detached* teacher features :math:`f_T` with :math:`\hat y` downsampled by
   majority vote (ignored pixels score under the mixture) and the detached labelled
   student features with :math:`y_l` downsampled, on a random subset :math:`P` of at most
   ``flow_pixels`` pixels (DDFP's recipe). The student's loss gives the flow no gradient.
6. **Updates.** Student step (GradScaler under CUDA AMP), then ``teacher.update(student)``
   (EMA of weights, BatchNorm buffers copied).

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
from .batches import BatchStream, ViewDataset, build_datasets
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
