"""Whole images: seconds per megapixel and peak memory of tiled prediction against the image's side.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.large_image`` (sides 2048, 8192, 16384 with a
colour classifier that stands in for a trained segmenter, plus CE-Net ResNet-34 (random weights: its
speed and memory, not its glands) at 2048, tiled against untiled); ``--sides 512 --models colour``
for a smoke run. Each measurement runs in a fresh subprocess:

1. the image is a memory-mapped ``uint8 [N, N, 3]`` ``.npy`` made of synthetic 512-pixel gland
   samples (written once to ``outputs/large_image/``);
2. :func:`examples.dpfr_gland.large.predict_large` writes the class map and the winning class's
   probability into memory-mapped arrays, :func:`~examples.dpfr_gland.large.instances_by_strips`
   the glands into a third, and the GeoJSON is written;
3. reported: seconds per megapixel of each stage and the growth of the peak resident set (VmHWM
   reset before the call) — memory that stays in RAM while the outputs live on disk.

``untiled`` rows run :func:`examples.dpfr_gland.evaluate.predict` on the whole image in memory
and ``classes_to_instances``, where that fits, and say how many pixels' classes agree with the
tiled run. Writes ``benchmarks/results/large_image.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from examples.dpfr_gland.checkpoint import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "large_image.json"
CACHE = ROOT / "outputs" / "large_image"


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class _AnonPeak:
    """Peak anonymous resident memory (``RssAnon``) while a block runs, sampled every 20 ms.

    ``VmHWM`` also counts the pages of memory-mapped files a process has touched (the image and
    the outputs live in such files); the kernel can drop those at any time, so the memory the
    computation needs is the anonymous part.
    """

    def __enter__(self) -> "_AnonPeak":
        import threading

        self.start = _status_mib("RssAnon")
        self.peak = self.start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, _status_mib("RssAnon"))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mib("RssAnon"))

    @property
    def growth(self) -> float:
        return round(self.peak - self.start, 1)


def synthetic_slide(side: int, folder: Path = CACHE, piece: int = 512) -> Path:
    """A memory-mapped ``uint8 [side, side, 3]`` image of synthetic gland samples (cached)."""
    from examples.dpfr_gland.synthetic import SyntheticGlands

    path = folder / f"slide_{side}.npy"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    glands = SyntheticGlands("medium", size=piece, seed=11)
    tmp = path.with_suffix(".tmp.npy")
    image = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(side, side, 3))
    n = 0
    for y in range(0, side, piece):
        for x in range(0, side, piece):
            sample = glands.sample(n)[0]
            n += 1
            image[y : y + piece, x : x + piece] = sample[: side - y, : side - x]
    image.flush()
    del image
    tmp.replace(path)
    return path


def _colour_classifier(kernel: int = 9, samples: int = 4):
    """A stand-in segmenter whose output looks like glands: a linear discriminant (LDA, shared
    covariance, closed form) on each pixel's normalised colour and the mean colour of its
    ``kernel``-pixel neighbourhood, fitted on ``samples`` synthetic images (seeds the slides do not
    use). A random network labels ~99 % of a slide "gland", one component with thousands of holes,
    which measures nothing a real model meets; this one finds glands of gland size (more pieces
    than truth: about 3x as many objects on the medium preset)."""
    import torch

    from examples.dpfr_gland.augment import to_tensor
    from examples.dpfr_gland.synthetic import SyntheticGlands
    from examples.dpfr_gland.targets import instances_to_classes

    class ColourLDA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = torch.nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)
            self.classify = torch.nn.Conv2d(6, 3, 1)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.pool(x)], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classify(self.features(x))

    model = ColourLDA().eval()
    glands = SyntheticGlands("medium", size=512, seed=5)
    xs, ys = [], []
    with torch.no_grad():
        for n in range(samples):
            image, instances = glands.sample(n)
            xs.append(model.features(to_tensor(image)[None])[0].flatten(1).t().double())
            ys.append(torch.from_numpy(np.asarray(instances_to_classes(instances))).flatten().long())
        x, y = torch.cat(xs), torch.cat(ys)
        means = torch.stack([x[y == c].mean(0) for c in range(3)])
        centred = x - means[y]
        precision = torch.linalg.inv(centred.t() @ centred / len(x) + 1e-6 * torch.eye(6, dtype=torch.float64))
        weight = means @ precision
        prior = torch.bincount(y, minlength=3).double() / len(y)
        bias = -0.5 * (weight * means).sum(1) + prior.log()
        model.classify.weight.copy_(weight[:, :, None, None].float())
        model.classify.bias.copy_(bias.float())
    return model


def _model(name: str):
    import torch

    torch.manual_seed(0)
    if name == "colour":
        return _colour_classifier()
    from examples.dpfr_gland.model import CENet

    return CENet(num_classes=3, backbone="resnet34").eval()


def _child(config: dict) -> dict:
    import torch

    from examples.dpfr_gland.geojson import gland_features, write_geojson
    from examples.dpfr_gland.large import instances_by_strips, predict_large

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    side, tile, overlap = config["side"], config["tile"], config["overlap"]
    image = np.load(config["image"], mmap_mode="r")
    model = _model(config["model"])
    folder = Path(config["out"])
    folder.mkdir(parents=True, exist_ok=True)
    megapixels = side * side / 1e6
    row = dict(config)
    if config["mode"] == "untiled":
        from examples.dpfr_gland.augment import to_tensor
        from examples.dpfr_gland.evaluate import predict
        from examples.dpfr_gland.targets import classes_to_instances

        _reset_peak()
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        with _AnonPeak() as anon:
            probs = predict(model, to_tensor(np.asarray(image)), tile=tile, overlap=overlap)
            classes = probs.argmax(0).to(torch.uint8).numpy()
            instances = classes_to_instances(classes)
        row["seconds_per_mp"] = round((time.perf_counter() - start) / megapixels, 3)
        row["peak_growth_mib"] = round(_status_mib("VmHWM") - before, 1)
        row["anon_peak_growth_mib"] = anon.growth
        tiled = np.load(folder / "classes.npy", mmap_mode="r") if (folder / "classes.npy").is_file() else None
        if tiled is not None:
            row["class_agreement_with_tiled"] = float((np.asarray(tiled) == classes).mean())
        row["glands"] = int(instances.max())
        return row
    if config["mode"] == "predict_file":  # the command's whole out-of-core path: maps, TIFFs, overlay, GeoJSON
        from examples.dpfr_gland.predict import predict_file

        _reset_peak()
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        with _AnonPeak() as anon:
            written = predict_file(
                model,
                Path(config["image"]),
                folder / "predict",
                tile=tile,
                overlap=overlap,
                geojson=True,
                in_memory_pixels=0,
            )
        row["seconds_per_mp"] = round((time.perf_counter() - start) / megapixels, 3)
        row["peak_growth_mib"] = round(_status_mib("VmHWM") - before, 1)
        row["anon_peak_growth_mib"] = anon.growth
        row["glands"] = written["glands"]
        row["files_mib"] = {
            Path(p).name: round(Path(p).stat().st_size / 2**20, 1)
            for k, p in written.items()
            if k in ("instances", "classes", "overlay", "geojson")
        }
        return row
    classes = np.lib.format.open_memmap(folder / "classes.npy", mode="w+", dtype=np.uint8, shape=(side, side))
    probability = np.lib.format.open_memmap(folder / "probability.npy", mode="w+", dtype=np.float16, shape=(side, side))
    instances = np.lib.format.open_memmap(folder / "instances.npy", mode="w+", dtype=np.int32, shape=(side, side))
    stages = {}
    for stage in ("predict_large", "instances_by_strips", "geojson"):
        _reset_peak()
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        anon = _AnonPeak().__enter__()
        if stage == "predict_large":
            predict_large(model, image, tile=tile, overlap=overlap, out=classes, probability_out=probability)
            classes.flush()
        elif stage == "instances_by_strips":
            instances_by_strips(classes, out=instances)
            instances.flush()
        else:
            written = []  # one id per feature, counted while the features stream to the file

            def counted(written=written):
                for feature in gland_features(instances, probability):
                    written.append(feature["properties"]["id"])
                    yield feature

            write_geojson(folder / "slide.geojson", counted())
            row["glands"] = len(written)
        anon.__exit__()
        stages[stage] = {
            "seconds_per_mp": round((time.perf_counter() - start) / megapixels, 3),
            "peak_growth_mib": round(_status_mib("VmHWM") - before, 1),
            "anon_peak_growth_mib": anon.growth,
        }
    row["stages"] = stages
    return row


def _run_child(config: dict) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_image", "--child", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"child {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="2048,8192,16384", help="image sides for the colour model")
    parser.add_argument("--models", default="colour,cenet", help="colour (all sides) and/or cenet (the first side)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="measure every row again (default: reuse the rows "
        "already in --out with the same model, side, mode, tile, overlap and BENCH_THREADS)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return {}
    from tqdm import tqdm

    from benchmarks._io import write_result

    sides = [int(s) for s in args.sides.split(",")]
    models = args.models.split(",")
    plan = [("colour", side, "tiled") for side in sides] if "colour" in models else []
    if "colour" in models:
        plan.append(("colour", sides[-1], "predict_file"))  # the predict command out of core, GeoJSON included
    if "cenet" in models:
        plan += [("cenet", sides[0], "tiled"), ("cenet", sides[0], "untiled")]

    threads = int(os.environ.get("BENCH_THREADS", "2"))

    def key(row: dict) -> tuple:
        return row["model"], row["side"], row["mode"], row["tile"], row["overlap"], row.get("threads", 2)

    previous = {}
    if not args.fresh and Path(args.out).is_file():
        previous = {key(row): row for row in json.loads(Path(args.out).read_text()).get("rows", [])}
    rows = []
    note = (
        "anon_peak_growth_mib: peak RssAnon (sampled every 20 ms) over its value before the stage — "
        "the memory the computation holds; peak_growth_mib: VmHWM growth, which also counts "
        "touched pages of the memory-mapped image and outputs (file pages the kernel can drop)"
    )
    for model, side, mode in tqdm(plan, desc="large_image", unit="run"):
        old = previous.get((model, side, mode, args.tile, args.overlap, threads))
        if old is not None:  # measured in an earlier start
            rows.append(old)
            continue
        image = synthetic_slide(side, Path(args.cache))
        config = dict(
            model=model,
            side=side,
            mode=mode,
            tile=args.tile,
            overlap=args.overlap,
            image=str(image),
            out=str(Path(args.cache) / f"{model}_{side}"),
        )
        row = _run_child(config)
        row["threads"] = threads
        rows.append(row)
        # each finished row is stored at once, so a restart skips it
        done = {key(r): r for r in (*previous.values(), *rows)}
        write_result(args.out, {"tile": args.tile, "overlap": args.overlap, "rows": list(done.values()), "note": note})
        if mode == "tiled":
            text = ", ".join(
                f"{k} {v['seconds_per_mp']} s/MP, anon {v['anon_peak_growth_mib']} MiB (HWM {v['peak_growth_mib']})"
                for k, v in row["stages"].items()
            )
        else:
            text = (
                f"{row['seconds_per_mp']} s/MP, anon {row['anon_peak_growth_mib']} MiB (HWM {row['peak_growth_mib']})"
            )
        tqdm.write(f"{model} {side}² {mode}: {text}")
    # the rows of this plan, then any earlier row it did not include (another --models / --sides)
    kept = {key(r): r for r in rows}
    result = {
        "tile": args.tile,
        "overlap": args.overlap,
        "note": note,
        "rows": [*rows, *(r for k, r in previous.items() if k not in kept)],
    }
    write_result(args.out, result)
    if args.out == str(RESULTS):
        atomic_write_text(ROOT / "docs" / "large_image_table.inc", rst_table(result))
    return result


def rst_table(result: dict) -> str:
    """The rows as an RST ``csv-table`` for ``docs/benchmarks.rst``."""
    lines = [
        ".. csv-table::",
        '   :header: "model", "side", "mode", "stage", "threads", "s / MP", "anon MiB", "HWM MiB", "glands"',
        "",
    ]
    for row in result["rows"]:
        stages = (
            row["stages"].items()
            if row["mode"] == "tiled"
            else [("predict + instances" if row["mode"] == "untiled" else "predict_file (all outputs)", row)]
        )
        for stage, v in stages:
            lines.append(
                f'   "{row["model"]}", "{row["side"]}", "{row["mode"]}", "{stage}", "{row.get("threads", "")}", '
                f'"{v["seconds_per_mp"]}", '
                f'"{v["anon_peak_growth_mib"]}", "{v["peak_growth_mib"]}", "{row.get("glands", "")}"'
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
