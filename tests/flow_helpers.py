"""Helpers shared by the flow and density tests."""

from __future__ import annotations

import torch

from densessl.flows import ActNorm


def perturb_parameters(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often identity) initialisation, in place.

    ActNorm layers are marked initialised, so that a later training-mode call does not
    overwrite the perturbed scales with a data-dependent init.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
    return module
