"""CE-Net (Gu et al., TMI 2019): a ResNet encoder, the DAC and RMP context blocks and a decoder with skips.

The encoder is a plain-torch ResNet-34/50/101 with torchvision's parameter names, so a
torchvision ResNet state dict loads into it (``pretrained=``): a local file, or torchvision's
published ImageNet weights by name (``"imagenet"``, ``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``;
:data:`IMAGENET_WEIGHTS`), fetched on first use by ``torch.hub.load_state_dict_from_url``
(hash-checked, cached in torch's hub directory, where a file can also be placed by hand).
torchvision itself is not imported (its wheel paired with the CPU torch here fails to import).
:class:`CENet` returns its logits together with the two feature maps the
DPFR recipe needs: the map at the perturbation point (``perturb_at``) and the last decoder
map (the input of a :class:`densessl.ProjectionHead`).

Layout of one forward pass for an input ``[B, 3, H, W]`` (``C4`` = 512 for ResNet-34, 2048
for ResNet-50/101; ``C1..C3`` = ``C4/8, C4/4, C4/2``)::

    stem (conv7x7/2, BN, ReLU, maxpool/2)      -> [B, 64, H/4,  W/4]
    layer1 = e1                                -> [B, C1, H/4,  W/4]
    layer2 = e2                                -> [B, C2, H/8,  W/8]
    layer3 = e3                                -> [B, C3, H/16, W/16]
    layer4 = e4   (perturb_at="bottleneck")    -> [B, C4, H/32, W/32]
    DAC, RMP                                   -> [B, C4 + 4, H/32, W/32]
    d4 = decoder4(.) + e3; d3 = decoder3(d4) + e2; d2 = decoder2(d3) + e1
    d1 = decoder1(d2)  (perturb_at="decoder")  -> [B, C1, H/2, W/2]   (64 for ResNet-34)
    head (deconv4x4/2, ReLU, conv3x3, ReLU, conv3x3) -> logits [B, K, H, W]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.hub
import torch.nn.functional as F
from torch import nn

from densessl.checks import check_features, check_number

__all__ = [
    "BACKBONES",
    "IMAGENET_DEFAULT",
    "IMAGENET_WEIGHTS",
    "CENet",
    "CENetOutput",
    "SiteState",
    "DACBlock",
    "DecoderBlock",
    "ResNetEncoder",
    "RMPBlock",
    "imagenet_state_dict",
    "is_weights_name",
]

#: Block type and blocks per stage of each supported ResNet, as in torchvision.
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}

PERTURB_POINTS = ("bottleneck", "decoder", "classifier")


# -- ResNet encoder (torchvision parameter names) ---------------------------------------


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    # torchvision's "ResNet v1.5": the stride sits on the 3x3 conv
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _check_backbone(backbone: object) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    return str(backbone)


#: torchvision's published ImageNet weights of the three encoders: ``(backbone, name) -> URL``. The
#: eight hex digits before ``.pth`` are the start of the file's SHA-256, which
#: ``torch.hub.load_state_dict_from_url(check_hash=True)`` verifies after a download.
IMAGENET_WEIGHTS: dict[tuple[str, str], str] = {
    ("resnet34", "IMAGENET1K_V1"): "https://download.pytorch.org/models/resnet34-b627a593.pth",
    ("resnet50", "IMAGENET1K_V1"): "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    ("resnet50", "IMAGENET1K_V2"): "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ("resnet101", "IMAGENET1K_V1"): "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    ("resnet101", "IMAGENET1K_V2"): "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
}
#: what ``pretrained="imagenet"`` means per backbone: torchvision's ``DEFAULT`` weights.
IMAGENET_DEFAULT = {"resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2", "resnet101": "IMAGENET1K_V2"}


def is_weights_name(pretrained: str) -> bool:
    """Whether ``pretrained`` names ImageNet weights (``"imagenet"`` or e.g. ``"IMAGENET1K_V2"``),
    not a path.

    Example:
        >>> is_weights_name("imagenet"), is_weights_name("IMAGENET1K_V2"), is_weights_name("r50.pth")
        (True, True, False)
    """
    return pretrained.lower() == "imagenet" or pretrained.upper().startswith("IMAGENET1K_")


def imagenet_state_dict(backbone: str, name: str = "imagenet") -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of ``backbone``, from torch's hub cache or downloaded into it.

    Args:
        backbone: ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        name: ``"imagenet"`` (torchvision's default weights of that backbone) or a weights
            name of :data:`IMAGENET_WEIGHTS`, e.g. ``"IMAGENET1K_V2"``.

    Returns:
        The state dict (CPU tensors, read with ``weights_only=True``).

    Raises:
        ValueError: an unknown backbone or weights name (the message lists the known ones).
        RuntimeError: the file is not cached and cannot be downloaded (the message names the
            URL and the path to place the file at by hand).

    Example:
        >>> sorted(name for backbone, name in IMAGENET_WEIGHTS if backbone == "resnet101")
        ['IMAGENET1K_V1', 'IMAGENET1K_V2']
    """
    key = IMAGENET_DEFAULT.get(backbone) if name.lower() == "imagenet" else name.upper()
    url = IMAGENET_WEIGHTS.get((backbone, key or ""))
    if url is None:
        known = ", ".join(f"{b}:{n}" for b, n in IMAGENET_WEIGHTS)
        raise ValueError(
            f"pretrained: no ImageNet weights {name!r} for backbone {backbone!r}; known: {known} "
            f"(or 'imagenet' for the default, or a local file)"
        )
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", check_hash=True, weights_only=True, progress=True
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError (offline); a bad hash a RuntimeError
        raise RuntimeError(
            f"pretrained={name!r}: could not fetch {url} ({error}). On a machine without internet, download "
            f"that file elsewhere and place it at {target} (torch's hub cache; TORCH_HOME moves it), or give "
            f"its local path as pretrained=/path/to/{target.name}; pretrained=none trains from random "
            f"weights"
        ) from error


