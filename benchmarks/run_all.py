"""Run every benchmark in turn (``make bench``); each prints its table and writes its JSON
under ``benchmarks/results/``. Set ``OMP_WAIT_POLICY=PASSIVE`` on shared CPUs."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = ["bench_density", "bench_contrast", "bench_metrics", "bench_synthetic", "quality_targets", "bench_model"]


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or BENCHMARKS
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        module.main([]) if name == "bench_density" else module.main()
        print(f"({name} took {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
