"""Synthetic glands: time per 256x256 sample for each preset (target: well under 0.1 s).

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_synthetic``. Prints a table and
writes ``benchmarks/results/bench_synthetic.json``. The time is the median over 20
samples after one warm-up sample per preset; quote it beside the load of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from examples.dpfr_gland.synthetic import PRESETS, SyntheticGlands

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_synthetic.json"


def main(size: int = 256, repeats: int = 20) -> dict:
    rows = []
    for preset in PRESETS:
        glands = SyntheticGlands(preset, size=size, seed=0)
        glands.sample(0)  # warm caches
        times = []
        for index in range(1, repeats + 1):
            start = time.perf_counter()
            glands.sample(index)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "preset": preset,
                "size": size,
                "median_ms": 1e3 * float(np.median(times)),
                "max_ms": 1e3 * float(np.max(times)),
            }
        )
    result = {"machine": platform.machine(), "load_average": os.getloadavg()[0], "rows": rows}
    print(f"{'preset':>8} {'size':>5} {'median ms':>10} {'max ms':>8}   (load average {result['load_average']:.1f})")
    for r in rows:
        print(f"{r['preset']:>8} {r['size']:>5} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
