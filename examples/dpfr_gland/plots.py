"""Pictures of a training run (matplotlib, the ``examples`` extra)."""

from __future__ import annotations

__all__ = ["draw_loss_curves", "smooth"]

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write

# the order of the panels: the losses first, then what the log says about them
_ORDER = ("loss", "sup", "mt", "fdp", "contrast", "flow_nll_per_dim", "fdp_gain", "flip", "kept", "weight")


def smooth(values: Sequence[float], width: int = 10) -> np.ndarray:
    """Trailing moving mean over ``width`` values (over fewer at the start).

    Args:
        values: a series.
        width: the window, ``>= 1``.

    Shapes:
        - values: ``[N]``
        - returns: ``[N]`` float64

    Example:
        >>> smooth([0.0, 2.0, 4.0, 6.0], width=2).tolist()
        [0.0, 1.0, 3.0, 5.0]
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    v = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(v)])
    index = np.arange(1, len(v) + 1)
    start = np.maximum(index - width, 0)
    return (cumulative[index] - cumulative[start]) / (index - start)


def draw_loss_curves(history: Sequence[dict[str, float]], path: str | Path, columns: int = 4) -> list[str]:
    """Draw every logged series into a PNG, one panel per term on a shared iteration axis.

    Each panel shows the logged values faintly and their moving mean (10 logs) in bold, with
    labelled axes; per-class keep rates and class shares (``kept_<class>``, ``share_<class>``)
    share one panel each. The picture is written atomically.

    Args:
        history: one dict per logged iteration with ``"iteration"`` and the values.
        path: the PNG to write.
        columns: panels per row.

    Returns:
        The panel titles, in order.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "losses.png"
        >>> draw_loss_curves([{"iteration": 0, "loss": 2.0, "sup": 2.0}, {"iteration": 1, "loss": 1.0, "sup": 0.5}],
        ...                  path)
        ['loss', 'sup']
        >>> path.is_file()
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(
        {k for row in history for k in row if k != "iteration"},
        key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k),
    )
    panels: dict[str, list[str]] = {}
    for key in keys:
        if key == "kept" or key.startswith("kept_"):
            title = "kept (all / per class)"
        elif key.startswith("share_"):
            title = "teacher's class shares"
        else:
            title = key
        panels.setdefault(title, []).append(key)
    rows = max(1, math.ceil(len(panels) / columns))
    cols = max(1, min(columns, len(panels)))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.6 * rows), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, (title, members) in zip(axes.flat, panels.items()):
        for n, key in enumerate(members):
            points = [(row["iteration"], row[key]) for row in history if key in row and math.isfinite(row[key])]
            if not points:
                continue
            its, values = map(np.asarray, zip(*points))
            colour = f"C{n}"
            label = key if len(members) > 1 else None
            if len(members) == 1:
                ax.plot(its, values, color=colour, lw=0.6, alpha=0.3)
            ax.plot(its, smooth(values), color=colour, lw=1.4, label=label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("iteration", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return list(panels)
