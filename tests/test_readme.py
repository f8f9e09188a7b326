"""The README's quickstart is code users copy: it must run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_quickstart():
    assert _python_blocks(), "README.md lost its ```python quickstart block"


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, capsys):
    exec(compile(_python_blocks()[index], f"README.md[python block {index}]", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "loss" in out and "nan" not in out.lower()
