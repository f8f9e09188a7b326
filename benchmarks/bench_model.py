"""CE-Net FLOPs at GlaS-like 448x448 crops, and the cost of a per-pixel flow beside it.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_model`` (about a minute on CPU).
Prints a table and writes ``benchmarks/results/bench_model.json``.

* CE-Net (:class:`examples.dpfr_gland.model.CENet`, 3 classes, one 448x448 image): forward
  and forward + backward (loss = sum of logits, the input needs no gradient), counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (shapes only, no
  arithmetic), with a per-block breakdown of the forward pass. Counts only: no timing.
* :class:`densessl.FlowDensityHead` (depth 2, hidden 256, 3 classes) on the map at each
  perturbation point of the same image: the bottleneck (encoder output, ``[1, C4, 14, 14]``)
  and the decoder (last decoder block, ``[1, Cd, 224, 224]``). Two costs per map: the
  perturbation (``DensityPerturbation``: ``log_prob`` forward + gradient w.r.t. the
  features) and one flow training step (``nll`` forward + backward w.r.t. the flow's
  parameters), both on every pixel of the map, on real tensors (ActNorm needs data), each
  also as a fraction of the CE-Net forward + backward of the same backbone. The flow is
  per pixel, so its cost scales linearly with the pixels it is given (e.g. a subsample).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import densessl
from benchmarks._io import write_result
from examples.dpfr_gland.model import CENet

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "bench_model.json"
SIZE = 448
BACKBONES = ("resnet34", "resnet50", "resnet101")
FLOW = {"depth": 2, "hidden": 256, "num_classes": 3}
PARTS = ("encoder", "dac", "rmp", "decoder4", "decoder3", "decoder2", "decoder1", "head")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cenet_flops(backbone: str, size: int = SIZE) -> dict:
    """FLOPs and parameters of one CE-Net forward and forward + backward on a ``size`` x ``size`` image."""
    with torch.device("meta"):
        net = CENet(num_classes=3, backbone=backbone).train()
        images = torch.randn(1, 3, size, size)
    with densessl.value_checks(False):  # a finiteness check would read a meta tensor back
        with FlopCounterMode(display=False) as forward:
            net(images)
        with FlopCounterMode(display=False) as step:
            net(images).logits.sum().backward()
    counts = forward.get_flop_counts()
    parts = {p: int(sum(counts.get(f"CENet.{p}", {}).values())) for p in PARTS}
    return {
        "backbone": backbone,
        "image": [1, 3, size, size],
        "params": _params(net),
        "params_encoder": _params(net.encoder),
        "params_dac": _params(net.dac),
        "forward_flops": int(forward.get_total_flops()),
        "forward_backward_flops": int(step.get_total_flops()),
        "forward_flops_by_part": parts,
        "feature_channels": {"bottleneck": net.feature_channels, "decoder": net.decoder_channels},
    }


def flow_flops(channels: int, side: int) -> dict:
    """FLOPs of a FlowDensityHead's perturbation and training step on a ``[1, channels, side, side]`` map."""
    torch.manual_seed(0)
    head = densessl.FlowDensityHead(channels, FLOW["num_classes"], depth=FLOW["depth"], hidden=FLOW["hidden"])
    features = torch.randn(1, channels, side, side)
    labels = torch.randint(0, FLOW["num_classes"], (1, side, side))
    with torch.no_grad():
        head.train()
        head.log_prob(features)  # ActNorm data initialisation, outside the counts
    perturbation = densessl.DensityPerturbation(head, xi=3.0)
    with FlopCounterMode(display=False) as perturb:
        perturbation(features)
    head.train()
    with FlopCounterMode(display=False) as train:
        head.nll(features, labels).backward()
    pixels = side * side
    return {
        "channels": channels,
        "map": [1, channels, side, side],
        "pixels": pixels,
        "perturbation_flops": int(perturb.get_total_flops()),
        "training_step_flops": int(train.get_total_flops()),
        "perturbation_flops_per_pixel": perturb.get_total_flops() / pixels,
        "training_step_flops_per_pixel": train.get_total_flops() / pixels,
    }


def main() -> dict:
    models = [cenet_flops(b) for b in BACKBONES]
    flows = []
    for m in models:
        step = m["forward_backward_flops"]
        for where, side in (("bottleneck", SIZE // 32), ("decoder", SIZE // 2)):
            f = flow_flops(m["feature_channels"][where], side)
            f.update(
                backbone=m["backbone"],
                perturb_at=where,
                perturbation_fraction_of_cenet_step=f["perturbation_flops"] / step,
                training_step_fraction_of_cenet_step=f["training_step_flops"] / step,
            )
            flows.append(f)
    result = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "image_size": SIZE,
        "flow": FLOW,
        "cenet": models,
        "flow_head": flows,
    }

    g = 1e9
    print(f"CE-Net, one {SIZE}x{SIZE} image, 3 classes (GFLOPs; FlopCounterMode on meta tensors)")
    print(f"{'backbone':<10} {'params M':>9} {'DAC M':>7} {'fwd':>8} {'fwd+bwd':>8}   forward by part")
    for m in models:
        parts = " ".join(f"{k}={v / g:.1f}" for k, v in m["forward_flops_by_part"].items() if v / g >= 0.05)
        print(
            f"{m['backbone']:<10} {m['params'] / 1e6:>9.1f} {m['params_dac'] / 1e6:>7.1f} "
            f"{m['forward_flops'] / g:>8.1f} {m['forward_backward_flops'] / g:>8.1f}   {parts}"
        )
    print(
        f"\nFlowDensityHead depth {FLOW['depth']}, hidden {FLOW['hidden']}, on every pixel of the map "
        "(GFLOPs; fraction of the CE-Net fwd+bwd)"
    )
    print(f"{'backbone':<10} {'at':<11} {'map':>18} {'perturb':>9} {'frac':>7} {'train':>9} {'frac':>7}")
    for f in flows:
        shape = "x".join(str(s) for s in f["map"][1:])
        print(
            f"{f['backbone']:<10} {f['perturb_at']:<11} {shape:>18} {f['perturbation_flops'] / g:>9.2f} "
            f"{f['perturbation_fraction_of_cenet_step']:>7.1%} {f['training_step_flops'] / g:>9.2f} "
            f"{f['training_step_fraction_of_cenet_step']:>7.1%}"
        )
    write_result(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
