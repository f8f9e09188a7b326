"""ImageNet weights by name: the URL table, loading through torch.hub from a local cache, and
the offline error. Nothing here downloads: the hub directory is a temporary folder."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch

from examples.dpfr_gland import model as M
from examples.dpfr_gland.config import TrainConfig
from examples.dpfr_gland.step import Trainer


def test_weights_table_names_torchvisions_files_with_their_hash_prefix():
    assert set(M.IMAGENET_DEFAULT) == set(M.BACKBONES)
    for (backbone, name), url in M.IMAGENET_WEIGHTS.items():
        assert backbone in M.BACKBONES and re.fullmatch(r"IMAGENET1K_V[12]", name)
        # torch.hub checks the downloaded file's SHA-256 against this prefix
        assert re.fullmatch(rf"https://download\.pytorch\.org/models/{backbone}-[0-9a-f]{{8}}\.pth", url)
    for backbone, name in M.IMAGENET_DEFAULT.items():
        assert (backbone, name) in M.IMAGENET_WEIGHTS


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("name", ["imagenet", "IMAGENET1K_V1", "imagenet1k_v1"])
def test_named_weights_load_from_the_hub_cache_into_the_encoder(hub, name, monkeypatch):
    torch.manual_seed(0)
    source = M.ResNetEncoder("resnet34")
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, hub / M.IMAGENET_WEIGHTS[("resnet34", "IMAGENET1K_V1")].rsplit("/", 1)[1])

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = M.CENet(backbone="resnet34", pretrained=name)
    for key, value in source.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key


def test_the_recipe_config_takes_imagenet_by_name(hub):
    torch.manual_seed(1)
    source = M.ResNetEncoder("resnet34")
    torch.save(source.state_dict(), hub / "resnet34-b627a593.pth")
    trainer = Trainer(TrainConfig(method="supervised", pretrained="imagenet", crop_size=32))
    assert torch.equal(trainer.student.encoder.conv1.weight, source.conv1.weight)
    # "none" and "" are random weights
    for none in ("none", ""):
        Trainer(TrainConfig(method="supervised", pretrained=none, crop_size=32))


def test_offline_machine_gets_the_url_and_where_to_put_the_file(hub, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as error:
        M.imagenet_state_dict("resnet101", "imagenet")
    message = str(error.value)
    assert "https://download.pytorch.org/models/resnet101-cd907fc2.pth" in message
    assert str(hub / "resnet101-cd907fc2.pth") in message and "pretrained=none" in message


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="no ImageNet weights 'IMAGENET1K_V2' for backbone 'resnet34'.*known"):
        M.imagenet_state_dict("resnet34", "IMAGENET1K_V2")
