"""DensityPerturbation / functional.density_perturbation against analytic and autograd oracles."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from densessl import DensityPerturbation
from densessl.functional import density_perturbation


class GaussianDensity(nn.Module):
    """Per-pixel isotropic Gaussian N(means[y], sigma^2 I); class 0 without labels.

    A dropout sits in front: it is the identity only in eval mode, so the analytic formula
    holds only if DensityPerturbation really switches the density to eval.
    """

    def __init__(self, channels: int, num_classes: int = 1, sigma: float = 1.0) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.randn(num_classes, channels))
        self.sigma = sigma
        self.dropout = nn.Dropout(0.5)
        self.calls: list[dict] = []

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(
            {
                "dtype": x.dtype,
                "training": self.training,
                "dropout_training": self.dropout.training,
                "grad_enabled": torch.is_grad_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
            }
        )
        x = self.dropout(x)
        if labels is None:
            mu = self.means[0][None, :, None, None]
        else:
            mu = self.means[labels].permute(0, 3, 1, 2)
        c = x.shape[1]
        return -0.5 * (x - mu).square().sum(1) / self.sigma**2 - c * math.log(self.sigma * math.sqrt(2 * math.pi))


class NonlinearDensity(nn.Module):
    """An unnormalised per-pixel log density with a nonlinear gradient (1x1 conv + tanh)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, 5, 1)
        self.scale = nn.Parameter(torch.tensor(0.3))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * torch.tanh(self.proj(x)).square().sum(1) - self.scale * x.square().sum(1)


def pixel_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.double(), dim=1)


# ----------------------------------------------------------------------------- oracles


def test_gaussian_matches_hand_formula():
    torch.manual_seed(0)
    density = GaussianDensity(4, sigma=0.7).train()  # train mode on purpose: must be switched off
    features = torch.randn(2, 4, 3, 5)
    rho = DensityPerturbation(density, xi=3.0).perturbation(features)
    # -grad log p = (x - mu) / sigma^2: the unit direction is (x - mu) / ||x - mu||
    x = features.double().numpy()
    mu = density.means[0].detach().double().numpy()[None, :, None, None]
    diff = x - mu
    expected = 3.0 * diff / np.linalg.norm(diff, axis=1, keepdims=True)
    np.testing.assert_allclose(rho.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert all(not c["training"] and not c["dropout_training"] for c in density.calls)


def test_matches_per_pixel_autograd_jacobian_float64():
    torch.manual_seed(1)
    density = NonlinearDensity(3).double()
    features = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    rho = density_perturbation(features, density.log_prob, xi=0.8)
    assert rho.dtype == torch.float64
    # oracle: naive loop over pixels, Jacobian of the scalar -log p of a 1x1 map
    for b in range(2):
        for i in range(2):
            for j in range(3):
                v = features[b, :, i, j].clone()

                def nll(u: torch.Tensor) -> torch.Tensor:
                    return -density.log_prob(u[None, :, None, None])[0, 0, 0]

                jac = torch.autograd.functional.jacobian(nll, v)
                expected = 0.8 * jac / jac.norm()
                torch.testing.assert_close(rho[b, :, i, j], expected, rtol=1e-10, atol=1e-12)


def test_head_path_matches_functorch_gradient():
    torch.manual_seed(2)
    head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
    density = GaussianDensity(4)
    head.train()
    features = torch.randn(2, 3, 4, 4)
    bn_before = head[1].running_mean.clone()
    rho = DensityPerturbation(density, xi=2.0, head=head).perturbation(features)
    # oracle: torch.func.grad of the composed scalar function, in float64, head in eval
    head64, density64 = head.double().eval(), GaussianDensity(4).double().eval()
    density64.means.data.copy_(density.means.data.double())
    g = torch.func.grad(lambda x: -density64.log_prob(head64(x)).sum())(features.double())
    expected = 2.0 * g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(rho.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head[1].running_mean, bn_before.double())  # no BN statistics update


def test_labels_select_class_conditional_mean():
    torch.manual_seed(3)
    density = GaussianDensity(3, num_classes=2)
    features = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.int32)
    rho = DensityPerturbation(density, xi=1.0).perturbation(features, labels=labels)
    mu = density.means.detach()[labels.long()].permute(0, 3, 1, 2)
    diff = (features - mu).double()
    torch.testing.assert_close(rho.double(), diff / diff.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)


