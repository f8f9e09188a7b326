"""Where does the density step act? FDP at each CE-Net site against a random and the opposite step.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.perturbation_sites`` (about 10 minutes on
2 CPU cores; ``--quick`` for a smoke run). Prints a table and writes
``benchmarks/results/perturbation_sites.json``.

1. **A trained network.** The demo configuration (CE-Net ResNet-34, synthetic ``medium``
   glands, 96 px crops, batch 2 + 2, 1/4 labelled) trained as a plain ``mean_teacher`` for
   ``--iterations`` steps (cached in ``outputs/perturbation_sites/``).
2. **A flow per site, fitted afterwards** on the teacher's detached features, as the recipe
   trains it (labelled pixels under their true class, unlabelled ones under the mixture,
   ``FlowDensityHead.nll``, Adam 1e-3, up to 20 000 random pixels a step, noise 0.01). The
   flow only reads detached features, so fitting it after training measures the same thing.
3. **The same batches, every step kind.** Held-out weak views of unlabelled images through
   the student in eval mode; the target is the teacher's argmax. For each site and density
   variant: the density step ``rho = xi g / ||g||`` (``DensityPerturbation``, ``xi = 3`` per
   pixel), a random step with the same length at every pixel, and the opposite step ``-rho``.
   Reported: CE against the teacher's labels (clean and perturbed), the mean logit margin
   (teacher's class minus the best other), max and mean ``|delta logit|``, and the percentage
   of pixels whose argmax flips.

Sites: ``bottleneck`` (``e4``; the skips bypass it), ``bottleneck+skips`` (``e1..e4`` all
stepped, the gradient of ``-log p(d1)`` taken through the decoder), ``decoder`` (``d1``),
``classifier`` (DDFP's site: ``d1`` stepped, the density measured at the classifier block's
32-channel output). Variants: ``mixture`` (the flow on raw features, the unlabelled mixture
log-density: DDFP's), ``normalized`` (the flow on L2-normalised features, so the step turns
the feature's direction instead of growing its norm), ``conditional`` (``log p(x | y)`` under
the teacher's label instead of the mixture).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import densessl
from benchmarks._io import write_result
from benchmarks._study import reusable
from densessl.functional import downsample_labels, flatten_pixels, normalize_pixels
from examples.dpfr_gland.batches import ViewDataset, build_datasets
from examples.dpfr_gland.checkpoint import load_checkpoint
from examples.dpfr_gland.config import load_config
from examples.dpfr_gland.data import label_split
from examples.dpfr_gland.loop import train
from examples.dpfr_gland.model import CENet, SiteState

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "perturbation_sites.json"
CACHE = ROOT / "outputs" / "perturbation_sites"
SITES = ("bottleneck", "bottleneck+skips", "decoder", "classifier")
VARIANTS = ("mixture", "normalized", "conditional")
KINDS = ("density", "random", "opposite")


def _trained(iterations: int, quick: bool) -> tuple[dict, object]:
    config = load_config(ROOT / "examples/dpfr_gland/configs/demo_cpu.json")
    config = dataclasses.replace(
        config,
        method="mean_teacher",
        iterations=iterations,
        eval_pictures=0,
        checkpoint_every=0,
        synthetic_test=1 if quick else 2,
    )
    out = CACHE / f"mean_teacher_{iterations}"
    checkpoint = out / "checkpoint.pt"
    # a cached run is reused only while it is the run this benchmark would train (a change of the
    # demo config or of the recipe's defaults that mean_teacher reads trains it again)
    if not (checkpoint.is_file() and reusable(load_checkpoint(checkpoint)["config"], config)):
        train(config, out, progress=True)
    return load_checkpoint(checkpoint), config


def _network(state: dict, key: str, site: str, backbone: str) -> CENet:
    net = CENet(num_classes=3, backbone=backbone, perturb_at=site)
    weights = state[key]
    if key == "teacher":
        weights = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
    net.load_state_dict(weights)
    return net.eval()


def _batches(config, train_set, indices, count: int, serial0: int, labelled: bool) -> list:
    views = ViewDataset(
        train_set,
        indices,
        config.crop_size,
        seed=config.seed + 7,
        stream=int(labelled) + 5,
        labelled=labelled,
        contour_width=config.contour_width,
    )
    size = config.batch_unlabelled
    out = []
    for b in range(count):
        items = [views[((b * size + i) % len(indices), serial0 + b * size + i)] for i in range(size)]
        if labelled:
            out.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
        else:
            out.append(torch.stack(items))
    return out


def _density_input(net: CENet, site_map: torch.Tensor, normalized: bool) -> torch.Tensor:
    block = net.density_block
    h = site_map if block is None else block(site_map)
    return normalize_pixels(h) if normalized else h


def _fit_flow(
    net: CENet, labelled, unlabelled, normalized: bool, steps: int, seed: int, hidden: int
) -> densessl.FlowDensityHead:
    """A flow on the teacher's detached features at the net's site (labelled: class, unlabelled: mixture)."""
    feats, labs = [], []
    with torch.no_grad():
        for x, y in labelled:
            h = _density_input(net, net.encode_to_site(x).site, normalized)
            feats.append(h)
            labs.append(downsample_labels(y, h.shape[-2:], mode="majority", num_classes=3))
        for x in unlabelled:
            h = _density_input(net, net.encode_to_site(x).site, normalized)
            feats.append(h)
            labs.append(torch.full((h.shape[0], *h.shape[-2:]), 255, dtype=torch.long))
    rows = torch.cat([flatten_pixels(f) for f in feats])
    row_labels = torch.cat([lab.reshape(-1) for lab in labs])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    flow = densessl.FlowDensityHead(rows.shape[1], 3, depth=2, hidden=hidden).train()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(steps):
        pick = torch.randperm(rows.shape[0], generator=g)[:20000]
        x = rows[pick] + 0.01 * torch.randn(len(pick), rows.shape[1], generator=g)
        loss = flow.nll(x.t().reshape(1, rows.shape[1], 1, -1), row_labels[pick].reshape(1, 1, -1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
        opt.step()
    return flow.eval()


def _random_like(rho: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random direction at every pixel with the per-pixel length of ``rho``."""
    noise = torch.randn(rho.shape, generator=g)
    unit = noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True).clamp_min(1e-12)
    return unit * torch.linalg.vector_norm(rho, dim=1, keepdim=True)


