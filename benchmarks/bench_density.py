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
* W once per call: ``log_prob`` + the gradient w.r.t. the features (what
  ``DensityPerturbation`` computes) at C = 256, 1024 and 2048, by the current head (every
  ``W = P L U`` formed once per call and shared by all chunks and recomputes) and by the
  previous algorithm (each chunk, and each checkpoint recompute, formed ``W`` again),
  reimplemented here on the same blocks and parameters. Both are reported as FLOPs
  (``FlopCounterMode``), median time over interleaved repeats, and as a fraction of the
  FLOP rate of a plain float32 ``torch.mm`` of the dominant shape ``[N, C] x [C, C]``
  timed in the same loop, on one thread and on all threads.
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


def _measure_memory(
    mode: str, channels: int, size: int, batch: int, chunk: int | None, depth: int, hidden: int
) -> dict:
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
    return {
        "peak_growth_mib": round(peak - before, 1),
        "seconds": round(seconds, 2),
        "method": "VmHWM reset" if reset else "ru_maxrss",
    }


def _memory_in_subprocess(**config) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "benchmarks.bench_density", "--child", json.dumps(config)]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]
    )
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
        "channels": channels,
        "rows": rows,
        "depth": depth,
        "hidden": hidden,
        "reps": reps,
        "densessl_ms": round(1e3 * ours, 1),
        "nflows_ms": round(1e3 * theirs, 1),
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
    return {
        "channels": channels,
        "depth": depth,
        "hidden": hidden,
        "pixels": pixels,
        **{k: int(v) for k, v in out.items()},
    }