class ResNetEncoder(nn.Module):
    """The ResNet trunk without pooling and ``fc``, with torchvision's parameter names.

    Stem ``conv1`` (7x7, stride 2) + ``bn1`` + ReLU + ``maxpool`` (3x3, stride 2), then
    ``layer1..layer4`` (strides 1, 2, 2, 2) of BasicBlocks (ResNet-34) or Bottlenecks
    (ResNet-50/101, stride on the 3x3 conv as in torchvision). Weights are initialised as
    in torchvision (Kaiming normal, fan-out; BatchNorm weight 1, bias 0).

    Args:
        backbone: ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: number of input image channels.

    Shapes:
        - images: ``[B, in_channels, H, W]``, float
        - returns: four maps ``e1..e4``: ``[B, C1, H/4, W/4]``, ``[B, C2, H/8, W/8]``,
          ``[B, C3, H/16, W/16]``, ``[B, C4, H/32, W/32]`` (rounded up), with
          ``(C1, C2, C3, C4) = stage_channels``

    Returns:
        The tuple ``(e1, e2, e3, e4)`` of stage outputs.

    Raises:
        ValueError: unknown ``backbone`` or ``in_channels < 1``.

    Example:
        >>> import torch
        >>> from examples.dpfr_gland.model import ResNetEncoder
        >>> encoder = ResNetEncoder("resnet34").eval()
        >>> encoder.stage_channels
        (64, 128, 256, 512)
        >>> [tuple(e.shape) for e in encoder(torch.randn(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """

    def __init__(self, backbone: str = "resnet34", in_channels: int = 3) -> None:
        super().__init__()
        self.backbone = _check_backbone(backbone)
        in_channels = int(check_number("in_channels", in_channels, low=1, integer=True))
        kind, layers = BACKBONES[self.backbone]
        block = _BasicBlock if kind == "basic" else _Bottleneck
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.stage_channels = tuple(block.expansion * p for p in (64, 128, 256, 512))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        stage += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        e1 = self.layer1(x)
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        e4 = self.layer4(e3)
        return e1, e2, e3, e4

    def load_torchvision(self, path: str | os.PathLike | dict[str, torch.Tensor]) -> None:
        """Load a torchvision-format ResNet state dict (``fc.*`` dropped).

        A file is read with ``torch.load(..., weights_only=True)`` on the CPU. Every
        encoder key must be present with the right shape and no key other than ``fc.*``
        may be left over; otherwise nothing is loaded.

        Args:
            path: local path to a file holding the state dict (a mapping of names to
                tensors), or the state dict itself.

        Raises:
            FileNotFoundError: no file at ``path``.
            TypeError: the file does not hold a mapping of names to tensors.
            ValueError: missing, unexpected or wrongly shaped keys (listed in the message).

        Example:
            >>> import tempfile, torch
            >>> from examples.dpfr_gland.model import ResNetEncoder
            >>> src, dst = ResNetEncoder("resnet34"), ResNetEncoder("resnet34")
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     torch.save(src.state_dict(), tmp + "/r34.pth")
            ...     dst.load_torchvision(tmp + "/r34.pth")
            >>> torch.equal(src.conv1.weight, dst.conv1.weight)
            True
        """
        if isinstance(path, dict):
            state, path = path, "<state dict>"
        else:
            file = Path(path)
            if not file.is_file():
                raise FileNotFoundError(
                    f"pretrained must be a local file holding a ResNet state dict, got {str(path)!r}"
                )
            state = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError(
                f"pretrained file {str(path)!r} must hold a state dict (names -> tensors), got {type(state).__name__}"
            )
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:

            def show(keys: list[str]) -> str:
                return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

            parts = []
            if missing:
                parts.append(f"missing keys: {show(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {show(unexpected)}")
            if wrong:
                parts.append(
                    "wrong shapes: "
                    + show([f"{k} (expected {tuple(own[k].shape)}, got {tuple(state[k].shape)})" for k in wrong])
                )
            raise ValueError(
                f"pretrained file {str(path)!r} does not match a torchvision {self.backbone} "
                f"(in_channels={self.conv1.in_channels}); " + "; ".join(parts)
            )
        self.load_state_dict(state, strict=True)


