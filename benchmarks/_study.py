"""What every study of ``benchmarks/`` does with its runs: one harness (:class:`Study`,
:func:`run_study`: plan → runs → measurements → report), training one run quietly, and telling
whether a stored run is still the run the study would train (so a restarted study skips it).

A stored run is reused when its config equals the one the study asks for on every field its
method reads (:func:`examples.dpfr_gland.config.fields_read`): a change of the flow's settings
does not re-run ``mean_teacher``, a change of the recipe's defaults that a method reads does.
"""

from __future__ import annotations

__all__ = [
    "Folders",
    "Study",
    "effective_config",
    "fingerprint",
    "reusable",
    "run_study",
    "selected",
    "study_folders",
    "train_quietly",
]

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.dpfr_gland.config import TrainConfig, fields_read

ROOT = Path(__file__).resolve().parents[1]


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's config that its method reads (the others cannot change its result).

    Example:
        >>> sorted(set(dataclasses.asdict(TrainConfig(method="dpfr"))) -
        ...        set(effective_config(dataclasses.asdict(TrainConfig(method="fr")))))[:3]
        ['alpha_perturbed', 'flow_depth', 'flow_grad_clip']
    """
    read = fields_read(config["method"])
    return {k: v for k, v in config.items() if k in read}


def reusable(stored: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a finished run's stored config is ``config`` on every field its method reads
    (fields added to the recipe since that run count at their defaults).

    Example:
        >>> reusable({"method": "fr", "xi": 3.0}, TrainConfig(method="fr"))  # fr reads no xi
        True
    """
    filled = {**dataclasses.asdict(TrainConfig()), **stored}
    return effective_config(filled) == effective_config(dataclasses.asdict(config))


def fingerprint(config: TrainConfig) -> str:
    """A short hash of the fields ``config``'s method reads: equal for runs that train alike.

    Example:
        >>> fingerprint(TrainConfig(method="fr", xi=1.0)) == fingerprint(TrainConfig(method="fr", xi=2.0))
        True
    """
    effective = effective_config(dataclasses.asdict(config))
    return hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:16]


def train_quietly(config: TrainConfig, out: Path) -> dict[str, Any]:
    """Train one run into ``out`` with the trainer's lines in ``out/train.log`` (the study's own
    progress bar stays readable); returns :func:`examples.dpfr_gland.loop.train`'s result."""
    from examples.dpfr_gland.loop import train

    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            return train(config, out, progress=False)
    finally:
        (out / "train.log").write_text(log.getvalue())


# ----------------------------------------------------------------------------- the harness


@dataclasses.dataclass(frozen=True)
class Folders:
    """Where one variant of a study keeps its rows (``results``), its runs (``outputs``) and its
    summary; ``custom`` when the user named the rows' folder (the summary then goes beside the rows
    and no docs file is written)."""

    tag: str
    results: Path
    outputs: Path
    summary: Path
    custom: bool


class Study:
    """A study of ``benchmarks/``: plan → runs → measurements → report, run by :func:`run_study`.

    A subclass names the study, its scales and its steps. The harness owns what every study does
    alike: the command line shared by all (``--scale``, ``--seeds``, ``--set``, ``--results``,
    ``--outputs``, ``--report``), a variant's own folders (``--set`` hashed into the tag), the loop
    over the plan with a progress bar, the resume rule (a stored row is reused when its config is the
    one the study would train on every field the method reads, :func:`reusable`; two planned runs
    that would train alike train once unless ``train_alike_once`` is off), the row written
    atomically the moment its run ends, and the report over every stored row.
    """

    name: str = ""
    scales: Any = {}
    #: train two planned runs whose configs train alike once (the later one gets no row of its own)
    train_alike_once: bool = True

    def results_root(self) -> Path:
        """The folder under which each variant's rows go (``benchmarks/results``)."""
        return Path(__file__).resolve().parent / "results"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The study's own command-line options."""

    def tag(self, args: argparse.Namespace) -> str:
        """The variant's name before ``--set`` is hashed into it."""
        return str(args.scale)

    def trains(self, args: argparse.Namespace) -> bool:
        """Whether this invocation trains the missing runs."""
        return not args.report

    def plan(self, args: argparse.Namespace) -> Sequence[Any]:
        """The runs, in the order they train; each has a ``name`` (its row's file stem)."""
        raise NotImplementedError

    def config(self, spec: Any, args: argparse.Namespace, folders: Folders, stored: dict | None) -> TrainConfig:
        """The config the study would train ``spec`` with. ``stored`` is the run's stored row when
        there is one: a study whose config depends on an earlier run (the labels it picked) takes that
        part from the row for the resume check."""
        raise NotImplementedError

    def run(self, spec: Any, config: TrainConfig, args: argparse.Namespace, folders: Folders) -> dict:
        """Train one run and measure it: its row (holding ``"config"``)."""
        raise NotImplementedError

    def line(self, spec: Any, row: dict) -> str:
        """The progress line once ``spec``'s row is stored."""
        return spec.name

    def stored(self, spec: Any, row: dict, path: Path, args: argparse.Namespace, folders: Folders) -> None:
        """What follows once a row is stored (measurements that may fail without losing the run)."""

    def measure(self, args: argparse.Namespace, folders: Folders) -> None:
        """Add missing measurements to finished rows (trains nothing)."""

    def rows(self, folders: Folders) -> list[dict]:
        """Every stored row of the variant."""
        return [json.loads(p.read_text()) for p in sorted(folders.results.glob("*.json")) if p.name != "summary.json"]

    def report(self, rows: list[dict], args: argparse.Namespace, folders: Folders) -> dict:
        """The summary, tables and figures from the stored rows."""
        raise NotImplementedError


