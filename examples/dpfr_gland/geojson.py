"""Glands as GeoJSON polygons that QuPath imports, and back to a label map.

:func:`instances_to_geojson` traces every gland of an instance map along the pixel edges (so the
polygons cover exactly the gland's pixels, holes kept as inner rings, a gland in pieces as a
``MultiPolygon``) and writes a ``FeatureCollection`` in full-image pixel coordinates (x to the
right, y down; pixel ``(row, col)`` is the square ``[col, col + 1] x [row, row + 1]``).
:func:`rasterize_geojson` fills the polygons back (even-odd rule at pixel centres), which the
tests use to check that nothing is lost.
"""

from __future__ import annotations

__all__ = ["gland_features", "instances_to_geojson", "rasterize_geojson", "write_geojson"]

import json
from collections import defaultdict
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np
from scipy import ndimage

from .checkpoint import atomic_write, atomic_write_text


def _rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The boundary rings of a 4-connected pixel set, along pixel edges, as closed vertex lists.

    Edges are directed with the set on their right (screen coordinates, y down); where two
    rings meet at a corner (pixels touching diagonally) the walk turns right, so diagonal
    neighbours stay separate rings.
    """
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    rows, cols = np.nonzero(inside)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for dr, dc, start, end in (
        (-1, 0, (0, 0), (1, 0)),  # outside above: top edge, moving +x
        (0, 1, (1, 0), (1, 1)),  # outside right: right edge, moving +y
        (1, 0, (1, 1), (0, 1)),  # outside below: bottom edge, moving -x
        (0, -1, (0, 1), (0, 0)),  # outside left: left edge, moving -y
    ):
        outside = ~padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(inside & outside)):
            # vertices as (x, y)
            edges[(c + start[0], r + start[1])].append((c + end[0], r + end[1]))
    rings = []
    while edges:
        first = next(iter(edges))
        ring = [first]
        current, direction = first, None
        while True:
            options = edges[current]
            if len(options) == 1 or direction is None:
                nxt = options.pop(0)
            else:  # a corner shared by two rings: turn right (towards the set)
                right = (-direction[1], direction[0])
                pick = next((i for i, o in enumerate(options) if (o[0] - current[0], o[1] - current[1]) == right), 0)
                nxt = options.pop(pick)
            if not options:
                del edges[current]
            direction = (nxt[0] - current[0], nxt[1] - current[1])
            current = nxt
            if current == first:
                break
            ring.append(current)
        rings.append(_simplify(ring))
    return rings


def _simplify(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop vertices in the middle of straight runs."""
    n = len(ring)
    keep = []
    for i in range(n):
        a, b, c = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            keep.append(b)
    return keep