# -- context blocks -------------------------------------------------------------------


class DACBlock(nn.Module):
    """Dense atrous convolution: four cascade branches with shared dilated convs, summed with the input.

    With ``D1, D3, D5`` the 3x3 convs of dilation 1, 3, 5 and ``P`` a 1x1 conv (all
    ``C -> C`` with bias), the branches are ``relu(D1 x)``, ``relu(P D3 x)``,
    ``relu(P D3 D1 x)`` and ``relu(P D5 D3 D1 x)`` and the output is ``x`` plus their sum.
    As in the paper (and its code) the convs are *shared*: ``D1`` serves three branches,
    ``D3`` three, ``P`` three, so the block holds four convs, not ten. Biases start at zero.

    Args:
        channels: number of channels ``C``.

    Shapes:
        - x: ``[B, C, h, w]``, float
        - returns: ``[B, C, h, w]``

    Returns:
        The input plus the four branch outputs.

    Raises:
        ValueError: ``channels < 1``.

    References:
        Gu et al., "CE-Net: Context Encoder Network for 2D Medical Image Segmentation",
        IEEE TMI 2019, Sec. II-B.

    Example:
        >>> import torch
        >>> from examples.dpfr_gland.model import DACBlock
        >>> dac = DACBlock(8)
        >>> dac(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
        >>> sum(p.numel() for p in dac.parameters()) == 3 * (8 * 8 * 9 + 8) + (8 * 8 + 8)
        True
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        channels = int(check_number("channels", channels, low=1, integer=True))
        self.dilate1 = nn.Conv2d(channels, channels, 3, dilation=1, padding=1)
        self.dilate3 = nn.Conv2d(channels, channels, 3, dilation=3, padding=3)
        self.dilate5 = nn.Conv2d(channels, channels, 3, dilation=5, padding=5)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)
        for conv in (self.dilate1, self.dilate3, self.dilate5, self.conv1x1):
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.dilate1(x)  # computed once, reused by branches 1, 3 and 4 (same conv, same input)
        b = self.dilate3(a)
        branch1 = F.relu(a)
        branch2 = F.relu(self.conv1x1(self.dilate3(x)))
        branch3 = F.relu(self.conv1x1(b))
        branch4 = F.relu(self.conv1x1(self.dilate5(b)))
        return x + branch1 + branch2 + branch3 + branch4


class RMPBlock(nn.Module):
    """Residual multi-kernel pooling: four max-pools (2, 3, 5, 6) to one channel each, concatenated.

    Each pool (kernel = stride = k) is followed by one shared 1x1 conv ``C -> 1`` and bilinear
    upsampling back to the input size; the four maps are concatenated in front of the input.
    The pools run in ceil mode, so every pixel is covered and maps smaller than a kernel (the
    2x2 bottleneck of a 64-pixel crop) still work; at 448 px (a 14x14 map) the original's
    floor mode would drop the last rows and columns for kernels 3, 5 and 6.

    Args:
        channels: number of input channels ``C``.
        kernels: the pooling kernels.

    Shapes:
        - x: ``[B, C, h, w]``, float
        - returns: ``[B, len(kernels) + C, h, w]``; channels ``len(kernels):`` are ``x``

    Returns:
        The pooled maps followed by the input.

    Raises:
        ValueError: ``channels < 1`` or a kernel below 1.

    References:
        Gu et al., CE-Net, IEEE TMI 2019, Sec. II-C.

    Example:
        >>> import torch
        >>> from examples.dpfr_gland.model import RMPBlock
        >>> RMPBlock(8)(torch.randn(2, 8, 2, 2)).shape
        torch.Size([2, 12, 2, 2])
    """

    def __init__(self, channels: int, kernels: tuple[int, ...] = (2, 3, 5, 6)) -> None:
        super().__init__()
        channels = int(check_number("channels", channels, low=1, integer=True))
        self.kernels = tuple(int(check_number("kernels", k, low=1, integer=True)) for k in kernels)
        self.conv = nn.Conv2d(channels, 1, 1)
        self.out_channels = channels + len(self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(
                self.conv(F.max_pool2d(x, k, stride=k, ceil_mode=True)), size=size, mode="bilinear", align_corners=False
            )
            for k in self.kernels
        ]
        return torch.cat([*pooled, x], dim=1)


class DecoderBlock(nn.Module):
    """One CE-Net decoder step: 1x1 conv ``C -> C/4``, 3x3 transposed conv stride 2, 1x1 conv ``-> C_out``.

    Each conv is followed by BatchNorm and ReLU; the spatial size doubles.

    Args:
        in_channels: input channels ``C`` (``C // 4`` inside).
        out_channels: output channels ``C_out``.

    Shapes:
        - x: ``[B, C, h, w]``, float
        - returns: ``[B, C_out, 2h, 2w]``

    Returns:
        The upsampled map.

    Raises:
        ValueError: ``in_channels < 4`` or ``out_channels < 1``.

    Example:
        >>> import torch
        >>> from examples.dpfr_gland.model import DecoderBlock
        >>> DecoderBlock(16, 8)(torch.randn(2, 16, 3, 5)).shape
        torch.Size([2, 8, 6, 10])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        in_channels = int(check_number("in_channels", in_channels, low=4, integer=True))
        out_channels = int(check_number("out_channels", out_channels, low=1, integer=True))
        mid = in_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.norm1 = nn.BatchNorm2d(mid)
        self.deconv2 = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1)
        self.norm3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.deconv2(x)))
        return F.relu(self.norm3(self.conv3(x)))


