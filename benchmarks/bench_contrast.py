"""HardAnchorContrast: the vectorised loss against a naive Python loop, side by side.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_contrast`` (well under a minute
on CPU). The naive loop (numpy float64, one Python iteration per anchor and per negative)
gets the very same anchors and negatives (``return_indices=True``), so the table also
reports how far the two losses are apart. Prints a table and writes
``benchmarks/results/bench_contrast.json``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from densessl.functional import hard_anchor_contrast

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_contrast.json"

# (name, B, D, H, W, classes, anchors per class, negatives per anchor)
CASES = [
    ("small", 1, 32, 16, 16, 3, 16, 32),
    ("realistic", 2, 128, 64, 64, 3, 256, 512),
]


def naive_loss(emb: np.ndarray, labels: np.ndarray, anchors, anchor_classes, negatives, tau: float) -> float:
    """The definition, one Python iteration per pixel, anchor and negative (float64)."""
    b, d, h, w = emb.shape
    rows = emb.transpose(0, 2, 3, 1).reshape(-1, d)
    flat = labels.reshape(-1)
    unit = {}
    for i in range(rows.shape[0]):  # normalise pixel by pixel
        if flat[i] != 255:
            unit[i] = rows[i] / math.sqrt(float(rows[i] @ rows[i]))
    means = {}
    for c in sorted(set(int(flat[i]) for i in unit)):
        total = np.zeros(d)
        for i, v in unit.items():
            if flat[i] == c:
                total += v
        means[c] = total / math.sqrt(float(total @ total))
    terms = []
    for a, c, negs in zip(anchors, anchor_classes, negatives):
        va = unit[a]
        pos = math.exp(float(va @ means[c]) / tau)
        den = pos
        for n in negs:
            den += math.exp(float(va @ unit[n]) / tau)
        terms.append(-math.log(pos / den))
    return sum(terms) / len(terms)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run_case(name, b, d, h, w, k, num_anchors, num_negatives, tau=0.5):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(b, d, h, w, generator=g)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.1] = 255
    kw = dict(temperature=tau, num_anchors=num_anchors, num_negatives=num_negatives)

    def forward():
        return hard_anchor_contrast(emb, labels, generator=torch.Generator().manual_seed(1), **kw)

    def forward_backward():
        x = emb.clone().requires_grad_(True)
        hard_anchor_contrast(x, labels, generator=torch.Generator().manual_seed(1), **kw).backward()

    repeats = 20 if name == "small" else 5
    t_fwd = _time(forward, repeats)
    t_fwd_bwd = _time(forward_backward, repeats)
    loss, idx = hard_anchor_contrast(
        emb.double(), labels, generator=torch.Generator().manual_seed(1), return_indices=True, **kw
    )
    start = time.perf_counter()
    reference = naive_loss(
        emb.double().numpy(),
        labels.numpy(),
        idx.anchors.tolist(),
        idx.anchor_classes.tolist(),
        idx.negatives.tolist(),
        tau,
    )
    t_naive = time.perf_counter() - start
    return {
        "case": name,
        "B": b,
        "D": d,
        "H": h,
        "W": w,
        "classes": k,
        "num_anchors": num_anchors,
        "num_negatives": num_negatives,
        "anchors_total": int(idx.anchors.numel()),
        "vectorised_forward_s": t_fwd,
        "vectorised_forward_backward_s": t_fwd_bwd,
        "naive_loop_forward_s": t_naive,
        "speedup_forward": t_naive / t_fwd,
        "loss_float32": float(forward()),
        "loss_float64": float(loss),
        "loss_naive": reference,
        "abs_diff_float64_vs_naive": abs(float(loss) - reference),
    }


def main() -> dict:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    rows = [run_case(*case) for case in CASES]
    header = (
        f"{'case':<10} {'B':>2} {'D':>4} {'HxW':>7} {'K':>2} {'T':>4} {'M':>4} "
        f"{'vec fwd ms':>10} {'vec f+b ms':>10} {'naive ms':>10} {'speedup':>8} {'|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<10} {r['B']:>2} {r['D']:>4} {str(r['H']) + 'x' + str(r['W']):>7} {r['classes']:>2} "
            f"{r['num_anchors']:>4} {r['num_negatives']:>4} {r['vectorised_forward_s'] * 1e3:>10.2f} "
            f"{r['vectorised_forward_backward_s'] * 1e3:>10.2f} {r['naive_loop_forward_s'] * 1e3:>10.1f} "
            f"{r['speedup_forward']:>7.0f}x {r['abs_diff_float64_vs_naive']:>9.1e}"
        )
    out = {
        "benchmark": "HardAnchorContrast: vectorised vs naive Python loop (same anchors and negatives)",
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")
    return out


if __name__ == "__main__":
    main()