def _signed_area(ring: list[tuple[int, int]]) -> float:
    x = np.array([p[0] for p in ring], dtype=np.float64)
    y = np.array([p[1] for p in ring], dtype=np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _polygon(component: np.ndarray, offset: tuple[int, int]) -> list[list[list[int]]]:
    """One 4-connected component: its outer ring first (counter-clockwise in x/y values, as
    RFC 7946 asks), then its holes (clockwise); each ring closed (last position = first)."""
    rings = _rings(component)
    # edges keep the set on the right in y-down screen coordinates: in x/y values the outer ring
    # then has positive shoelace area, holes negative
    outer = [r for r in rings if _signed_area(r) > 0]
    holes = [r for r in rings if _signed_area(r) < 0]
    ox, oy = offset
    out = []
    for ring in outer + holes:
        points = [[int(x + ox), int(y + oy)] for x, y in ring]
        out.append(points + [points[0]])
    return out


def _boxes(instances: np.ndarray, strip: int = 1024) -> dict[int, tuple[slice, slice]]:
    """Each label's bounding box, found strip by strip (a memory-mapped map is never read whole).

    The boxes (a few hundred bytes per gland) are all that is held of the map; a label's box is
    only known once the whole map is scanned, as a label may reappear in pieces further down."""
    boxes: dict[int, list[int]] = {}
    for y0 in range(0, instances.shape[0], strip):
        part = np.asarray(instances[y0 : y0 + strip])
        if not part.any():
            continue
        for label, box in enumerate(ndimage.find_objects(part), start=1):
            if box is None:
                continue
            r0, r1, c0, c1 = box[0].start + y0, box[0].stop + y0, box[1].start, box[1].stop
            if label in boxes:
                b = boxes[label]
                boxes[label] = [min(b[0], r0), max(b[1], r1), min(b[2], c0), max(b[3], c1)]
            else:
                boxes[label] = [r0, r1, c0, c1]
    return {label: (slice(b[0], b[1]), slice(b[2], b[3])) for label, b in sorted(boxes.items())}


def _feature(
    instances: np.ndarray,
    probability: np.ndarray | None,
    label: int,
    box: tuple[slice, slice],
    classification: str,
    colour: tuple[int, int, int],
) -> dict[str, Any]:
    mask = np.asarray(instances[box]) == label
    pieces, count = ndimage.label(mask)
    # each piece traced on its own crop: a gland in many pieces must not cost pieces x box area
    polygons = [
        _polygon(pieces[piece] == k, (box[1].start + piece[1].start, box[0].start + piece[0].start))
        for k, piece in enumerate(ndimage.find_objects(pieces), start=1)
    ]
    geometry = (
        {"type": "Polygon", "coordinates": polygons[0]}
        if count == 1
        else {"type": "MultiPolygon", "coordinates": polygons}
    )
    properties: dict[str, Any] = {
        "objectType": "detection",
        "id": int(label),
        "classification": {"name": classification, "color": list(colour)},
        "area": int(mask.sum()),
    }
    if probability is not None:
        properties["mean_probability"] = float(np.asarray(probability[box], dtype=np.float64)[mask].mean())
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def gland_features(
    instances: np.ndarray,
    probability: np.ndarray | None = None,
    classification: str = "Gland",
    colour: tuple[int, int, int] = (0, 200, 120),
) -> Iterator[dict[str, Any]]:
    """The GeoJSON features of :func:`instances_to_geojson`, one at a time, for maps too large to
    hold every polygon: the map's bounding boxes are found strip by strip, then each gland is
    traced on its own crop and yielded, in label order.

    Args:
        instances: the instance map (0 background); a memory-mapped array is read strip by strip.
        probability: as in :func:`instances_to_geojson`, or ``None``.
        classification: the class name QuPath shows.
        colour: its RGB colour.

    Shapes:
        - instances: ``[H, W]`` integer
        - probability: ``[H, W]`` float

    Example:
        >>> import numpy as np
        >>> glands = np.zeros((6, 6), np.int32); glands[4:6, 0:2] = 1; glands[0:2, 3:5] = 2
        >>> [feature["properties"]["id"] for feature in gland_features(glands)]
        [1, 2]
    """
    for label, box in _boxes(instances).items():
        yield _feature(instances, probability, label, box, classification, colour)


def instances_to_geojson(
    instances: np.ndarray,
    probability: np.ndarray | None = None,
    classification: str = "Gland",
    colour: tuple[int, int, int] = (0, 200, 120),
) -> dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` with one feature per gland of ``instances``.

    Each feature is a ``Polygon`` (a ``MultiPolygon`` for a gland in several 4-connected
    pieces) whose rings run along the pixel edges — the outer ring, then one ring per hole —
    with QuPath's ``objectType`` (``"detection"``) and ``classification`` (name and colour), the
    gland's ``id``, ``area`` in pixels and, when ``probability`` is given, its ``mean_probability``.

    Args:
        instances: the instance map (0 background).
        probability: the predicted probability of each pixel's class (e.g. the ``probability_out``
            of :func:`examples.dpfr_gland.large.predict_large`), or ``None``.
        classification: the class name QuPath shows.
        colour: its RGB colour.

    Shapes:
        - instances: ``[H, W]`` integer
        - probability: ``[H, W]`` float

    Returns:
        The feature collection (a dict, ready for ``json.dumps``).

    Example:
        >>> import numpy as np
        >>> ring = np.ones((4, 4), np.int32); ring[1:3, 1:3] = 0
        >>> feature = instances_to_geojson(ring)["features"][0]
        >>> feature["geometry"]["type"], len(feature["geometry"]["coordinates"]), feature["properties"]["area"]
        ('Polygon', 2, 12)
    """
    features = list(gland_features(instances, probability, classification, colour))
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict[str, Any] | Iterable[dict[str, Any]]) -> Path:
    """Write a ``FeatureCollection`` atomically (temp file + rename).

    Args:
        path: the ``.geojson`` file.
        collection: a feature collection (e.g. of :func:`instances_to_geojson`), or an iterable of
            features (e.g. :func:`gland_features`), written one at a time so that no more than one
            feature is held.

    Returns:
        The path written.

    Example:
        >>> import json, tempfile, pathlib, numpy as np
        >>> glands = np.zeros((4, 4), np.int32); glands[1:3, 1:3] = 5
        >>> path = write_geojson(pathlib.Path(tempfile.mkdtemp()) / "g.geojson", gland_features(glands))
        >>> [f["properties"]["area"] for f in json.loads(path.read_text())["features"]]
        [4]
    """
    if isinstance(collection, dict):
        return atomic_write_text(path, json.dumps(collection) + "\n")
    features = iter(collection)

    def write(handle: IO[bytes]) -> None:
        handle.write(b'{"type": "FeatureCollection", "features": [')
        for n, feature in enumerate(features):
            handle.write((", " if n else "").encode() + json.dumps(feature).encode())
        handle.write(b"]}\n")

    return atomic_write(path, write)


def rasterize_geojson(collection: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Fill the features back into a label map: pixel centres inside a feature's rings (even-odd
    rule) get its ``id`` (or its position + 1 when it has none).

    Args:
        collection: a ``FeatureCollection`` of axis-aligned polygons in pixel coordinates.
        shape: ``(H, W)`` of the map.

    Shapes:
        - returns: ``[H, W]`` int32

    Example:
        >>> import numpy as np
        >>> blob = np.zeros((5, 6), np.int32); blob[1:4, 2:5] = 3
        >>> bool((rasterize_geojson(instances_to_geojson(blob), blob.shape) == blob).all())
        True
    """
    height, width = shape
    out = np.zeros(shape, np.int32)
    for n, feature in enumerate(collection["features"]):
        label = int(feature.get("properties", {}).get("id", n + 1))
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        crossings: dict[int, list[int]] = defaultdict(list)
        for polygon in polygons:
            for ring in polygon:
                for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]):
                    if x0 == x1 and y0 != y1:  # a vertical edge crosses the rows between its ends
                        for row in range(max(0, min(y0, y1)), min(height, max(y0, y1))):
                            crossings[row].append(int(x0))
        for row, xs in crossings.items():
            xs.sort()
            for a, b in zip(xs[0::2], xs[1::2]):
                out[row, max(0, a) : min(width, b)] = label
    return out
