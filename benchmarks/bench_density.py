"""FlowDensityHead: peak memory (chunked vs unchunked), built-in flow vs nflows speed, FLOPs.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_density`` (add ``--quick`` for
a smaller run). Prints a table and writes ``benchmarks/results/bench_density.json``.

* Memory: each configuration runs in a fresh subprocess; the number reported is the
  growth of the peak resident set (``ru_maxrss``) over the process's peak just before
  the measured call (features and head already allocated), so it is the working
  memory of that call alone.
* Speed: the built-in GLOW flow and an equivalent nflows flow (ActNorm, LULinear,
  affine coupling with the same conditioner MLP) are timed interleaved in one process,
  forward + backward; the ratio is the number to read, not the absolute times.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` per pixel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "bench_density.json"


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _measure_memory(mode: str, channels: int, size: int, batch: int, chunk: int | None, depth: int, hidden: int) -> dict:
    """Runs inside the child process."""
    from densessl.density import FlowDensityHead

    torch.manual_seed(0)
    head = FlowDensityHead(channels, 3, depth=depth, hidden=hidden, chunk_size=chunk)
    features = torch.randn(batch, channels, size, size)
    labels = torch.randint(0, 3, (batch, size, size))
    # ActNorm init on a few pixels, outside the measurement (no graph, so a small peak)
    head.train()
    with torch.no_grad():
        head.nll(features[:, :, :4, :4], labels[:, :4, :4])
    # Peak RSS of the call above the RSS just before it. Big tensors are mmapped (the
    # parent sets MALLOC_MMAP_THRESHOLD_), so freed memory leaves RSS and RSS ~ live memory.
    reset = _reset_peak()
    before = _status_mib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    start = time.perf_counter()
    if mode == "train":
        head.nll(features, labels).backward()
    else:
        head.eval()
        with torch.no_grad():
            head.log_prob(features)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"peak_growth_mib": round(peak - before, 1), "seconds": round(seconds, 2),
            "method": "VmHWM reset" if reset else "ru_maxrss"}


def _memory_in_subprocess(**config) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "benchmarks.bench_density", "--child", json.dumps(config)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


class _Conditioner(nn.Module):
    """The built-in coupling's MLP, with nflows' ``(inputs, context)`` call signature."""

    def __init__(self, inputs: int, outputs: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
        )

    def forward(self, inputs: torch.Tensor, context: object = None) -> torch.Tensor:
        return self.net(inputs)


def _nflows_glow(channels: int, depth: int, hidden: int) -> nn.Module:
    from nflows import transforms as nt

    mask = torch.zeros(channels)
    mask[channels // 2 :] = 1  # nflows: 1 = transformed, like ours (second half transformed)
    blocks = []
    for _ in range(depth):
        blocks += [
            nt.ActNorm(channels),
            nt.LULinear(channels, identity_init=False),
            nt.AffineCouplingTransform(mask, lambda i, o: _Conditioner(i, o, hidden)),
        ]
    return nt.CompositeTransform(blocks)


def _time_pair(channels: int, rows: int, depth: int, hidden: int, reps: int) -> dict:
    from densessl.flows import glow_flow

    torch.manual_seed(0)
    flows = {"densessl": glow_flow(channels, depth, hidden), "nflows": _nflows_glow(channels, depth, hidden)}
    x = torch.randn(rows, channels)
    for flow in flows.values():  # ActNorm init + warm-up
        flow(x)[1].sum().backward()
    times: dict[str, list[float]] = {name: [] for name in flows}
    for _ in range(reps):
        for name, flow in flows.items():  # interleaved, so machine load hits both alike
            flow.zero_grad(set_to_none=True)
            start = time.perf_counter()
            z, logdet = flow(x)
            (0.5 * (z * z).sum() - logdet.sum()).backward()
            times[name].append(time.perf_counter() - start)
    ours, theirs = statistics.median(times["densessl"]), statistics.median(times["nflows"])
    return {
        "channels": channels, "rows": rows, "depth": depth, "hidden": hidden, "reps": reps,
        "densessl_ms": round(1e3 * ours, 1), "nflows_ms": round(1e3 * theirs, 1),
        "nflows_over_densessl": round(theirs / ours, 2),
    }


def _flops_per_pixel(channels: int, depth: int, hidden: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from densessl.density import FlowDensityHead

    side = 48 if channels <= 2304 else 64  # >= C pixels: InvertibleLinear forms W once
    pixels = side * side
    head = FlowDensityHead(channels, 3, depth=depth, hidden=hidden, chunk_size=None).eval()
    nflows_flow = _nflows_glow(channels, depth, hidden).eval()
    x = torch.randn(1, channels, side, side)
    out = {}
    with FlopCounterMode(display=False) as counter:
        head.log_prob(x)
    out["densessl_log_prob_forward"] = counter.get_total_flops() / pixels
    with FlopCounterMode(display=False) as counter:
        head.log_prob(x.clone().requires_grad_(True)).sum().backward()
    out["densessl_log_prob_forward_backward"] = counter.get_total_flops() / pixels
    rows = x.flatten(2).transpose(1, 2).reshape(pixels, channels)
    with FlopCounterMode(display=False) as counter:
        nflows_flow(rows)
    out["nflows_flow_forward"] = counter.get_total_flops() / pixels
    return {"channels": channels, "depth": depth, "hidden": hidden, "pixels": pixels,
            **{k: int(v) for k, v in out.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_memory(**json.loads(args.child))))
        return {}

    channels, depth, hidden = 2048, 2, 256
    # (mode, map side, chunk): the 104x104 map of the design brief, with and without
    # gradients; about four minutes on 2 CPU cores.
    configs = [("no_grad", 104, None), ("no_grad", 104, 2048), ("train", 64, None), ("train", 64, 512),
               ("train", 104, None), ("train", 104, 2048)]
    if args.quick:
        configs = [("no_grad", 32, None), ("no_grad", 32, 256), ("train", 32, None), ("train", 32, 256)]
    memory = []
    for mode, size, chunk_size in configs:
        config = {"mode": mode, "channels": channels, "size": size, "batch": 1, "chunk": chunk_size,
                  "depth": depth, "hidden": hidden}
        memory.append({**config, **_memory_in_subprocess(**config)})
    speed = []
    for c, rows in ((256, 4096), (1024, 512 if args.quick else 1024)):
        speed.append(_time_pair(c, rows, depth, hidden, reps=3 if args.quick else 5))
    flops = _flops_per_pixel(channels, depth, hidden)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "memory": memory, "speed": speed, "flops_per_pixel": flops}

    print(f"FlowDensityHead memory, C={channels}, depth={depth}, hidden={hidden}, B=1; peak RSS growth of the call")
    print(f"{'mode':<8} {'map':>8} {'chunk':>7} {'MiB':>9} {'s':>7}")
    for m in memory:
        hw = f"{m['size']}x{m['size']}"
        print(f"{m['mode']:<8} {hw:>8} {str(m['chunk']):>7} {m['peak_growth_mib']:>9.1f} {m['seconds']:>7.2f}")
    print("\nbuilt-in flow vs nflows (same architecture), forward+backward, median ms")
    print(f"{'C':>5} {'rows':>6} {'densessl':>9} {'nflows':>9} {'nflows/densessl':>16}")
    for s in speed:
        print(f"{s['channels']:>5} {s['rows']:>6} {s['densessl_ms']:>9.1f} {s['nflows_ms']:>9.1f} {s['nflows_over_densessl']:>16.2f}")
    print(f"\nFLOPs per pixel at C={channels}: " + ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in flops.items()
                                                          if k not in ("channels", "depth", "hidden", "pixels")))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