def _steps_single(
    net: CENet, flow, state: SiteState, xi: float, relative: bool, variant: str, target: torch.Tensor, g
) -> dict:
    normalized = variant == "normalized"
    block = net.density_block

    def head(x: torch.Tensor) -> torch.Tensor:
        h = x if block is None else block(x)
        return normalize_pixels(h) if normalized else h

    perturb = densessl.DensityPerturbation(
        flow, xi=xi, relative=relative, head=head if (block is not None or normalized) else None
    )
    labels = None
    if variant == "conditional":
        size = state.site.shape[-2:] if block is None else target.shape[-2:]
        labels = downsample_labels(target, size, mode="majority", num_classes=3)
    rho = perturb.perturbation(state.site, labels)
    return {"density": [rho], "random": [_random_like(rho, g)], "opposite": [-rho]}, [state.site.norm(dim=1).mean()]


def _steps_skips(net: CENet, flow, state: SiteState, xi: float, relative: bool, variant: str, g) -> tuple[dict, list]:
    """Step e4 and the skips e1..e3 along -grad log p(d1) through the decoder (flow fitted on d1)."""
    normalized = variant == "normalized"
    maps = [state.site, *state.skips]
    xs = [m.detach().clone().requires_grad_(True) for m in maps]
    with torch.enable_grad():
        d1 = net._decode(xs[0], tuple(xs[1:]))
        h = normalize_pixels(d1) if normalized else d1
        log_p = flow.log_prob(h)
        grads = torch.autograd.grad(-log_p.sum(), xs)
    rhos = [
        (xi * m.norm(dim=1, keepdim=True) if relative else xi)
        * gr
        / torch.linalg.vector_norm(gr, dim=1, keepdim=True).clamp_min(1e-12)
        for m, gr in zip(maps, grads)
    ]
    return (
        {"density": rhos, "random": [_random_like(r, g) for r in rhos], "opposite": [-r for r in rhos]},
        [m.norm(dim=1).mean() for m in maps],
    )