def study_folders(study: Study, args: argparse.Namespace) -> Folders:
    """The folders of the variant ``args`` names (``--set`` overrides get their own, by hash).

    Example:
        >>> import argparse
        >>> class Toy(Study):
        ...     name = "toy"
        >>> f = study_folders(Toy(), argparse.Namespace(scale="cpu", set=["xi=2"], results="", outputs=""))
        >>> f.tag, f.results.name, f.summary.name
        ('cpu_set-a7134d4a', 'cpu_set-a7134d4a', 'toy_cpu_set-a7134d4a.json')
    """
    tag = study.tag(args)
    if args.set:  # a variant of the study: its own folders, never mixed with the study's runs
        tag += "_set-" + hashlib.sha256("\n".join(args.set).encode()).hexdigest()[:8]
    root = study.results_root()
    results = Path(args.results) if args.results else root / study.name / tag
    outputs = Path(args.outputs) if args.outputs else ROOT / "outputs" / study.name / tag
    summary = results / "summary.json" if args.results else root / f"{study.name}_{tag}.json"
    return Folders(tag, results, outputs, summary, bool(args.results))


def selected(text: str, choices: Sequence[Any]) -> list[Any]:
    """The members of ``choices`` a comma-separated ``--seeds`` / ``--strategies`` list names
    (all of them for ``""``), in the order of ``choices``.

    Example:
        >>> selected("2,0", (0, 1, 2)), selected("", ("a", "b"))
        ([0, 2], ['a', 'b'])
    """
    wanted = set(text.split(",")) if text else None
    return [c for c in choices if wanted is None or str(c) in wanted]


def run_study(study: Study, argv: Sequence[str] | None = None, description: str = "") -> dict:
    """Run ``study`` as its command line says: train the planned runs a stored row does not already
    hold, add missing measurements, report over every stored row; returns the report's summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=sorted(study.scales), default="cpu")
    parser.add_argument("--seeds", default="", help="comma-separated subset of the scale's seeds")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (e.g. iterations=1200); a variant gets its own folders",
    )
    parser.add_argument("--results", default="", help="folder of the per-run rows (default under benchmarks/results)")
    parser.add_argument("--outputs", default="", help="folder of the runs' checkpoints (default under outputs/)")
    parser.add_argument("--report", action="store_true", help="train nothing: only the summary, tables and figures")
    study.add_arguments(parser)
    args = parser.parse_args(argv)
    folders = study_folders(study, args)
    folders.results.mkdir(parents=True, exist_ok=True)
    if study.trains(args):
        _train_plan(study, args, folders)
    study.measure(args, folders)
    return study.report(study.rows(folders), args, folders)


def _train_plan(study: Study, args: argparse.Namespace, folders: Folders) -> None:
    from tqdm import tqdm

    from examples.dpfr_gland.checkpoint import atomic_write_text

    bar = tqdm(study.plan(args), desc=f"{study.name} {folders.tag}", unit="run", dynamic_ncols=True)
    seen: set[str] = set()
    for spec in bar:
        path = folders.results / f"{spec.name}.json"
        stored = json.loads(path.read_text()) if path.is_file() else None
        config = study.config(spec, args, folders, stored)
        key = fingerprint(config)
        if study.train_alike_once and key in seen:  # an earlier run of this plan trains alike
            continue
        seen.add(key)
        if stored is not None:
            if reusable(stored["config"], config):
                continue  # finished in an earlier start of the study
            config = study.config(spec, args, folders, None)  # stale: planned afresh
        bar.set_postfix_str(spec.name)
        row = study.run(spec, config, args, folders)
        atomic_write_text(path, json.dumps(row) + "\n")
        bar.write(study.line(spec, row))
        study.stored(spec, row, path, args, folders)
