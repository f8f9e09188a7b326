"""The package surface: public names, version, typing marker, import hygiene."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import densessl

PRIMITIVES = ["FlowDensityHead", "DensityPerturbation", "HardAnchorContrast", "EMATeacher", "EntropyPseudoLabeler"]


def test_all_lists_the_primitives_and_every_name_resolves():
    for name in PRIMITIVES:
        assert name in densessl.__all__
    for name in densessl.__all__:
        assert hasattr(densessl, name), name


def test_version_matches_metadata_and_py_typed_ships():
    assert densessl.__version__ == importlib.metadata.version("densessl")
    assert (Path(densessl.__file__).parent / "py.typed").exists()


# Public names that take or return no tensor, so have no Shapes section.
NO_TENSORS = {"densessl.functional.ema_decay"}


def test_every_public_name_documents_shapes_and_has_an_example():
    modules = [
        "densessl.density",
        "densessl.flows",
        "densessl.perturbation",
        "densessl.contrast",
        "densessl.teacher",
        "densessl.pseudo_label",
        "densessl.metrics",
        "densessl.functional",
    ]
    missing = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            doc = getattr(module, name).__doc__ or ""
            qualified = f"{module_name}.{name}"
            if "Example:" not in doc or ">>>" not in doc:
                missing.append(f"{qualified} (Example)")
            if "Shapes:" not in doc and qualified not in NO_TENSORS:
                missing.append(f"{qualified} (Shapes)")
    assert not missing, f"public names with incomplete docstrings: {missing}"


def test_library_does_not_import_examples_or_heavy_optional_packages():
    code = (
        "import sys, densessl; bad = [m for m in ('examples', 'nflows', 'PIL', 'matplotlib') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_recipe_and_benchmarks_use_only_public_densessl_names():
    # The recipe used to import densessl._checks and densessl.functional._labels.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"^\s*(from|import)\s+densessl(\.\w+)*\._\w+", re.MULTILINE)
    offenders = [
        str(p.relative_to(root))
        for folder in ("examples", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if private.search(p.read_text())
    ]
    assert offenders == []
    import densessl.checks

    assert {"check_features", "check_labels", "FLOAT_DTYPES", "value_checks"} <= set(densessl.checks.__all__)
