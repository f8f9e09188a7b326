"""Tests for examples/dpfr_gland/model.py: CE-Net with a ResNet encoder, DAC, RMP and skips.

Oracles: the ResNet parameter counts derived here from per-layer formulas (conv
``k*k*cin*cout``, BatchNorm ``2c``) over the published block layouts, and checked against
the published torchvision totals minus ``fc`` (21,797,672 - 513,000 etc., torchvision's
model table); torchvision's key names generated from its naming scheme; hand-computed DAC
outputs for scalar-identity kernels; numpy block maxima for RMP; forward hooks that capture
what each block receives (skips, perturbation point); gradients through detached paths.
"""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import densessl
from examples.dpfr_gland.model import (
    CENet,
    CENetOutput,
    DACBlock,
    DecoderBlock,
    ResNetEncoder,
    RMPBlock,
)

BACKBONES = ["resnet34", "resnet50", "resnet101"]
# published torchvision parameter totals (with fc) and fc sizes (512*1000+1000, 2048*1000+1000)
PUBLISHED_WITH_FC = {"resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160}
FC = {"resnet34": 513_000, "resnet50": 2_049_000, "resnet101": 2_049_000}
ENCODER_COUNTS = {"resnet34": 21_284_672, "resnet50": 23_508_032, "resnet101": 42_500_160}
LAYOUT = {
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta(backbone: str, **kw) -> CENet:
    with torch.device("meta"):  # no memory, no init cost: for counting and names only
        return CENet(backbone=backbone, **kw)


# --------------------------------------------------------------------------- encoder


def _resnet_params_from_formula(backbone: str) -> int:
    """Parameters of a ResNet trunk (no fc) from the per-layer formulas of He et al. 2016."""
    kind, blocks = LAYOUT[backbone]
    conv = lambda k, cin, cout: k * k * cin * cout  # noqa: E731  (no bias in ResNet convs)
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias; running stats are buffers)
    total = conv(7, 3, 64) + bn(64)
    cin = 64
    for stage, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks)):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            if kind == "basic":
                cout = planes
                total += conv(3, cin, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
            else:
                cout = 4 * planes
                total += (
                    conv(1, cin, planes)
                    + bn(planes)
                    + conv(3, planes, planes)
                    + bn(planes)
                    + conv(1, planes, cout)
                    + bn(cout)
                )
            if stride != 1 or cin != cout:
                total += conv(1, cin, cout) + bn(cout)
            cin = cout
    return total


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encoder_parameter_count_matches_formula_and_published(backbone):
    formula = _resnet_params_from_formula(backbone)
    assert formula == ENCODER_COUNTS[backbone] == PUBLISHED_WITH_FC[backbone] - FC[backbone]
    assert _count(_meta(backbone).encoder) == formula


def _torchvision_keys(backbone: str) -> set[str]:
    """torchvision's ResNet state-dict names (without fc), generated from its naming scheme."""
    kind, blocks = LAYOUT[backbone]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {"conv1.weight", *(f"bn1.{b}" for b in bn)}
    convs = 2 if kind == "basic" else 3
    for s, n in enumerate(blocks, start=1):
        for i in range(n):
            for c in range(1, convs + 1):
                keys.add(f"layer{s}.{i}.conv{c}.weight")
                keys.update(f"layer{s}.{i}.bn{c}.{b}" for b in bn)
            if i == 0 and (s > 1 or kind == "bottleneck"):
                keys.add(f"layer{s}.0.downsample.0.weight")
                keys.update(f"layer{s}.0.downsample.1.{b}" for b in bn)
    return keys


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encoder_uses_torchvision_names(backbone):
    assert set(_meta(backbone).encoder.state_dict()) == _torchvision_keys(backbone)


def test_encoder_strides_and_channels():
    enc = ResNetEncoder("resnet34").eval()
    with torch.no_grad():
        maps = enc(torch.randn(1, 3, 96, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 24, 16), (1, 128, 12, 8), (1, 256, 6, 4), (1, 512, 3, 2)]


# --------------------------------------------------------------------------- CE-Net shapes


@pytest.mark.parametrize(
    "backbone,size,batch,cf,cd",
    [("resnet34", (64, 96), 2, 512, 64), ("resnet50", (64, 64), 1, 2048, 256), ("resnet101", (32, 32), 1, 2048, 256)],
)
def test_output_shapes(backbone, size, batch, cf, cd):
    torch.manual_seed(0)
    net = CENet(num_classes=3, backbone=backbone).eval()
    assert (net.feature_channels, net.decoder_channels) == (cf, cd)
    h, w = size
    with torch.no_grad():
        out = net(torch.randn(batch, 3, h, w))
    assert isinstance(out, CENetOutput)
    assert out.logits.shape == (batch, 3, h, w)
    assert out.features.shape == (batch, cf, h // 32, w // 32)
    assert out.decoder.shape == (batch, cd, h // 2, w // 2)
    assert torch.isfinite(out.logits).all()


@settings(max_examples=6, deadline=None)
@given(
    batch=st.integers(1, 2),
    hm=st.integers(1, 3),
    wm=st.integers(1, 3),
    k=st.integers(1, 4),
    where=st.sampled_from(["bottleneck", "decoder"]),
)
def test_output_shapes_property(batch, hm, wm, k, where):
    net = _small_net(k, where)
    with torch.no_grad():
        out = net(torch.randn(batch, 3, 32 * hm, 32 * wm))
    h, w = 32 * hm, 32 * wm
    assert out.logits.shape == (batch, k, h, w)
    want = (batch, 512, h // 32, w // 32) if where == "bottleneck" else (batch, 64, h // 2, w // 2)
    assert out.features.shape == want
    assert out.decoder.shape == (batch, 64, h // 2, w // 2)


_NETS: dict = {}


def _small_net(k: int = 3, where: str = "bottleneck") -> CENet:
    if (k, where) not in _NETS:
        torch.manual_seed(0)
        _NETS[k, where] = CENet(num_classes=k, backbone="resnet34", perturb_at=where).eval()
    return _NETS[k, where]


def test_train_step_reaches_every_parameter():
    torch.manual_seed(0)
    net = CENet(num_classes=3).train()
    out = net(torch.randn(2, 3, 64, 64))
    loss = F.cross_entropy(out.logits, torch.randint(0, 3, (2, 64, 64))) + out.decoder.square().mean()
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert dead == []
    assert all(float(p.grad.abs().sum()) > 0 for n, p in net.named_parameters() if n.startswith("encoder.layer"))


def test_autocast_bfloat16_cpu():
    net = _small_net()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 3, 64, 64) and torch.isfinite(out.logits.float()).all()


# --------------------------------------------------------------------------- DAC


def test_dac_parameter_count_proves_sharing():
    c = 16
    dac = DACBlock(c)
    conv3, conv1 = 9 * c * c + c, c * c + c
    shared = 3 * conv3 + conv1  # dilation 1, 3, 5 and one 1x1
    unshared = (1 + 2 + 2 + 3) * conv3 + 3 * conv1  # a separate conv at every use
    assert _count(dac) == shared < unshared
    assert [m.dilation for m in (dac.dilate1, dac.dilate3, dac.dilate5)] == [(1, 1), (3, 3), (5, 5)]
    assert [m.kernel_size for m in (dac.dilate1, dac.dilate3, dac.dilate5, dac.conv1x1)] == [(3, 3)] * 3 + [(1, 1)]


def test_dac_modules_are_reused_across_branches():
    dac = DACBlock(4)
    calls = {n: 0 for n in ("dilate1", "dilate3", "dilate5", "conv1x1")}
    for name in calls:
        getattr(dac, name).register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1))
    dac(torch.randn(1, 4, 7, 7))
    # dilate1's output (a single value, the same conv on the same input) feeds branches 1, 3 and 4;
    # dilate3 runs on x (branch 2) and on dilate1(x) (branches 3, 4); the 1x1 closes branches 2-4
    assert calls == {"dilate1": 1, "dilate3": 2, "dilate5": 1, "conv1x1": 3}


def _scalar_identity(conv: torch.nn.Conv2d, value: float) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(conv.out_channels):
            conv.weight[c, c, k, k] = value
        conv.bias.zero_()


@settings(max_examples=10, deadline=None)
@given(a=st.floats(0.1, 2), b=st.floats(0.1, 2), c=st.floats(0.1, 2), p=st.floats(-2, 2))
def test_dac_hand_computed_with_scalar_kernels(a, b, c, p):
    # each conv is (scalar * identity): the branches are relu(a x), relu(p b x), relu(p b a x),
    # relu(p c b a x), the output x plus their sum (a shared weight appears in several terms)
    dac = DACBlock(3).double()
    for conv, v in ((dac.dilate1, a), (dac.dilate3, b), (dac.dilate5, c), (dac.conv1x1, p)):
        _scalar_identity(conv, v)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    relu = lambda t: t.clamp(min=0)  # noqa: E731
    expected = x + relu(a * x) + relu(p * b * x) + relu(p * b * a * x) + relu(p * c * b * a * x)
    torch.testing.assert_close(dac(x), expected)


def test_dac_dilations_reach_the_right_offsets():
    # impulse response of each dilated conv with an all-ones kernel: support at offsets {-d, 0, d}
    dac = DACBlock(1)
    x = torch.zeros(1, 1, 13, 13)
    x[0, 0, 6, 6] = 1.0
    for conv, d in ((dac.dilate1, 1), (dac.dilate3, 3), (dac.dilate5, 5)):
        with torch.no_grad():
            conv.weight.fill_(1.0)
            rows, cols = torch.nonzero(conv(x)[0, 0], as_tuple=True)
        assert sorted(set((rows - 6).tolist())) == [-d, 0, d] and sorted(set((cols - 6).tolist())) == [-d, 0, d]


# --------------------------------------------------------------------------- RMP


@settings(max_examples=10, deadline=None)
@given(c=st.integers(1, 6), h=st.integers(1, 15), w=st.integers(1, 15))
def test_rmp_adds_exactly_four_channels_and_passes_input(c, h, w):
    rmp = RMPBlock(c)
    x = torch.randn(2, c, h, w)
    out = rmp(x)
    assert out.shape == (2, c + 4, h, w) and rmp.out_channels == c + 4
    assert torch.equal(out[:, 4:], x)
    assert _count(rmp) == c + 1  # ONE output channel: a 1x1 conv C -> 1, shared by the four pools


def test_rmp_matches_numpy_block_max():
    torch.manual_seed(1)
    rmp = RMPBlock(2).double()
    with torch.no_grad():
        rmp.conv.weight.copy_(torch.tensor([[[[1.0]], [[-0.5]]]]))
        rmp.conv.bias.fill_(0.25)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    out = rmp(x)
    xn = x.numpy()[0]
    for j, k in enumerate((2, 3, 5, 6)):
        n = -(-12 // k)  # windows cover the map (ceil mode): pad with -inf
        padded = np.full((2, n * k, n * k), -np.inf)
        padded[:, :12, :12] = xn
        blocks = padded.reshape(2, n, k, n, k).max(axis=(2, 4))
        conv = 1.0 * blocks[0] - 0.5 * blocks[1] + 0.25
        expected = F.interpolate(
            torch.from_numpy(conv)[None, None], size=(12, 12), mode="bilinear", align_corners=False
        )[0, 0]
        torch.testing.assert_close(out[0, j], expected)


def test_rmp_sees_the_last_rows():
    # a spike in the last row/column of a 14x14 map (GlaS 448 px) must reach every pooled channel
    rmp = RMPBlock(1)
    with torch.no_grad():
        rmp.conv.weight.fill_(1.0)
        rmp.conv.bias.zero_()
    x = torch.zeros(1, 1, 14, 14)
    x[0, 0, 13, 13] = 10.0
    with torch.no_grad():
        out = rmp(x)
    assert all(float(out[0, j, 13, 13]) > 0 for j in range(4))


# --------------------------------------------------------------------------- decoder and skips


def test_decoder_block_shapes_and_bottleneck_width():
    block = DecoderBlock(516, 256)
    assert block.conv1.out_channels == 129 and block.deconv2.in_channels == block.deconv2.out_channels == 129
    assert block.deconv2.kernel_size == (3, 3) and block.deconv2.stride == (2, 2)
    assert block.eval()(torch.randn(1, 516, 2, 3)).shape == (1, 256, 4, 6)


def _capture(net: CENet, images: torch.Tensor) -> dict:
    seen, handles = {}, []
    for name in (
        "encoder.layer1",
        "encoder.layer2",
        "encoder.layer3",
        "encoder.layer4",
        "decoder4",
        "decoder3",
        "decoder2",
        "decoder1",
        "dac",
        "head",
    ):
        mod = net.get_submodule(name)
        handles.append(mod.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o)))
        handles.append(mod.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name + ":in", i[0])))
    try:
        seen["out"] = net(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_skips_are_additive():
    net = _small_net()
    with torch.no_grad():
        s = _capture(net, torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(s["decoder3:in"], s["decoder4"] + s["encoder.layer3"])
    torch.testing.assert_close(s["decoder2:in"], s["decoder3"] + s["encoder.layer2"])
    torch.testing.assert_close(s["decoder1:in"], s["decoder2"] + s["encoder.layer1"])
    torch.testing.assert_close(s["head:in"], s["decoder1"])
    assert s["decoder1"].shape == s["out"].decoder.shape and torch.equal(s["out"].decoder, s["decoder1"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gradient_reaches_stage_through_its_skip_alone(stage):
    # cut the deep path out of stage s (detach the input of layer s+1): the only way left for
    # a gradient to reach layer s's parameters is the skip d(4-s) + e_s
    torch.manual_seed(0)
    net = CENet().eval()
    nxt = net.encoder.get_submodule(f"layer{stage + 1}")
    handle = nxt.register_forward_pre_hook(lambda m, i: (i[0].detach(),))
    net(torch.randn(1, 3, 64, 64)).logits.square().mean().backward()
    handle.remove()
    params = list(net.encoder.get_submodule(f"layer{stage}").parameters())
    grad = sum(0.0 if p.grad is None else float(p.grad.abs().sum()) for p in params)
    assert grad > 0


# --------------------------------------------------------------------------- perturbation point


class _Recorder:
    def __init__(self, shift: float) -> None:
        self.shift, self.seen = shift, []

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        self.seen.append(f.detach().clone())
        return f + self.shift


@pytest.mark.parametrize("where", ["bottleneck", "decoder"])
def test_perturb_is_applied_at_the_right_place(where):
    net = _small_net(3, where)
    images = torch.randn(2, 3, 64, 64)
    rec = _Recorder(0.5)
    with torch.no_grad():
        clean = _capture(net, images)
        pert = net(images, perturb=rec)
        hooked = _capture(net, images)  # no perturb: the hooks see the clean maps again
    assert len(rec.seen) == 1
    if where == "bottleneck":
        assert rec.seen[0].shape == (2, 512, 2, 2)
        torch.testing.assert_close(rec.seen[0], clean["encoder.layer4"])
        torch.testing.assert_close(clean["out"].features, clean["dac:in"])  # features = DAC input
    else:
        assert rec.seen[0].shape == (2, 64, 32, 32)
        torch.testing.assert_close(rec.seen[0], clean["decoder1"])
        torch.testing.assert_close(clean["out"].features, clean["head:in"])  # features = head input
    torch.testing.assert_close(pert.features, rec.seen[0] + 0.5)
    assert not torch.allclose(pert.logits, clean["out"].logits)
    torch.testing.assert_close(hooked["out"].logits, clean["out"].logits)


def test_perturbed_map_is_what_downstream_sees():
    net = _small_net(3, "bottleneck")
    seen = {}
    h = net.dac.register_forward_pre_hook(lambda m, i: seen.__setitem__("dac", i[0]))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64), perturb=lambda f: f * 0.0 + 1.0)
    h.remove()
    assert torch.equal(seen["dac"], out.features) and torch.equal(out.features, torch.ones_like(out.features))
    net = _small_net(3, "decoder")
    seen.clear()
    h = net.head.register_forward_pre_hook(lambda m, i: seen.__setitem__("head", i[0]))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64), perturb=lambda f: f * 0.0 + 2.0)
    h.remove()
    assert torch.equal(seen["head"], out.features) and torch.equal(out.decoder, out.features)