def _scores(logits: torch.Tensor, clean: torch.Tensor, target: torch.Tensor) -> dict:
    ce = F.cross_entropy(logits, target).item()
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(target, 3).permute(0, 3, 1, 2).bool(), float("-inf")).amax(1)
    delta = (logits - clean).abs()
    return {
        "ce": ce,
        "margin": (own - others).mean().item(),
        "max_dlogit": delta.max().item(),
        "mean_dlogit": delta.mean().item(),
        "flips": (logits.argmax(1) != clean.argmax(1)).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=250, help="mean-teacher training steps of the network")
    parser.add_argument("--flow-steps", type=int, default=300, help="Adam steps of each site's flow")
    parser.add_argument("--xi", type=float, default=3.0, help="step length per pixel")
    parser.add_argument("--relative", action="store_true", help="the step is xi * ||f|| per pixel")
    parser.add_argument("--flow-hidden", type=int, default=64, help="coupling width of each site's flow")
    parser.add_argument("--out", default=str(RESULTS), help="the JSON to write")
    parser.add_argument("--batches", type=int, default=6, help="held-out unlabelled batches measured")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.flow_steps, args.batches = 4, 5, 1
    started = time.perf_counter()
    state, config = _trained(args.iterations, args.quick)
    train_set, _ = build_datasets(config)
    labelled_idx, unlabelled_idx = label_split(len(train_set), config.label_ratio, seed=config.seed)
    fit_l = _batches(config, train_set, labelled_idx, 4 if not args.quick else 1, 10**6, True)
    fit_u = _batches(config, train_set, unlabelled_idx, 8 if not args.quick else 1, 10**6, False)
    test_u = _batches(config, train_set, unlabelled_idx, args.batches, 2 * 10**6, False)
    rows = []
    jobs = [
        (site, variant)
        for site in SITES
        for variant in VARIANTS
        if not (variant == "conditional" and site == "bottleneck+skips")
    ]
    for site, variant in tqdm(jobs, desc="sites x variants"):
        skips = site == "bottleneck+skips"
        # bottleneck+skips steps the bottleneck's maps, with the density of d1 (the decoder site's flow)
        student = _network(state, "student", "bottleneck" if skips else site, config.backbone)
        teacher = _network(state, "teacher", "decoder" if skips else site, config.backbone)
        flow = _fit_flow(
            teacher, fit_l, fit_u, variant == "normalized", args.flow_steps, seed=config.seed, hidden=args.flow_hidden
        )
        g = torch.Generator().manual_seed(0)
        acc: dict[str, list[dict]] = {kind: [] for kind in ("clean", *KINDS)}
        norms = []
        for x in test_u:
            with torch.no_grad():
                target = teacher(x).logits.argmax(1)
                s = student.encode_to_site(x)
                clean = student.decode_from_site(s).logits
                acc["clean"].append(_scores(clean, clean, target))
                if site == "bottleneck+skips":
                    steps, site_norms = _steps_skips(student, flow, s, args.xi, args.relative, variant, g)
                else:
                    steps, site_norms = _steps_single(student, flow, s, args.xi, args.relative, variant, target, g)
                norms.append(float(site_norms[0]))
                for kind, rhos in steps.items():
                    if site == "bottleneck+skips":
                        moved = [m + r for m, r in zip([s.site, *s.skips], rhos)]
                        logits = student.head(student._decode(moved[0], tuple(moved[1:])))
                    else:
                        logits = student.decode_from_site(SiteState(s.site + rhos[0], s.skips)).logits
                    acc[kind].append(_scores(logits, clean, target))
        mean = {kind: {k: float(np.mean([r[k] for r in v])) for k in v[0]} for kind, v in acc.items()}
        row = {"site": site, "variant": variant, "feature_norm": float(np.mean(norms)), **mean}
        rows.append(row)
        tqdm.write(
            f"{site:>17} {variant:>11}: CE clean {mean['clean']['ce']:.4f} density {mean['density']['ce']:.4f} "
            f"random {mean['random']['ce']:.4f} opposite {mean['opposite']['ce']:.4f}; flips "
            f"{100 * mean['density']['flips']:.2f}% / {100 * mean['random']['flips']:.2f}%"
        )
    result = {
        "torch": torch.__version__,
        "iterations": args.iterations,
        "flow_steps": args.flow_steps,
        "xi": args.xi,
        "relative": args.relative,
        "flow_hidden": args.flow_hidden,
        "batches": args.batches,
        "batch_size": config.batch_unlabelled,
        "seconds": round(time.perf_counter() - started),
        "rows": rows,
    }
    print(
        f"\nxi = {args.xi}{' x ||f||' if args.relative else ''} per pixel; student (mean_teacher, "
        f"{args.iterations} it) vs the teacher's argmax on {args.batches} held-out unlabelled batches"
    )
    print(
        f"{'site':>17} {'variant':>11} {'|f|':>6} {'CE clean':>9} {'CE dens':>8} {'CE rand':>8} {'CE opp':>8} "
        f"{'margin c/d/r':>17} {'max|dl| d/r':>13} {'flips% d/r':>12}"
    )
    for r in rows:
        c, d, rn, o = r["clean"], r["density"], r["random"], r["opposite"]
        print(
            f"{r['site']:>17} {r['variant']:>11} {r['feature_norm']:>6.2f} {c['ce']:>9.4f} {d['ce']:>8.4f} "
            f"{rn['ce']:>8.4f} {o['ce']:>8.4f} {c['margin']:>5.2f}/{d['margin']:>5.2f}/{rn['margin']:>5.2f} "
            f"{d['max_dlogit']:>6.2f}/{rn['max_dlogit']:>6.2f} {100 * d['flips']:>5.2f}/{100 * rn['flips']:>5.2f}"
        )
    if not args.quick:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
