"""What one training step of each ablation method costs: FLOPs, wall time, peak memory.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.step_cost`` (about 10 minutes on 2 CPU
cores; ``--quick`` for a smoke run). Prints a table and writes ``benchmarks/results/step_cost.json``.

* **FLOPs at the paper's configuration** (CE-Net ResNet-101, 416 x 416, 8 labelled + 8
  unlabelled): one ``Trainer.step`` (teacher pass, student forward + backward, the
  perturbation's gradient, the flow's own update, the contrast) counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on real tensors, after one uncounted step
  (so the perturbation is on). Counting 8 + 8 at 416 px on a CPU takes too long, so the
  step is counted at 1 + 1 and 2 + 2 images and extrapolated linearly to 8 + 8: every part
  of the step is linear in the batch except the flow's update (a fixed pixel subsample)
  and the contrast (fixed anchor counts), which the two-point fit keeps as its constant.
  CutMix is off for the count (it pastes pixels, no FLOPs; it needs 2+ unlabelled images).
* ``dpfr_student_flow``: dpfr with ``flow_labelled_source="student"`` (the flow's labelled
  features from the clean student pass instead of a teacher pass over the labelled images).
* **Where dpfr's extra cost goes**: the same counter on its parts alone, at 1 + 1, scaled
  by 8 (the teacher's pass over the labelled images, the perturbation's gradient, the
  perturbed tail's forward and backward).
* **Inference**: FLOPs of ``trainer.eval_model()`` (the student) on one image, against a
  plain ``CENet`` of the same backbone.
* **Wall time and memory at the demo configuration** (ResNet-34, 96 px, 2 + 2): steps of
  all methods interleaved, median of the repeats, as a ratio to ``mean_teacher``; peak RSS
  growth of one step in a fresh process per method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._io import write_result
from examples.dpfr_gland.config import METHODS, TrainConfig, load_config
from examples.dpfr_gland.model import CENet, SiteState
from examples.dpfr_gland.step import Trainer

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "step_cost.json"


def _config(backbone: str, size: int, method: str, **overrides) -> TrainConfig:
    base = dict(
        method=method,
        backbone=backbone,
        crop_size=size,
        supervised_warmup=0,
        rampup=0,
        flow_warmup=1,
        threshold=1.2,
        device="cpu",
        amp=False,
        synthetic_size=max(128, size),
    )
    return TrainConfig(**{**base, **overrides})


def _batch(n_l: int, n_u: int, size: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.randn(n_l, 3, size, size, generator=g), torch.randint(0, 3, (n_l, size, size), generator=g)),
        torch.randn(n_u, 3, size, size, generator=g),
    )


def _step_flops(config: TrainConfig, n: int) -> int:
    torch.manual_seed(0)
    trainer = Trainer(dataclasses.replace(config, batch_labelled=n, batch_unlabelled=n, cutmix=False))
    labelled, unlabelled = _batch(n, n, config.crop_size, 0)
    trainer.step(labelled, unlabelled if config.semi else None)  # uncounted: flow warm-up, ActNorm init
    labelled, unlabelled = _batch(n, n, config.crop_size, 1)
    with FlopCounterMode(display=False) as counter:
        trainer.step(labelled, unlabelled if config.semi else None)
    return counter.get_total_flops()


def _dpfr_parts(config: TrainConfig) -> dict:
    """FLOPs of dpfr's extra parts at 1 + 1 images."""
    torch.manual_seed(0)
    trainer = Trainer(dataclasses.replace(config, method="dpfr", batch_labelled=1, batch_unlabelled=1, cutmix=False))
    labelled, unlabelled = _batch(1, 1, config.crop_size, 0)
    trainer.step(labelled, unlabelled)
    x = labelled[0]
    student = trainer.student
    out = {}
    with FlopCounterMode(display=False) as counter:
        trainer.teacher(x)
    out["teacher_pass_on_labelled"] = counter.get_total_flops()
    with torch.no_grad():
        state = student.encode_to_site(unlabelled)
    with FlopCounterMode(display=False) as counter:
        rho = trainer.perturbation.perturbation(state.site)
    out["perturbation_gradient"] = counter.get_total_flops()
    site = (state.site + rho).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        student.decode_from_site(SiteState(site, state.skips)).logits.sum().backward()
    out["perturbed_tail_forward_backward"] = counter.get_total_flops()
    return out


def _inference(backbone: str, size: int) -> dict:
    trainer = Trainer(_config(backbone, size, "dpfr"))
    x = torch.randn(1, 3, size, size)
    counts = {}
    for name, model in (("eval_model", trainer.eval_model().eval()), ("plain_cenet", CENet(3, backbone).eval())):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        counts[name] = counter.get_total_flops()
    return counts