# -- the network ----------------------------------------------------------------------


class SiteState(NamedTuple):
    """What :meth:`CENet.decode_from_site` needs: the map at the perturbation site and the skips.

    Shapes:
        - site: the map that ``perturb`` acts on: ``[B, C4, H/32, W/32]`` (``"bottleneck"``)
          or ``[B, Cd, H/2, W/2]`` (``"decoder"``, ``"classifier"``)
        - skips: ``(e1, e2, e3)`` encoder maps for ``"bottleneck"``, else ``()``

    Example:
        >>> from examples.dpfr_gland.model import SiteState
        >>> SiteState._fields
        ('site', 'skips')
    """

    site: torch.Tensor
    skips: tuple[torch.Tensor, ...]


class CENetOutput(NamedTuple):
    """What :class:`CENet` returns.

    Shapes:
        - logits: ``[B, K, H, W]``, class scores (no softmax)
        - features: ``[B, Cf, h, w]``, the map the density models, after ``perturb`` (if given):
          ``[B, C4, H/32, W/32]`` for ``"bottleneck"``, ``[B, Cd, H/2, W/2]`` for ``"decoder"``,
          ``[B, 32, H, W]`` (the classifier block's output) for ``"classifier"``
        - decoder: ``[B, Cd, H/2, W/2]``, the last decoder block's output, as fed to the
          classifier head (so perturbed when ``perturb_at="decoder"`` and ``perturb`` is given)

    Example:
        >>> from examples.dpfr_gland.model import CENetOutput
        >>> CENetOutput._fields
        ('logits', 'features', 'decoder')
    """

    logits: torch.Tensor
    features: torch.Tensor
    decoder: torch.Tensor


