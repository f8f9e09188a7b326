"""Flow blocks: log-dets against autograd Jacobians, exact inverses, ActNorm init and
state, nflows interoperability, and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from flow_helpers import perturb_parameters
from hypothesis import given, settings
from hypothesis import strategies as st

from densessl.flows import (
    ActNorm,
    AffineCoupling,
    FlowSequence,
    InvertibleLinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    glow_flow,
)
from densessl.functional import soft_clamp


def _jacobian_logdets(transform, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of each row of ``transform(rows) -> (outputs, logdet)``, from autograd's full
    Jacobian (independent of the block's own log-det)."""
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: transform(v[None])[0][0], row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


def _blocks(c: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(c)
    return {
        "actnorm": ActNorm(c),
        "linear": InvertibleLinear(c),
        "coupling": AffineCoupling(c, hidden=6, clamp=1.5),
        "random_perm": RandomPermutation(c),
        "reverse_perm": ReversePermutation(c),
        "glow": glow_flow(c, depth=2, hidden=6, clamp=2.0),
    }


@pytest.mark.parametrize("c", [2, 3, 5])
@pytest.mark.parametrize("name", ["actnorm", "linear", "coupling", "random_perm", "reverse_perm", "glow"])
def test_logdet_matches_autograd_jacobian(name: str, c: int) -> None:
    block = perturb_parameters(_blocks(c)[name].double(), seed=c, scale=0.3).eval()
    x = torch.randn(4, c, dtype=torch.float64)
    _, logdet = block(x)
    assert logdet.shape == (4,)
    torch.testing.assert_close(logdet, _jacobian_logdets(block, x), rtol=1e-9, atol=1e-9)
    # and the inverse's log-det is the negative, by the inverse's own Jacobian
    y, _ = block(x)
    _, inv_logdet = block.inverse(y)
    jac_inv = _jacobian_logdets(block.inverse, y)
    torch.testing.assert_close(inv_logdet, jac_inv, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-9, atol=1e-9)


def test_glow_logdet_counts_every_layer() -> None:
    # The whole-flow log-det must include actnorm and 1x1 terms, not only couplings:
    # a flow of only an ActNorm with log_scale = log 2 on C = 3 has log-det 3 log 2.
    flow = glow_flow(3, depth=1, hidden=4).double().eval()
    with torch.no_grad():
        flow.transforms[0].log_scale.fill_(math.log(2.0))
    x = torch.randn(2, 3, dtype=torch.float64)
    _, logdet = flow(x)
    lin = flow.transforms[1]
    expected = 3 * math.log(2.0) + torch.linalg.slogdet(lin.weight()).logabsdet
    torch.testing.assert_close(logdet, expected.expand(2))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(2, 7), depth=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_inverse_of_forward_is_identity(n: int, c: int, depth: int, seed: int) -> None:
    torch.manual_seed(seed)
    flow = perturb_parameters(glow_flow(c, depth=depth, hidden=5).double(), seed=seed, scale=0.3).eval()
    x = torch.randn(n, c, dtype=torch.float64) * 3
    y, logdet = flow(x)
    x_back, inv_logdet = flow.inverse(y)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-9, atol=1e-9)


def test_invertible_linear_is_the_lu_product() -> None:
    torch.manual_seed(1)
    lin = perturb_parameters(InvertibleLinear(4).double(), scale=0.3)
    # W = P L U rebuilt by hand from the stored factors, with P as an explicit matrix
    eye = torch.eye(4, dtype=torch.float64)
    p_matrix = eye[lin.permutation]
    lower = torch.tril(lin.lower, -1) + eye
    upper = torch.triu(lin.upper, 1) + torch.diag(lin.sign * lin.log_s.exp())
    w = p_matrix @ lower @ upper
    torch.testing.assert_close(lin.weight(), w)
    for n in (3, 10):  # fewer rows than C: factors applied in turn; more: W formed once
        x = torch.randn(n, 4, dtype=torch.float64)
        y, logdet = lin(x)
        torch.testing.assert_close(y, x @ w.T)
        torch.testing.assert_close(logdet, torch.linalg.slogdet(w).logabsdet.expand(n))
        torch.testing.assert_close(lin.inverse(y)[0], x)
    # starts orthogonal: volume preserving
    fresh = InvertibleLinear(6)
    torch.testing.assert_close(fresh.weight() @ fresh.weight().T, torch.eye(6), atol=1e-5, rtol=0)
    assert abs(float(fresh(torch.zeros(1, 6))[1].detach())) < 1e-5