def test_density_perturbation_composes():
    torch.manual_seed(0)
    net = CENet().eval()
    head = densessl.FlowDensityHead(512, 3, depth=1, hidden=16)
    with torch.no_grad():
        head.train()
        head.log_prob(torch.randn(2, 512, 4, 4))  # ActNorm data init
    head.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        clean = net(images).features
    out = net(images, perturb=densessl.DensityPerturbation(head, xi=3.0))
    step = (out.features.detach() - clean).norm(dim=1)
    assert float(step.max()) <= 3.0 + 1e-3 and float(step.min()) > 2.9
    out.logits.mean().backward()
    assert net.encoder.conv1.weight.grad is not None
    assert all(p.grad is None for p in head.parameters())


# --------------------------------------------------------------------------- pretrained weights


def _torchvision_file(tmp_path, enc: ResNetEncoder, extra: dict | None = None, drop: str | None = None):
    state = dict(enc.state_dict())
    state["fc.weight"] = torch.randn(1000, enc.stage_channels[-1])
    state["fc.bias"] = torch.randn(1000)
    if drop:
        del state[drop]
    state.update(extra or {})
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    return path


def test_pretrained_loads_torchvision_state_dict(tmp_path):
    torch.manual_seed(3)
    src = ResNetEncoder("resnet34")
    with torch.no_grad():
        src.bn1.running_mean.uniform_()
        src.layer4[2].bn2.running_var.uniform_(1, 2)
    src.bn1.num_batches_tracked.fill_(7)
    path = _torchvision_file(tmp_path, src)
    net = CENet(pretrained=path)
    for key, value in src.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    assert int(net.encoder.bn1.num_batches_tracked) == 7
    assert net.encoder.bn1.running_mean.abs().sum() > 0
    net2 = CENet(pretrained=str(path))  # str paths too
    assert torch.equal(net2.encoder.conv1.weight, src.conv1.weight)


