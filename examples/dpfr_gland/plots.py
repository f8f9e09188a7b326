"""Pictures of a training run."""

from __future__ import annotations

__all__ = ["draw_loss_curves"]

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .checkpoint import atomic_write


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]


def draw_loss_curves(history: Sequence[dict[str, float]], path: str | Path, size: tuple[int, int] = (640, 360)) -> None:
    """Draw every logged series against the iteration into a PNG (Pillow only), one colour each.

    Each series is scaled to its own range (printed in the legend), so losses of very
    different sizes stay readable.

    Args:
        history: one dict per logged iteration with ``"iteration"`` and the values.
        path: the PNG to write (atomically).
        size: picture ``(width, height)``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "losses.png"
        >>> draw_loss_curves([{"iteration": 0, "loss": 2.0}, {"iteration": 1, "loss": 1.0}], path)
        >>> path.is_file()
        True
    """
    width, height = size
    picture = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    left, right, top, bottom = 40, width - 10, 10, height - 25
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    keys = sorted({k for row in history for k in row if k != "iteration"})
    its = [row["iteration"] for row in history]
    lo_it, hi_it = (min(its), max(its)) if its else (0, 1)
    span_it = max(hi_it - lo_it, 1)
    for n, key in enumerate(keys):
        points = [(row["iteration"], row[key]) for row in history if key in row and math.isfinite(row[key])]
        if not points:
            continue
        values = [v for _, v in points]
        lo, hi = min(values), max(values)
        span = hi - lo if hi > lo else 1.0
        xy = [(left + (i - lo_it) / span_it * (right - left), bottom - (v - lo) / span * (bottom - top))
              for i, v in points]
        colour = _COLOURS[n % len(_COLOURS)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=colour)
        draw.text((left + 6, top + 4 + 12 * n), f"{key} [{lo:.3g}, {hi:.3g}]", fill=colour)
    draw.text((left, bottom + 6), f"iteration {lo_it} .. {hi_it}", fill=(0, 0, 0))
    atomic_write(path, lambda handle: picture.save(handle, format="PNG"))