def _log_prob_rebuilding_w(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The head's log-density by the previous algorithm: each chunk (and each checkpoint
    recompute) runs the flow on its own, so every InvertibleLinear forms W = L U again."""
    from torch.utils.checkpoint import checkpoint

    from densessl.functional import flatten_pixels

    rows = flatten_pixels(features)
    outputs, logdets = [], []
    for chunk in rows.split(head.chunk_size):
        z, logdet = checkpoint(head.transform, chunk, None, use_reentrant=False)
        outputs.append(z)
        logdets.append(logdet)
    return head.prior.log_prob(torch.cat(outputs)) + torch.cat(logdets)


def _w_once_vs_rebuilt(channels: int, rows: int, chunk: int, threads: int, reps: int, depth: int, hidden: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from densessl.density import FlowDensityHead

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        head = FlowDensityHead(channels, 3, depth=depth, hidden=hidden, chunk_size=chunk).eval()
        side = int(rows**0.5)
        assert side * side == rows
        features = torch.randn(1, channels, side, side)
        a, b = torch.randn(rows, channels), torch.randn(channels, channels)

        def current() -> None:
            x = features.clone().requires_grad_(True)
            torch.autograd.grad(head.log_prob(x).sum(), x)

        def previous() -> None:
            x = features.clone().requires_grad_(True)
            torch.autograd.grad(_log_prob_rebuilding_w(head, x).sum(), x)

        def matmul() -> None:
            torch.mm(a, b)

        # same numbers by both algorithms
        x = features.clone().requires_grad_(True)
        ref = _log_prob_rebuilding_w(head, x)
        torch.testing.assert_close(head.log_prob(features), ref.reshape(1, side, side).detach(), rtol=1e-4, atol=1e-3)
        flops = {}
        for name, fn in (("current", current), ("previous", previous), ("mm", matmul)):
            with FlopCounterMode(display=False) as counter:
                fn()
            flops[name] = counter.get_total_flops()
        times: dict[str, list[float]] = {name: [] for name in flops}
        for fn in (current, previous, matmul):  # warm-up
            fn()
        for _ in range(reps):
            for name, fn in (("current", current), ("previous", previous), ("mm", matmul)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        mm_rate = flops["mm"] / med["mm"]
        return {
            "channels": channels,
            "rows": rows,
            "chunk": chunk,
            "threads": threads,
            "reps": reps,
            "gflop_previous": round(flops["previous"] / 1e9, 2),
            "gflop_current": round(flops["current"] / 1e9, 2),
            "flops_saved": round(1 - flops["current"] / flops["previous"], 3),
            "ms_previous": round(1e3 * med["previous"], 1),
            "ms_current": round(1e3 * med["current"], 1),
            "speedup": round(med["previous"] / med["current"], 2),
            "mm_fraction_previous": round(flops["previous"] / med["previous"] / mm_rate, 2),
            "mm_fraction_current": round(flops["current"] / med["current"] / mm_rate, 2),
        }
    finally:
        torch.set_num_threads(previous_threads)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    parser.add_argument("--only", choices=["w_once"], help="run one section only (the others keep their last result)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_memory(**json.loads(args.child))))
        return {}

    channels, depth, hidden = 2048, 2, 256
    all_threads = torch.get_num_threads()
    # (C, rows, chunk): the default chunk at C = 256 and 2048, and 1024-pixel chunks at C = 1024
    w_configs = [(256, 16384, 8192), (1024, 4096, 1024), (2048, 16384, 8192)]
    if args.quick:
        w_configs = [(256, 4096, 1024), (1024, 1024, 256)]
    w_once = []
    for c, rows, chunk in w_configs:
        for threads in sorted({1, all_threads}):
            w_once.append(
                _w_once_vs_rebuilt(c, rows, chunk, threads, reps=2 if args.quick else 3, depth=depth, hidden=hidden)
            )
            print(json.dumps(w_once[-1]), flush=True)
    _print_w_once(w_once)
    if args.only == "w_once":
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        result.update({"torch": torch.__version__, "w_once_per_call": w_once})
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {RESULTS}")
        return result
    # (mode, map side, chunk): the 104x104 map of the design brief, with and without
    # gradients; about four minutes on 2 CPU cores.
    configs = [
        ("no_grad", 104, None),
        ("no_grad", 104, 2048),
        ("train", 64, None),
        ("train", 64, 512),
        ("train", 104, None),
        ("train", 104, 2048),
    ]
    if args.quick:
        configs = [("no_grad", 32, None), ("no_grad", 32, 256), ("train", 32, None), ("train", 32, 256)]
    memory = []
    for mode, size, chunk_size in configs:
        config = {
            "mode": mode,
            "channels": channels,
            "size": size,
            "batch": 1,
            "chunk": chunk_size,
            "depth": depth,
            "hidden": hidden,
        }
        memory.append({**config, **_memory_in_subprocess(**config)})
    speed = []
    for c, rows in ((256, 4096), (1024, 512 if args.quick else 1024)):
        speed.append(_time_pair(c, rows, depth, hidden, reps=3 if args.quick else 5))
    flops = _flops_per_pixel(channels, depth, hidden)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "memory": memory,
        "speed": speed,
        "flops_per_pixel": flops,
        "w_once_per_call": w_once,
    }

    print(f"FlowDensityHead memory, C={channels}, depth={depth}, hidden={hidden}, B=1; peak RSS growth of the call")
    print(f"{'mode':<8} {'map':>8} {'chunk':>7} {'MiB':>9} {'s':>7}")
    for m in memory:
        hw = f"{m['size']}x{m['size']}"
        print(f"{m['mode']:<8} {hw:>8} {str(m['chunk']):>7} {m['peak_growth_mib']:>9.1f} {m['seconds']:>7.2f}")
    print("\nbuilt-in flow vs nflows (same architecture), forward+backward, median ms")
    print(f"{'C':>5} {'rows':>6} {'densessl':>9} {'nflows':>9} {'nflows/densessl':>16}")
    for s in speed:
        print(
            f"{s['channels']:>5} {s['rows']:>6} {s['densessl_ms']:>9.1f} {s['nflows_ms']:>9.1f} "
            f"{s['nflows_over_densessl']:>16.2f}"
        )
    print(
        f"\nFLOPs per pixel at C={channels}: "
        + ", ".join(
            f"{k}={v / 1e6:.1f}M" for k, v in flops.items() if k not in ("channels", "depth", "hidden", "pixels")
        )
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return result


def _print_w_once(rows: list[dict]) -> None:
    print("\nlog_prob + input gradient: W formed once per call (current) vs per chunk and recompute (previous)")
    print(
        f"{'C':>5} {'rows':>6} {'chunk':>6} {'thr':>4} {'GFLOP prev':>11} {'GFLOP now':>10} {'saved':>6} "
        f"{'ms prev':>8} {'ms now':>8} {'speedup':>8} {'mm-frac prev':>13} {'mm-frac now':>12}"
    )
    for r in rows:
        print(
            f"{r['channels']:>5} {r['rows']:>6} {r['chunk']:>6} {r['threads']:>4} {r['gflop_previous']:>11.2f} "
            f"{r['gflop_current']:>10.2f} {r['flops_saved']:>6.1%} {r['ms_previous']:>8.1f} {r['ms_current']:>8.1f} "
            f"{r['speedup']:>8.2f} {r['mm_fraction_previous']:>13.2f} {r['mm_fraction_current']:>12.2f}"
        )


if __name__ == "__main__":
    main()