def test_actnorm_data_dependent_init() -> None:
    torch.manual_seed(0)
    norm = ActNorm(4)
    assert not bool(norm.initialized)
    x = torch.randn(500, 4, dtype=torch.float32) * torch.tensor([0.1, 1.0, 5.0, 20.0]) + torch.tensor([-3, 0, 2, 9])
    y, logdet = norm(x)
    assert bool(norm.initialized)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    # log-det is the log of the product of the scales = -sum log std (numpy-free oracle: float64 std)
    expected = -torch.log(x.double().std(0, unbiased=False)).sum()
    torch.testing.assert_close(logdet.double(), expected.expand(500), atol=1e-4, rtol=0)
    # a second training call does not re-initialise
    before = norm.log_scale.detach().clone()
    norm(torch.randn(50, 4) + 100)
    torch.testing.assert_close(norm.log_scale.detach(), before)


def test_actnorm_eval_before_init_is_identity() -> None:
    norm = ActNorm(3).eval()
    x = torch.randn(5, 3)
    y, logdet = norm(x)
    assert torch.equal(y, x) and not bool(norm.initialized)
    assert torch.equal(logdet, torch.zeros(5))


def test_actnorm_state_dict_survives_without_reinit() -> None:
    torch.manual_seed(0)
    flow = glow_flow(4, depth=2, hidden=8)
    flow(torch.randn(64, 4) * 3 + 1)  # initialises both ActNorms
    assert "transforms.0.initialized" in flow.state_dict()
    fresh = glow_flow(4, depth=2, hidden=8)
    fresh.load_state_dict(flow.state_dict())
    fresh.train()
    other = torch.randn(10, 4) * 50 - 7  # very different data: a re-init would change outputs
    y_ref, ld_ref = flow(other)
    y, ld = fresh(other)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)


def test_coupling_starts_as_identity_and_supports_odd_channels() -> None:
    coupling = AffineCoupling(7, hidden=4)
    x = torch.randn(5, 7)
    y, logdet = coupling(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(5))
    assert coupling.conditioner[0].in_features == 3 and coupling.conditioner[-1].out_features == 8


def test_coupling_log_scale_is_soft_clamped() -> None:
    coupling = AffineCoupling(5, hidden=4, clamp=0.5)
    with torch.no_grad():
        coupling.conditioner[-1].bias.fill_(1e4)  # huge raw log-scales and shifts
    x = torch.randn(3, 5)
    _, logdet = coupling(x)
    # 3 transformed channels, each log-scale just below the clamp 0.5
    assert torch.all(logdet < 1.5) and torch.all(logdet > 1.49)


def test_soft_clamp_hand_values() -> None:
    x = torch.tensor([0.0, 2.0, -2.0, 1e9], requires_grad=True)
    y = soft_clamp(x, 2.0)
    # atan(1) = pi/4, so soft_clamp(c, c) = c/2
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 1.0, -1.0, 2.0]))
    (grad,) = torch.autograd.grad(y[0], x)
    assert grad[0] == pytest.approx(2 / math.pi)  # d/dx c*2/pi*atan(x/c) at 0


