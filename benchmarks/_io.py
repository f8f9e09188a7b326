"""Writing a benchmark's result: one JSON file under ``benchmarks/results/``, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from examples.dpfr_gland.checkpoint import atomic_write_text


def write_result(path: str | Path, result: dict) -> Path:
    """Write ``result`` as indented JSON to ``path`` (folders created, temp file + rename) and say so."""
    path = atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
