#!/usr/bin/env bash
# The whole test run: set-up, the linter and formatter check (ruff) and the type checker (mypy densessl),
# the test suite (unit, property, doctests, slow end-to-end), and the Sphinx docs with warnings
# as errors plus their doctests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,docs,examples
export OMP_WAIT_POLICY=PASSIVE
export PYTHONHASHSEED=0
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
echo "lint and format (ruff) and types (mypy densessl) passed"
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
.venv/bin/python -m sphinx -W --keep-going -q -b doctest docs docs/_build/doctest
echo "docs: html and doctest builds passed"