def test_permutation_and_inverse() -> None:
    perm = Permutation(torch.tensor([2, 0, 1]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y, _ = perm(x)
    assert y.tolist() == [[3.0, 1.0, 2.0]]
    assert perm.inverse(y)[0].tolist() == x.tolist()
    assert ReversePermutation(4)(torch.arange(4.0)[None])[0].tolist() == [[3.0, 2.0, 1.0, 0.0]]


@pytest.mark.filterwarnings("ignore:torch.triangular_solve is deprecated:UserWarning")
def test_flow_sequence_matches_nflows_composite() -> None:
    nflows_t = pytest.importorskip("nflows.transforms")
    torch.manual_seed(3)
    blocks = [ActNorm(4), nflows_t.LULinear(4), AffineCoupling(4, hidden=5), nflows_t.ReversePermutation(4)]
    blocks = [perturb_parameters(b, seed=i, scale=0.3) for i, b in enumerate(blocks)]
    ours = FlowSequence(blocks).eval()
    theirs = nflows_t.CompositeTransform(blocks).eval()
    x = torch.randn(6, 4)
    y, ld = ours(x)
    y_ref, ld_ref = theirs(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    torch.testing.assert_close(ours.inverse(y)[0], x, atol=1e-4, rtol=1e-4)


def test_bad_inputs_name_the_argument() -> None:
    block = glow_flow(3, depth=1, hidden=4)
    with pytest.raises(ValueError, match="inputs"):
        block(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="inputs.*C=3"):
        block(torch.randn(2, 4))
    with pytest.raises(TypeError, match="inputs"):
        block(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="inputs"):
        block([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="inputs"):
        InvertibleLinear(3).inverse(torch.randn(2, 2))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="features"):
        ActNorm(0)
    with pytest.raises(ValueError, match="eps"):
        ActNorm(2, eps=0.0)
    with pytest.raises(ValueError, match="features"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="hidden"):
        AffineCoupling(4, hidden=0)
    with pytest.raises(ValueError, match="clamp"):
        AffineCoupling(4, clamp=0.0)
    with pytest.raises(TypeError, match="features"):
        InvertibleLinear(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        glow_flow(4, depth=0)
    with pytest.raises(ValueError, match="permutation"):
        Permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="transforms"):
        FlowSequence([])
    with pytest.raises(TypeError, match=r"transforms\[1\]"):
        FlowSequence([ActNorm(2), torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="clamp"):
        soft_clamp(torch.zeros(1), -1.0)


@pytest.mark.parametrize("name", ["actnorm", "linear", "coupling", "glow"])
def test_blocks_cast_low_precision_rows_and_refuse_float64_into_float32(name: str) -> None:
    # The blocks accepted float16/bfloat16/float64 rows in their check and then failed
    # inside a matmul ("expected m1 and m2 to have the same dtype").
    block = perturb_parameters(_blocks(4)[name], scale=0.3).eval()
    x = torch.randn(6, 4)
    y_ref, ld_ref = block(x.half().float())
    for dtype in (torch.float16, torch.bfloat16):
        y, ld = block(x.to(dtype))
        assert y.dtype == torch.float32 and ld.dtype == torch.float32
        back = x.to(dtype).float()
        torch.testing.assert_close(y, block(back)[0])
        torch.testing.assert_close(block.inverse(y.to(dtype))[0], block.inverse(y.to(dtype).float())[0])
    torch.testing.assert_close(block(x.half())[0], y_ref)
    with pytest.raises(TypeError, match="inputs.*float64"):
        block(x.double())
    with pytest.raises(TypeError, match="inputs.*float64"):
        block.inverse(x.double())
    block64 = block.double()
    assert block64(x)[0].dtype == torch.float64  # float32 rows into a float64 block: upcast


def test_permutation_must_be_an_integer_tensor() -> None:
    # [1.5, 0.0] used to be truncated to [1, 0] silently.
    with pytest.raises(TypeError, match="permutation"):
        Permutation(torch.tensor([1.5, 0.0]))
    with pytest.raises(TypeError, match="permutation"):
        Permutation(torch.tensor([1.0, 0.0]))
    assert Permutation(torch.tensor([1, 0], dtype=torch.int32)).permutation.dtype == torch.long


def test_infinite_clamp_and_eps_are_refused() -> None:
    # clamp=inf gave soft_clamp = inf * atan(0) = NaN log-scales; eps=inf a -inf log-det.
    with pytest.raises(ValueError, match="clamp.*finite"):
        AffineCoupling(4, clamp=math.inf)
    with pytest.raises(ValueError, match="clamp.*finite"):
        soft_clamp(torch.zeros(1), math.inf)
    with pytest.raises(ValueError, match="clamp.*finite"):
        glow_flow(4, clamp=math.inf)
    with pytest.raises(ValueError, match="eps.*finite"):
        ActNorm(3, eps=math.inf)


# --- ActNorm's data-dependent initialisation cannot explode ---------------------------


def _gaussian_nll_and_grad_norm(flow: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Mean NLL of ``x`` under ``flow`` + N(0, I) and the norm of its parameter gradient."""
    flow.zero_grad(set_to_none=True)
    z, logdet = flow(x)
    nll = (0.5 * (z * z).sum(1) + 0.5 * z.shape[1] * math.log(2 * math.pi) - logdet).mean()
    nll.backward()
    grad = torch.sqrt(sum((p.grad**2).sum() for p in flow.parameters() if p.grad is not None))
    return nll.item(), grad.item()


def _normal_batch(c: int = 4, n: int = 512, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.5])[:c] + 0.3


def test_actnorm_dead_channel_in_first_batch_gets_a_bounded_scale() -> None:
    # A channel that is all zero in the first batch (a dead ReLU unit) used to get
    # log-scale -log(1e-6) = 13.8: when it later carried ~0.01 the NLL was ~2e7.
    torch.manual_seed(0)
    first = _normal_batch()
    first[:, 0] = 0.0
    first[:, 2] = 5.0  # constant but non-zero: just as dead
    flow = glow_flow(4, depth=2, hidden=8).train()
    flow(first)
    norm = flow.transforms[0]
    assert bool(norm.initialized)
    assert norm.log_scale.detach().abs().max().item() < 3.0  # within the live channels' range
    later = _normal_batch(seed=2)
    later[:, 0] = 0.01 * torch.randn(512)
    nll, grad = _gaussian_nll_and_grad_norm(flow, later)
    assert math.isfinite(nll) and nll < 50.0
    assert math.isfinite(grad) and grad < 1e3


def test_actnorm_all_dead_first_batch_is_the_identity_scale() -> None:
    norm = ActNorm(3).train()
    norm(torch.full((64, 3), 2.0))
    assert bool(norm.initialized)
    assert torch.equal(norm.log_scale.detach(), torch.zeros(3))
    torch.testing.assert_close(norm.shift.detach(), torch.full((3,), -2.0))


@pytest.mark.parametrize("rows", [0, 1])
def test_actnorm_too_few_rows_do_not_initialise(rows: int) -> None:
    # An empty batch wrote NaN into log_scale and marked the layer initialised; a single
    # pixel gave a scale of 1e6. Below min_init_rows the layer stays the identity and the
    # next batch with enough rows initialises it.
    norm = ActNorm(4).train()
    y, logdet = norm(torch.randn(rows, 4) * 3)
    assert not bool(norm.initialized)
    assert torch.equal(norm.log_scale.detach(), torch.zeros(4))
    assert y.shape == (rows, 4) and bool(torch.isfinite(logdet).all())
    later = _normal_batch()
    out, _ = norm(later)
    assert bool(norm.initialized)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    nll, grad = _gaussian_nll_and_grad_norm(norm, _normal_batch(seed=3))
    assert nll < 10.0 and grad < 10.0


def test_actnorm_initialize_refuses_too_few_rows_and_bad_minimum() -> None:
    with pytest.raises(ValueError, match="min_init_rows"):
        ActNorm(3, min_init_rows=1)
    norm = ActNorm(3, min_init_rows=10)
    with pytest.raises(ValueError, match="at least 10 rows"):
        norm.initialize(torch.randn(9, 3))
    norm.initialize(torch.randn(10, 3))
    assert bool(norm.initialized)
