"""Sphinx configuration for densessl (built with -W: warnings are errors)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import densessl  # noqa: E402

project = "densessl"
author = "densessl developers"
copyright = "2026, densessl developers"
release = densessl.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Shapes:" is our section for tensor contracts; render it like "Args:" would a list.
napoleon_custom_sections = [("Shapes", "notes_style"), ("References", "notes_style")]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_inherit_docstrings = False
# nn.Module.forward etc. are documented on our classes; torch's own members are not ours to document.
autoclass_content = "class"

doctest_global_setup = """
import torch
torch.manual_seed(0)
"""

html_theme = "furo"
html_title = f"densessl {release}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
nitpicky = False

# Docstring examples (">>>" blocks) are run by pytest --doctest-modules in their own
# module's namespace; the Sphinx doctest builder runs the guides' testcode blocks.
doctest_test_doctest_blocks = ""