def test_increases_nll_for_small_step():
    torch.manual_seed(4)
    density = NonlinearDensity(6).double()
    features = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    perturbed = DensityPerturbation(density, xi=1e-3)(features)
    with torch.no_grad():
        before, after = -density.log_prob(features), -density.log_prob(perturbed)
    assert bool((after > before).all())
    # and to first order by xi * ||grad|| (a check of the step's direction and length)
    x = features.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(-density.log_prob(x).sum(), x)
    torch.testing.assert_close(after - before, 1e-3 * g.norm(dim=1), rtol=1e-2, atol=1e-9)


# ----------------------------------------------------------------------------- the bound


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 6),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    xi=st.floats(0.0, 50.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    relative=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
@example(b=1, c=2, h=1, w=1, xi=1.401298464324817e-45, scale=1e-3, relative=False, seed=0)  # subnormal xi
def test_norm_never_exceeds_xi(b, c, h, w, xi, scale, relative, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    density = NonlinearDensity(c)
    features = torch.randn(b, c, h, w, generator=g) * scale
    rho = density_perturbation(features, density.log_prob, xi=xi, relative=relative)
    norms = pixel_norms(rho)
    bound = xi * pixel_norms(features) if relative else torch.full_like(norms, xi)
    assert bool(torch.isfinite(rho).all())
    # "up to rounding" (the documented contract): relative 1e-6, and where xi falls into float32's
    # subnormal range (hypothesis found xi = 1.4e-45) each of the c components rounds to a multiple of
    # the smallest subnormal, an absolute error no relative tolerance covers
    rounding = c**0.5 * torch.finfo(rho.dtype).smallest_normal * torch.finfo(rho.dtype).eps
    assert bool((norms <= bound * (1 + 1e-6) + rounding).all())
    # the bound is attained wherever the gradient is not flat
    x = features.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(-density.log_prob(x).sum(), x)
    moving = pixel_norms(grad) > 1e-6
    torch.testing.assert_close(norms[moving], bound[moving], rtol=1e-5, atol=1e-6)


def test_zero_gradient_pixel_gets_zero_not_nan():
    density = GaussianDensity(3)
    features = torch.randn(1, 3, 1, 2)
    features[0, :, 0, 0] = density.means.detach()[0]  # at the mode: gradient exactly 0
    rho = DensityPerturbation(density, xi=3.0).perturbation(features)
    assert torch.equal(rho[0, :, 0, 0], torch.zeros(3))
    assert pixel_norms(rho)[0, 0, 1].item() == pytest.approx(3.0, rel=1e-6)


def test_mask_zeroes_rho_and_keeps_others():
    torch.manual_seed(5)
    density = GaussianDensity(4)
    features = torch.randn(2, 4, 3, 3)
    mask = torch.rand(2, 3, 3) > 0.5
    mask[0, 0, 0], mask[0, 0, 1] = True, False
    perturb = DensityPerturbation(density, xi=1.5)
    full = perturb.perturbation(features)
    masked = perturb.perturbation(features, mask=mask)
    assert torch.equal(masked[~mask[:, None].expand_as(masked)], torch.zeros(int((~mask).sum()) * 4))
    torch.testing.assert_close(masked[mask[:, None].expand_as(masked)], full[mask[:, None].expand_as(full)])


def test_float_under_flow_and_overflow_gradients_are_normalised():
    # gradients of size 1e-30 (squares underflow in float32) and 1e25 (squares overflow)
    class Linear:
        def __init__(self, a: float) -> None:
            self.a = a

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return -self.a * (x[:, 0] + 2 * x[:, 1])

    features = torch.zeros(1, 2, 1, 1)
    expected = torch.tensor([1.0, 2.0]) / math.sqrt(5)
    for a in (1e-30, 1e25):
        rho = density_perturbation(features, Linear(a).log_prob, xi=1.0, eps=1e-35)
        torch.testing.assert_close(rho.flatten(), expected)
    # with the default eps = 1e-12 a gradient of norm ~2e-30 counts as flat: rho = 0
    assert torch.equal(density_perturbation(features, Linear(1e-30).log_prob, xi=1.0), torch.zeros_like(features))


# ----------------------------------------------------------------------------- guarantees


def test_identity_gradient_and_no_parameter_grads():
    torch.manual_seed(6)
    density = NonlinearDensity(4)
    head = nn.Conv2d(4, 4, 1)
    perturb = DensityPerturbation(density, xi=2.0, head=head)
    features = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = perturb(features)
    assert not perturb.perturbation(features).requires_grad  # rho carries no graph
    upstream = torch.randn_like(out)
    out.backward(upstream)
    assert torch.equal(features.grad, upstream)
    assert all(p.grad is None for p in density.parameters())
    assert all(p.grad is None for p in head.parameters())


def test_density_and_head_are_not_registered():
    density, head = GaussianDensity(4), nn.Conv2d(4, 4, 1)
    perturb = DensityPerturbation(density, head=head)
    assert list(perturb.parameters()) == [] and perturb.state_dict() == {}
    assert perturb.density is density and perturb.head is head
    student = nn.Sequential(nn.Conv2d(3, 4, 1))
    student.perturb = perturb
    assert {n for n, _ in student.named_parameters()} == {"0.weight", "0.bias"}


def test_modes_restored_per_submodule_and_eval_during_computation():
    density = GaussianDensity(3)
    density.train()
    density.dropout.eval()  # mixed tree
    head = nn.Sequential(nn.Identity(), nn.Dropout(0.3))
    head.eval()
    head[1].train()  # mixed the other way
    before = [m.training for m in (*density.modules(), *head.modules())]
    DensityPerturbation(density, head=head).perturbation(torch.randn(1, 3, 2, 2))
    assert [m.training for m in (*density.modules(), *head.modules())] == before
    assert density.calls[-1]["training"] is False and density.calls[-1]["dropout_training"] is False


def test_modes_restored_after_an_error():
    density = GaussianDensity(3).train()
    with pytest.raises(ValueError, match="labels"):
        DensityPerturbation(density).perturbation(
            torch.randn(1, 3, 2, 2), labels=torch.zeros(1, 3, 3, dtype=torch.long)
        )
    assert density.training and density.dropout.training


def test_works_under_no_grad():
    torch.manual_seed(7)
    density = GaussianDensity(3)
    features = torch.randn(1, 3, 2, 2)
    perturb = DensityPerturbation(density, xi=1.0)
    expected = perturb(features)
    with torch.no_grad():
        got = perturb(features)
    assert density.calls[-1]["grad_enabled"]
    assert torch.equal(got, expected) and pixel_norms(got - features).min() > 0.99


def test_bfloat16_under_autocast():
    torch.manual_seed(8)
    density = NonlinearDensity(8)
    features = torch.randn(2, 8, 4, 4).bfloat16()
    perturb = DensityPerturbation(density, xi=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = perturb(features)
        rho = perturb.perturbation(features)
    assert out.dtype == torch.bfloat16 and rho.dtype == torch.bfloat16
    assert bool(torch.isfinite(out).all()) and bool((rho != 0).any())
    norms = pixel_norms(rho)
    assert bool((norms <= 3.0 * (1 + 2**-7)).all()) and bool((norms > 3.0 * (1 - 2**-6)).all())
    # the density math ran in float32 with autocast off: same rho as a float32 call, rounded
    reference = density_perturbation(features.float(), density.log_prob, xi=3.0).bfloat16()
    assert torch.equal(rho, reference)


def test_relative_step_length():
    torch.manual_seed(9)
    density = GaussianDensity(5)
    features = torch.randn(2, 5, 3, 3) * 4
    rho = DensityPerturbation(density, xi=0.1, relative=True).perturbation(features)
    torch.testing.assert_close(pixel_norms(rho), 0.1 * pixel_norms(features), rtol=1e-5, atol=1e-6)


def test_xi_zero_is_identity():
    features = torch.randn(1, 3, 2, 2)
    assert torch.equal(DensityPerturbation(GaussianDensity(3), xi=0.0)(features), features)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_constructor_arguments():
    density = GaussianDensity(3)
    with pytest.raises(ValueError, match="xi"):
        DensityPerturbation(density, xi=-1.0)
    with pytest.raises(TypeError, match="xi"):
        DensityPerturbation(density, xi="3")
    with pytest.raises(ValueError, match="eps"):
        DensityPerturbation(density, eps=0.0)
    with pytest.raises(TypeError, match="density"):
        DensityPerturbation(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="head"):
        DensityPerturbation(density, head=3)
    with pytest.raises(TypeError, match="relative"):
        DensityPerturbation(density, relative=1)


def test_bad_call_arguments():
    perturb = DensityPerturbation(GaussianDensity(3))
    x = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="features"):
        perturb(torch.randn(3, 2, 2))
    with pytest.raises(TypeError, match="features"):
        perturb(torch.ones(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        perturb(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="mask"):
        perturb(x, mask=torch.ones(1, 2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        perturb(x, mask=torch.ones(1, 2, 2))
    with pytest.raises(TypeError, match="labels"):
        perturb(x, labels=torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="labels"):
        perturb(x, labels=torch.zeros(1, 3, 2, dtype=torch.long))


def test_bad_log_prob_outputs():
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(ValueError, match="log_prob"):
        density_perturbation(x, lambda f: f.sum(), xi=1.0)  # scalar, not [B, H, W]
    with pytest.raises(ValueError, match="log_prob"):
        density_perturbation(x, lambda f: f.sum(1)[:1], xi=1.0)  # wrong batch size
    with pytest.raises(ValueError, match="log_prob"):
        density_perturbation(x, lambda f: f.sum(1) * float("inf"), xi=1.0)
    with pytest.raises(ValueError, match="log_prob"):
        density_perturbation(x, lambda f: f.detach().sum(1), xi=1.0)  # no graph
    with pytest.raises(TypeError, match="log_prob_fn"):
        density_perturbation(x, "not callable", xi=1.0)


def test_mask_with_spatial_head_restricts_objective_and_step():
    # A 3x3 head mixes neighbours: a masked-out pixel still has a gradient (from its
    # neighbours' densities), so only the explicit masking of rho zeroes it; and the
    # masked-out pixels' own densities leave the objective.
    torch.manual_seed(10)
    head = nn.Conv2d(3, 3, 3, padding=1)
    density = GaussianDensity(3)
    features = torch.randn(1, 3, 4, 4)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = False
    rho = DensityPerturbation(density, xi=1.0, head=head).perturbation(features, mask=mask)
    assert torch.equal(rho[0][:, ~mask[0]], torch.zeros(3, 4))
    head64, density64 = nn.Conv2d(3, 3, 3, padding=1).double(), GaussianDensity(3).double().eval()
    head64.load_state_dict(head.state_dict())
    density64.means.data.copy_(density.means.data.double())
    g = torch.func.grad(lambda x: -(density64.log_prob(head64(x)) * mask).sum())(features.double())
    assert bool((g.norm(dim=1)[~mask] > 1e-3).all())  # the masked pixels do have a gradient
    expected = g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(rho[0][:, mask[0]].double(), expected[0][:, mask[0]], rtol=1e-4, atol=1e-5)


def test_integration_with_flow_density_head():
    from densessl import FlowDensityHead

    torch.manual_seed(11)
    flow = FlowDensityHead(6, 3, depth=2, hidden=16)
    features = torch.randn(2, 6, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0, :2] = 255  # unlabelled pixels use the mixture
    flow.train()
    flow.nll(features, labels).backward()  # data-dependent init + a real gradient on the params
    flow.zero_grad(set_to_none=True)
    perturb = DensityPerturbation(flow, xi=3.0)
    rho = perturb.perturbation(features, labels=labels)
    assert flow.training and all(p.grad is None for p in flow.parameters())
    # oracle: float64 autograd gradient of the flow's own -log p(x | y)
    flow64 = FlowDensityHead(6, 3, depth=2, hidden=16).double()
    flow64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in flow.state_dict().items()})
    flow64.eval()
    x = features.double().requires_grad_(True)
    (g,) = torch.autograd.grad(-flow64.log_prob(x, labels).sum(), x)
    torch.testing.assert_close(rho.double(), 3.0 * g / g.norm(dim=1, keepdim=True), rtol=1e-3, atol=1e-4)
    small = DensityPerturbation(flow, xi=1e-2)(features, labels=labels)
    with torch.no_grad():
        flow.eval()
        assert bool((flow.log_prob(small, labels) < flow.log_prob(features, labels)).all())


def test_infinite_xi_is_refused():
    # xi=inf used to return infinite features (and NaN at flat pixels: 0 * inf).
    with pytest.raises(ValueError, match="xi.*finite"):
        DensityPerturbation(GaussianDensity(3), xi=math.inf)
    with pytest.raises(ValueError, match="xi.*finite"):
        density_perturbation(torch.randn(1, 3, 2, 2), lambda f: -f.square().sum(1), xi=math.inf)


# ----------------------------------------------------------------------------- issue 6: ownership


class _StudentWithPerturbation(nn.Module):
    """A user's network that keeps the perturbation (and the block it perturbs through) inside."""

    def __init__(self, density) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 1)
        self.block = nn.Conv2d(4, 4, 1)
        self.perturb = DensityPerturbation(density, xi=1.0, head=self.block)

    def forward(self, x):
        return self.block(self.perturb(self.encoder(x)))


def test_deepcopy_and_ema_teacher_share_the_density_and_copy_the_head_with_the_network():
    # A deepcopy (EMATeacher) used to copy the density: the teacher's copy was never
    # trained and not moved by .to().
    from densessl import EMATeacher

    density = GaussianDensity(4)
    student = _StudentWithPerturbation(density)
    for clone in (copy.deepcopy(student), EMATeacher(student).model):
        assert clone.perturb.density is density  # one density model, trained by its owner
        assert clone.perturb.head is clone.block  # the copy perturbs through its own block
        assert clone.perturb.head is not student.block
        clone(torch.randn(1, 3, 2, 2))  # and it runs
    standalone = copy.deepcopy(student.perturb)
    assert standalone.density is density and standalone.xi == 1.0


def test_pickle_drops_the_density_and_says_how_to_reattach():
    density = GaussianDensity(4)
    student = _StudentWithPerturbation(density)
    restored = pickle.loads(pickle.dumps(student))
    assert restored.perturb.density is None
    assert restored.perturb.head is restored.block
    with pytest.raises(RuntimeError, match=r"no density.*\.density = "):
        restored(torch.randn(1, 3, 2, 2))
    restored.perturb.density = density
    restored(torch.randn(1, 3, 2, 2))
    with pytest.raises(TypeError, match="log_prob"):
        restored.perturb.density = nn.Linear(2, 2)


def test_to_and_state_dict_leave_the_density_to_its_owner():
    density = GaussianDensity(4)
    student = _StudentWithPerturbation(density)
    student.to(torch.float64)
    assert density.means.dtype == torch.float32  # .to() of the student does not move it
    assert student.block.weight.dtype == torch.float64
    assert set(student.state_dict()) == {"encoder.weight", "encoder.bias", "block.weight", "block.bias"}
    assert all(p is not density.means for p in student.parameters())


def test_mask_is_keyword_only_and_labels_come_second():
    # perturb(features, mask, labels) vs head.nll(features, labels, mask): one order now,
    # tensor, labels, then keywords.
    density = GaussianDensity(3, num_classes=2)
    perturb = DensityPerturbation(density, xi=1.0)
    x = torch.randn(1, 3, 2, 2)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(TypeError):
        perturb(x, torch.zeros(1, 2, 2, dtype=torch.long), mask)
    with pytest.raises(TypeError, match="labels"):
        perturb(x, mask)  # a mask where labels go: named, not silently used
    perturb(x, torch.zeros(1, 2, 2, dtype=torch.long), mask=mask)
    with pytest.raises(TypeError):
        density_perturbation(x, density.log_prob, 1.0, mask)