class CENet(nn.Module):
    """CE-Net: ResNet encoder, DAC + RMP context blocks, decoder with additive skips, K-class head.

    Decoder blocks ``decoder4..decoder1`` take ``C4 + 4 -> C3 -> C2 -> C1 -> C1`` channels,
    with the encoder stages added after the first three (``d4 + e3``, ``d3 + e2``,
    ``d2 + e1``); the head is a 4x4 transposed conv (stride 2) to 32 channels, ReLU, a 3x3
    conv, ReLU and the 3x3 classifier conv, as in the authors' code. For ResNet-50/101 the
    widths follow the encoder (``C4 = 2048``), so DAC holds four 2048-channel convs.

    ``perturb`` (any callable ``[B, C, h, w] -> [B, C, h, w]``, e.g. a
    :class:`densessl.DensityPerturbation`) is applied at ``perturb_at``:

    - ``"bottleneck"``: the encoder output ``e4`` before DAC (the skips ``e1..e3`` bypass it);
      the density models ``e4``;
    - ``"decoder"``: the last decoder block's output ``d1``; the density models ``d1``;
    - ``"classifier"``: ``d1`` again, but the density models the output of the
      classifier block (:attr:`classifier_block`: transposed conv, ReLU, conv, ReLU; 32
      channels at full resolution) — DDFP's site: perturb a block's input, measure the
      density at its output (``DensityPerturbation(head=net.classifier_block)``).

    Everything downstream sees the perturbed map. :meth:`encode_to_site` and
    :meth:`decode_from_site` split the forward pass at the site, so a perturbed branch
    re-runs only what follows it.

    Args:
        num_classes: number of classes ``K`` (3 for background / interior / contour).
        backbone: ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: number of image channels.
        pretrained: the encoder's initial weights: ``None`` (random), a local path to a
            torchvision-format ResNet state dict (loaded with ``weights_only=True``; ``fc.*``
            keys dropped, other mismatches raise), or torchvision's ImageNet weights by name
            (``"imagenet"``, ``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``; see
            :func:`imagenet_state_dict`, which fetches them into torch's hub cache once).
        perturb_at: ``"bottleneck"`` or ``"decoder"``.

    Shapes:
        - images: ``[B, in_channels, H, W]``, float, finite, ``H`` and ``W`` multiples of 32
        - returns: :class:`CENetOutput` with logits ``[B, K, H, W]``, features
          ``[B, feature_channels, h, w]`` and decoder ``[B, decoder_channels, H/2, W/2]``

    Returns:
        A :class:`CENetOutput` ``(logits, features, decoder)``.

    Raises:
        ValueError: unknown ``backbone`` or ``perturb_at``, ``num_classes < 1``; images of
            the wrong rank, channel count or size; a ``perturb`` result of another shape;
            a ``pretrained`` file that does not match the encoder.
        TypeError: non-float images, a ``perturb`` that is not callable or returns no tensor.
        FileNotFoundError: ``pretrained`` is not a file.

    References:
        Gu et al., "CE-Net: Context Encoder Network for 2D Medical Image Segmentation",
        IEEE TMI 38(10), 2019.

    Example:
        >>> import torch
        >>> from examples.dpfr_gland.model import CENet
        >>> _ = torch.manual_seed(0)
        >>> net = CENet(num_classes=3, backbone="resnet34").eval()
        >>> net.feature_channels, net.decoder_channels
        (512, 64)
        >>> out = net(torch.randn(1, 3, 64, 64))
        >>> tuple(out.logits.shape), tuple(out.features.shape), tuple(out.decoder.shape)
        ((1, 3, 64, 64), (1, 512, 2, 2), (1, 64, 32, 32))
        >>> shifted = net(torch.randn(1, 3, 64, 64), perturb=lambda f: f + 1.0)
        >>> tuple(shifted.features.shape)
        (1, 512, 2, 2)
    """

    size_multiple = 32

    def __init__(
        self,
        num_classes: int = 3,
        backbone: str = "resnet34",
        in_channels: int = 3,
        pretrained: str | os.PathLike | None = None,
        perturb_at: str = "bottleneck",
    ) -> None:
        super().__init__()
        self.num_classes = int(check_number("num_classes", num_classes, low=1, integer=True))
        if perturb_at not in PERTURB_POINTS:
            raise ValueError(f"perturb_at must be one of {list(PERTURB_POINTS)}, got {perturb_at!r}")
        self.perturb_at = perturb_at
        self.encoder = ResNetEncoder(backbone, in_channels)
        self.backbone = self.encoder.backbone
        self.in_channels = self.encoder.conv1.in_channels
        if pretrained is not None:
            if isinstance(pretrained, str) and is_weights_name(pretrained):
                self.encoder.load_torchvision(imagenet_state_dict(self.backbone, pretrained))
            else:
                self.encoder.load_torchvision(pretrained)
        c1, c2, c3, c4 = self.encoder.stage_channels
        self.dac = DACBlock(c4)
        self.rmp = RMPBlock(c4)
        self.decoder4 = DecoderBlock(self.rmp.out_channels, c3)
        self.decoder3 = DecoderBlock(c3, c2)
        self.decoder2 = DecoderBlock(c2, c1)
        self.decoder1 = DecoderBlock(c1, c1)
        self.head = nn.Sequential(
            nn.ConvTranspose2d(c1, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, self.num_classes, 3, padding=1),
        )
        self.decoder_channels = c1
        self.feature_channels = {"bottleneck": c4, "decoder": c1, "classifier": 32}[perturb_at]

    @property
    def classifier_block(self) -> nn.Sequential:
        """The head without its last conv (``[B, Cd, H/2, W/2] -> [B, 32, H, W]``), sharing its modules."""
        return self.head[:4]

    @property
    def density_block(self) -> nn.Module | None:
        """The block between the perturbed map and the density's input (``None``: the same map)."""
        return self.classifier_block if self.perturb_at == "classifier" else None

    def _check_images(self, images: object) -> torch.Tensor:
        images = check_features("images", images)
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must have {self.in_channels} channels [B, {self.in_channels}, H, W], "
                f"got shape {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        m = self.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise ValueError(
                f"images must have H and W that are positive multiples of {m} [B, C, H, W], "
                f"got shape {tuple(images.shape)}; pad or crop (e.g. to "
                f"{max(m, -(-h // m) * m)}x{max(m, -(-w // m) * m)})"
            )
        return images

    @staticmethod
    def _run_perturb(perturb: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = perturb(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"perturb must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(
                f"perturb must return a map of the shape it was given {tuple(x.shape)}, got shape {tuple(out.shape)}"
            )
        return out

    def forward(
        self,
        images: torch.Tensor,
        perturb: Callable[[torch.Tensor], torch.Tensor] | None = None,
        perturb_last: int | None = None,
    ) -> CENetOutput:
        """Segment a batch of images, optionally perturbing the map at ``perturb_at``.

        With ``perturb_last=k`` the batch is segmented clean *and* the site maps of its last
        ``k`` images are decoded once more with ``perturb`` applied: the encoder (everything
        before the site) runs once, only the part after the site runs twice, and the outputs
        hold ``B + k`` rows (the clean ``B``, then the ``k`` perturbed). In one call, so DDP
        sees one forward per backward.

        Args:
            images: the image batch (normalised floats).
            perturb: optional callable applied to the map at ``perturb_at``.
            perturb_last: perturb only a second pass over the last ``k`` images (``1..B``).

        Shapes:
            - images: ``[B, in_channels, H, W]``, float, ``H`` and ``W`` multiples of 32
            - returns: see :class:`CENetOutput` (``B + k`` rows with ``perturb_last=k``)

        Returns:
            ``CENetOutput(logits, features, decoder)``.

        Raises:
            ValueError: wrong rank, channel count or size of ``images``; ``perturb`` changed the
                shape; ``perturb_last`` outside ``1..B`` or given without ``perturb``.
            TypeError: non-float ``images``; ``perturb`` not callable or returning no tensor.

        Example:
            >>> import torch
            >>> from examples.dpfr_gland.model import CENet
            >>> net = CENet(perturb_at="decoder").eval()
            >>> tuple(net(torch.randn(1, 3, 32, 32)).features.shape)
            (1, 64, 16, 16)
            >>> out = net(torch.randn(3, 3, 32, 32), perturb=lambda d: d + 1.0, perturb_last=2)
            >>> tuple(out.logits.shape)
            (5, 3, 32, 32)
        """
        state = self.encode_to_site(images)
        if perturb_last is None:
            return self.decode_from_site(state, perturb)
        b = state.site.shape[0]
        if perturb is None or not isinstance(perturb_last, int) or not 1 <= perturb_last <= b:
            raise ValueError(
                f"perturb_last must be an int in 1..{b} (the batch) and come with perturb, "
                f"got {perturb_last!r} with perturb={'set' if perturb is not None else None}"
            )
        clean = self.decode_from_site(state)
        tail = SiteState(state.site[b - perturb_last :], tuple(s[b - perturb_last :] for s in state.skips))
        perturbed = self.decode_from_site(tail, perturb)
        return CENetOutput(*(torch.cat([c, p]) for c, p in zip(clean, perturbed)))

    def encode_to_site(self, images: torch.Tensor) -> SiteState:
        """Run the network up to the perturbation site.

        Args:
            images: the image batch.

        Shapes:
            - images: ``[B, in_channels, H, W]``, ``H`` and ``W`` multiples of 32
            - returns: :class:`SiteState`

        Returns:
            The map at the site and the encoder skips the rest of the network needs.

        Example:
            >>> import torch
            >>> from examples.dpfr_gland.model import CENet
            >>> net = CENet().eval()
            >>> state = net.encode_to_site(torch.randn(1, 3, 64, 64))
            >>> tuple(state.site.shape), len(state.skips)
            ((1, 512, 2, 2), 3)
        """
        images = self._check_images(images)
        e1, e2, e3, e4 = self.encoder(images)
        if self.perturb_at == "bottleneck":
            return SiteState(e4, (e1, e2, e3))
        return SiteState(self._decode(e4, (e1, e2, e3)), ())

    def _decode(self, e4: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        e1, e2, e3 = skips
        x = self.rmp(self.dac(e4))
        d4 = self.decoder4(x) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        return self.decoder1(d2)

    def decode_from_site(
        self, state: SiteState, perturb: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> CENetOutput:
        """Run the rest of the network from the perturbation site, perturbing the site's map first.

        Args:
            state: from :meth:`encode_to_site` (its tensors may be re-batched, e.g.
                ``SiteState(site[k:], tuple(s[k:] for s in skips))``).
            perturb: optional callable applied to ``state.site``.

        Shapes:
            - returns: see :class:`CENetOutput`

        Returns:
            ``CENetOutput(logits, features, decoder)``.

        Raises:
            ValueError: ``perturb`` changed the shape.
            TypeError: ``perturb`` not callable or returning no tensor.

        Example:
            >>> import torch
            >>> from examples.dpfr_gland.model import CENet
            >>> net = CENet(perturb_at="classifier").eval()
            >>> state = net.encode_to_site(torch.randn(2, 3, 64, 64))
            >>> out = net.decode_from_site(state, perturb=lambda d: d + 1.0)
            >>> tuple(out.features.shape), tuple(out.logits.shape)
            ((2, 32, 64, 64), (2, 3, 64, 64))
        """
        if perturb is not None and not callable(perturb):
            raise TypeError(f"perturb must be callable [B, C, h, w] -> [B, C, h, w], got {type(perturb).__name__}")
        site = state.site if perturb is None else self._run_perturb(perturb, state.site)
        if self.perturb_at == "bottleneck":
            d1 = self._decode(site, state.skips)
            return CENetOutput(self.head(d1), site, d1)
        d1 = site
        if self.perturb_at == "decoder":
            return CENetOutput(self.head(d1), d1, d1)
        penultimate = self.classifier_block(d1)
        return CENetOutput(self.head[4](penultimate), penultimate, d1)