def _memory_child(method: str) -> dict:
    from benchmarks.bench_density import _reset_peak, _status_mib

    config = dataclasses.replace(
        load_config(ROOT / "examples/dpfr_gland/configs/demo_cpu.json"),
        method=method,
        supervised_warmup=0,
        rampup=0,
        flow_warmup=1,
        threshold=1.2,
    )
    torch.manual_seed(0)
    trainer = Trainer(config)
    labelled, unlabelled = _batch(config.batch_labelled, config.batch_unlabelled, config.crop_size, 0)
    trainer.step(labelled, unlabelled if config.semi else None)
    labelled, unlabelled = _batch(config.batch_labelled, config.batch_unlabelled, config.crop_size, 1)
    reset = _reset_peak()
    before = _status_mib("VmRSS")
    trainer.step(labelled, unlabelled if config.semi else None)
    return {"peak_growth_mib": round(_status_mib("VmHWM") - before, 1) if reset else None}


def _memory(method: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "benchmarks.step_cost", "--memory-child", method]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wall_times(reps: int) -> dict:
    demo = load_config(ROOT / "examples/dpfr_gland/configs/demo_cpu.json")
    trainers = {}
    for method in METHODS:
        torch.manual_seed(0)
        trainers[method] = Trainer(
            dataclasses.replace(demo, method=method, supervised_warmup=0, rampup=0, flow_warmup=1, threshold=1.2)
        )
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(reps + 1):
        labelled, unlabelled = _batch(demo.batch_labelled, demo.batch_unlabelled, demo.crop_size, rep)
        for method, trainer in trainers.items():  # interleaved: machine load hits all alike
            start = time.perf_counter()
            trainer.step(labelled, unlabelled if trainer.config.semi else None)
            if rep:  # the first round warms up (and switches the perturbation on)
                times[method].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    return {
        m: {"ms": round(1e3 * v, 1), "over_mean_teacher": round(v / med["mean_teacher"], 3)} for m, v in med.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-34 at 64 px, few repeats (smoke test)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(_memory_child(args.memory_child)))
        return {}
    backbone, size, batch = ("resnet34", 64, 8) if args.quick else ("resnet101", 416, 8)
    flops = {}
    rows = [(m, m, {}) for m in METHODS] + [("dpfr_student_flow", "dpfr", {"flow_labelled_source": "student"})]
    for label, method, extra in rows:
        config = _config(backbone, size, method, **extra)
        one, two = _step_flops(config, 1), _step_flops(config, 2)
        slope = two - one
        flops[label] = {"n1": one, "n2": two, "extrapolated": one + (batch - 1) * slope}
        print(f"{label}: {one / 1e12:.3f} TFLOP at 1+1, {two / 1e12:.3f} at 2+2", flush=True)
    reference = flops["mean_teacher"]["extrapolated"]
    for method in flops:
        flops[method]["over_mean_teacher"] = round(flops[method]["extrapolated"] / reference, 3)
    parts = {k: v * batch for k, v in _dpfr_parts(_config(backbone, size, "dpfr")).items()}
    inference = _inference(backbone, size)
    walls = _wall_times(reps=2 if args.quick else 5)
    memory = {m: _memory(m) for m in METHODS}
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backbone": backbone,
        "size": size,
        "batch": f"{batch}+{batch}",
        "flops": flops,
        "dpfr_parts_flops": parts,
        "inference_flops": inference,
        "demo_wall_time": walls,
        "demo_peak_rss_growth": memory,
    }
    print(f"\nOne step, CE-Net {backbone}, {size}x{size}, {batch}+{batch} (FLOPs extrapolated from 1+1 and 2+2)")
    print(f"{'method':>17} {'TFLOP':>8} {'x MT':>6} {'demo ms':>8} {'x MT':>6} {'peak MiB':>9}")
    for m in flops:
        wall = walls.get(m, {"ms": float("nan"), "over_mean_teacher": float("nan")})
        print(
            f"{m:>17} {flops[m]['extrapolated'] / 1e12:>8.2f} {flops[m]['over_mean_teacher']:>6.3f} "
            f"{wall['ms']:>8.1f} {wall['over_mean_teacher']:>6.3f} {str(memory.get(m, {}).get('peak_growth_mib')):>9}"
        )
    print(
        "\ndpfr's extra parts (TFLOP at the same batch): " + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in parts.items())
    )
    print(
        f"inference: student {inference['eval_model'] / 1e9:.1f} GFLOP, "
        f"plain CE-Net {inference['plain_cenet'] / 1e9:.1f}"
    )
    if not args.quick:
        write_result(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