def test_pretrained_reads_with_weights_only(tmp_path):
    # a pickled non-tensor object is refused by torch.load(weights_only=True), not executed
    path = tmp_path / "evil.pth"
    state = dict(ResNetEncoder("resnet34").state_dict())
    state["meta"] = argparse.Namespace(x=1)
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):
        CENet(pretrained=path)


def test_pretrained_mismatches_are_named(tmp_path):
    enc = ResNetEncoder("resnet34")
    path = _torchvision_file(tmp_path, enc, drop="layer4.2.bn2.running_var")
    with pytest.raises(ValueError, match=r"pretrained.*missing keys: layer4\.2\.bn2\.running_var"):
        CENet(pretrained=path)
    path = _torchvision_file(tmp_path, enc, extra={"layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"pretrained.*unexpected keys: layer5\.0\.conv1\.weight"):
        CENet(pretrained=path)
    path = _torchvision_file(tmp_path, enc)
    with pytest.raises(ValueError, match=r"pretrained.*wrong shapes: conv1\.weight \(expected \(64, 4, 7, 7\)"):
        CENet(pretrained=path, in_channels=4)
    with pytest.raises(ValueError, match=r"pretrained.*resnet50.*missing keys"):
        CENet(backbone="resnet50", pretrained=path)
    with pytest.raises(FileNotFoundError, match="pretrained"):
        CENet(pretrained=tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(TypeError, match="state dict"):
        CENet(pretrained=tmp_path / "list.pth")


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "images,error,pattern",
    [
        (torch.randn(1, 3, 48, 64), ValueError, r"images.*multiples of 32.*\(1, 3, 48, 64\)"),
        (torch.randn(1, 3, 64, 33), ValueError, r"images.*multiples of 32"),
        (torch.randn(1, 4, 64, 64), ValueError, r"images must have 3 channels.*\(1, 4, 64, 64\)"),
        (torch.randn(3, 64, 64), ValueError, r"images must be a 4-D tensor.*\(3, 64, 64\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, r"images must have dtype.*uint8"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, r"images must be finite"),
        (np.zeros((1, 3, 64, 64), np.float32), TypeError, r"images must be a torch.Tensor"),
    ],
)
def test_bad_images(images, error, pattern):
    with pytest.raises(error, match=pattern):
        _small_net()(images)


def test_bad_perturb():
    net = _small_net()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="perturb must be callable"):
        net(x, perturb=3.0)
    with pytest.raises(ValueError, match=r"perturb must return a map of the shape.*\(1, 512, 1, 1\)"):
        net(x, perturb=lambda f: f[:, :10])
    with pytest.raises(TypeError, match="perturb must return a torch.Tensor"):
        net(x, perturb=lambda f: f.detach().numpy())


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"backbone": "resnet18"}, ValueError, r"backbone must be one of.*resnet18"),
        ({"perturb_at": "middle"}, ValueError, r"perturb_at must be one of.*middle"),
        ({"num_classes": 0}, ValueError, r"num_classes must be >= 1"),
        ({"num_classes": 2.5}, TypeError, r"num_classes must be an integer"),
        ({"in_channels": 0}, ValueError, r"in_channels must be >= 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        with torch.device("meta"):
            CENet(**kwargs)


def test_other_input_channels():
    net = CENet(in_channels=1, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).logits.shape == (1, 2, 32, 32)


def test_module_conversions_work():
    # torch's .to()/.half()/.double() go through nn.Module._apply; CENet must not shadow it.
    model = CENet(backbone="resnet34").double()
    assert next(model.parameters()).dtype == torch.float64
    model.to(torch.float32).to("cpu")
    assert next(model.parameters()).dtype == torch.float32
