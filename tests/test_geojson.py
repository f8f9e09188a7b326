"""GeoJSON export of glands: structure (RFC 7946 / what QuPath reads) and an exact round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densessl.metrics import object_f1
from examples.dpfr_gland.geojson import instances_to_geojson, rasterize_geojson, write_geojson


def _check_structure(collection):
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and set(feature) == {"type", "geometry", "properties"}
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Gland"
        assert isinstance(props["area"], int) and props["area"] > 0
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        for polygon in polygons:
            for n, ring in enumerate(polygon):
                assert len(ring) >= 5 and ring[0] == ring[-1]  # closed; a square has 4 corners + 1
                assert all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in ring)
                x, y = np.array(ring[:-1], float).T
                area = 0.5 * (x @ np.roll(y, -1) - np.roll(x, -1) @ y)
                assert (area > 0) == (n == 0)  # exterior counter-clockwise, holes clockwise (RFC 7946)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 40), st.integers(5, 40), st.floats(0.2, 0.8))
def test_random_label_maps_round_trip_exactly(seed, h, w, density):
    # random blobs: holes, diagonal touches, glands in pieces and glands touching glands
    rng = np.random.default_rng(seed)
    instances = np.where(rng.random((h, w)) < density, rng.integers(1, 6, (h, w)), 0).astype(np.int32)
    collection = instances_to_geojson(instances)
    _check_structure(json.loads(json.dumps(collection)))
    np.testing.assert_array_equal(rasterize_geojson(collection, instances.shape), instances)


def test_synthetic_glands_round_trip_with_holes_and_probabilities(tmp_path):
    from examples.dpfr_gland.synthetic import SyntheticGlands

    _, instances = SyntheticGlands("hard", size=200, seed=4).sample(0)
    ring = np.zeros((30, 30), np.int32)
    ring[5:25, 5:25] = 1
    ring[10:20, 10:20] = 0  # a lumen: the gland has a hole
    probability = np.linspace(0, 1, ring.size, dtype=np.float32).reshape(ring.shape)
    feature = instances_to_geojson(ring, probability)["features"][0]
    assert len(feature["geometry"]["coordinates"]) == 2  # outer ring and the hole
    assert feature["properties"]["area"] == 400 - 100
    assert feature["properties"]["mean_probability"] == pytest.approx(float(probability[ring == 1].mean()))
    collection = instances_to_geojson(instances)
    path = write_geojson(tmp_path / "g.geojson", collection)
    back = rasterize_geojson(json.loads(path.read_text()), instances.shape)
    assert object_f1(back, instances) == 1.0 and np.array_equal(back, instances)
    assert len(collection["features"]) == len(np.unique(instances)) - 1


def test_a_gland_in_pieces_is_a_multipolygon_and_empty_maps_give_no_feature():
    pieces = np.zeros((6, 9), np.int32)
    pieces[1:3, 1:3] = 7
    pieces[3:5, 5:8] = 7
    feature = instances_to_geojson(pieces)["features"][0]
    assert feature["geometry"]["type"] == "MultiPolygon" and feature["properties"]["id"] == 7
    np.testing.assert_array_equal(rasterize_geojson(instances_to_geojson(pieces), pieces.shape), pieces)
    assert instances_to_geojson(np.zeros((4, 4), np.int32))["features"] == []


def test_boxes_found_strip_by_strip_equal_whole_map_boxes():
    from scipy import ndimage

    from examples.dpfr_gland.geojson import _boxes

    rng = np.random.default_rng(1)
    instances = np.where(rng.random((50, 30)) < 0.3, rng.integers(1, 9, (50, 30)), 0).astype(np.int32)
    whole = {label: box for label, box in enumerate(ndimage.find_objects(instances), start=1) if box is not None}
    assert _boxes(instances, strip=7) == whole


def test_streamed_features_equal_the_collection_and_a_gland_in_many_pieces_is_traced_per_piece(tmp_path):
    from examples.dpfr_gland.geojson import gland_features

    rng = np.random.default_rng(3)
    instances = np.where(rng.random((60, 70)) < 0.25, rng.integers(1, 4, (60, 70)), 0).astype(np.int32)
    probability = rng.random((60, 70)).astype(np.float16)
    collection = instances_to_geojson(instances, probability)
    assert any(f["geometry"]["type"] == "MultiPolygon" for f in collection["features"])
    path = write_geojson(tmp_path / "s.geojson", gland_features(instances, probability))
    streamed = json.loads(path.read_text())
    _check_structure(streamed)
    assert streamed == json.loads(json.dumps(collection))
    np.testing.assert_array_equal(rasterize_geojson(streamed, instances.shape), instances)
    # a memory-mapped map gives the same features
    mapped = np.lib.format.open_memmap(tmp_path / "i.npy", mode="w+", dtype=np.int32, shape=instances.shape)
    mapped[:] = instances
    assert list(gland_features(mapped, probability)) == collection["features"]
