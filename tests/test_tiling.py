"""The recipe's one sliding window (tiling.blend_tiles): its spec, the stride it takes from the
model, and the maps it blends besides class probabilities."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.dpfr_gland.evaluate import predict
from examples.dpfr_gland.tiling import WINDOWS, TileSpec, blend_tiles, model_stride


class _Pointwise(torch.nn.Module):
    """Logits and features of each pixel from that pixel alone: tiling cannot change them."""

    def __init__(self, size_multiple: int | None = None) -> None:
        super().__init__()
        self.logits = torch.nn.Conv2d(3, 3, 1)
        self.features = torch.nn.Conv2d(3, 5, 1)
        if size_multiple is not None:
            self.size_multiple = size_multiple
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        self.seen.append(tuple(x.shape[-2:]))
        return SimpleNamespace(logits=self.logits(x), features=torch.tanh(self.features(x)))


def _read(image: torch.Tensor):
    return lambda y, x, h, w: image[:, y : y + h, x : x + w]


def _probabilities_and_features(out: SimpleNamespace) -> torch.Tensor:
    return torch.cat([out.logits.softmax(dim=1), out.features], dim=1)


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    window=st.sampled_from(WINDOWS),
    overlap=st.integers(0, 24),
    seed=st.integers(0, 2**16),
)
def test_a_head_blends_any_maps_as_the_whole_image_gives_them(h, w, window, overlap, seed):
    """Oracle: the untiled network on the whole image. For a pointwise network every blended map
    (probabilities and features alike) is a weighted mean of equal values, so it equals that."""
    torch.manual_seed(seed)
    model = _Pointwise()
    image = torch.randn(3, h, w)
    spec = TileSpec(32, overlap=overlap, batch_size=3, window=window)
    bands = list(blend_tiles(model, h, w, _read(image), spec, _probabilities_and_features))
    assert [top for top, _ in bands] == sorted({top for top, _ in bands})
    maps = torch.cat([band for _, band in bands], dim=1)
    with torch.no_grad():
        expected = _probabilities_and_features(model(image[None]))[0]
    assert maps.shape == (8, h, w)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)


def test_the_stride_comes_from_the_model():
    coarse, fine = _Pointwise(size_multiple=64), _Pointwise(size_multiple=16)
    image = torch.zeros(3, 40, 40)
    with pytest.raises(ValueError, match=r"tile must be a multiple of 64 \(the network's stride\), got 32"):
        predict(coarse, image, tile=32)
    predict(fine, image, tile=64, overlap=8)
    assert set(fine.seen) == {(48, 48)}  # the image rounded up to its stride 16, not to 32 (64)
    assert model_stride(torch.nn.Conv2d(3, 3, 1)) == 32
    wrapped = torch.nn.Module()
    wrapped.module = fine
    assert model_stride(wrapped) == 16  # looked through, as for DistributedDataParallel
    with pytest.raises(ValueError, match="size_multiple must be a positive int"):
        model_stride(_Pointwise(size_multiple=0))


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"tile": 0}, ValueError, "tile"),
        ({"tile": 64, "overlap": 64}, ValueError, "overlap"),
        ({"tile": 64, "overlap": -1}, ValueError, "overlap"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"window": "box"}, ValueError, "window must be one of"),
        ({"amp": 1}, TypeError, "amp must be a bool"),
    ],
)
def test_bad_tile_options_are_named(options, error, words):
    with pytest.raises(error, match=words):
        TileSpec(**options)


def test_a_spec_is_passed_whole_and_a_head_that_lies_about_its_size_is_named():
    model = _Pointwise()
    with pytest.raises(TypeError, match="spec must be a TileSpec"):
        next(blend_tiles(model, 8, 8, _read(torch.zeros(3, 8, 8)), {"tile": 32}))
    with pytest.raises(ValueError, match="head=<lambda>"):
        next(blend_tiles(model, 8, 8, _read(torch.zeros(3, 8, 8)), TileSpec(32), lambda out: out.logits[..., :4]))


def test_one_tile_is_blended_to_itself_whatever_the_window():
    """An image no larger than a tile is one tile: every window gives the same maps. (So the
    study rows scored with the old uniform window on 128-px images at ``eval_tile`` 128 do not
    move under the Gaussian one.)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1)
    )
    image = torch.randn(3, 64, 64)
    maps = [predict(model, image, tile=64, window=window) for window in WINDOWS]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], atol=1e-6, rtol=1e-6)
