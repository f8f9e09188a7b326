"""FlowDensityHead and GaussianMixturePrior against scipy / torch.distributions / nflows
oracles, gradients by gradcheck, chunking, autocast, training, and input validation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from flow_helpers import perturb_parameters
from scipy import stats
from scipy.special import logsumexp

import densessl
from densessl.density import FlowDensityHead, GaussianMixturePrior
from densessl.flows import ActNorm, FlowSequence, Permutation, glow_flow
from densessl.functional import diagonal_normal_log_prob, flatten_pixels, mixture_log_prob, mixture_posterior


def _identity_head(c: int, k: int, **kwargs) -> FlowDensityHead:
    """A head whose flow is the identity (log-det 0): log p(x) is the prior's."""
    return FlowDensityHead(c, k, transform=FlowSequence([Permutation(torch.arange(c))]), **kwargs).double()


# --- pure functions ------------------------------------------------------------------


def test_diagonal_normal_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    z = torch.randn(7, 5, dtype=torch.float64) * 3
    means = torch.randn(3, 5, dtype=torch.float64)
    log_scales = torch.randn(3, 5, dtype=torch.float64) * 0.5
    ref = torch.distributions.Normal(means[None], log_scales.exp()[None]).log_prob(z[:, None]).sum(-1)
    torch.testing.assert_close(diagonal_normal_log_prob(z, means, log_scales), ref)
    # float32 at D = 512 stays accurate despite the expanded quadratic form
    z32, m32 = torch.randn(4, 512), torch.randn(2, 512)
    ref32 = torch.distributions.Normal(m32.double()[None], 1.0).log_prob(z32.double()[:, None]).sum(-1)
    torch.testing.assert_close(
        diagonal_normal_log_prob(z32, m32, torch.zeros(2, 512)).double(), ref32, rtol=1e-5, atol=1e-2
    )


def test_mixture_functions_bad_shapes() -> None:
    with pytest.raises(ValueError, match="means"):
        diagonal_normal_log_prob(torch.zeros(2, 3), torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="log_scales"):
        diagonal_normal_log_prob(torch.zeros(2, 3), torch.zeros(1, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mixture_logits"):
        mixture_log_prob(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        mixture_log_prob(torch.zeros(2, 3), torch.zeros(3), labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        mixture_log_prob(torch.zeros(2, 3), torch.zeros(3), labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="log_probs"):
        mixture_posterior(torch.zeros(2), torch.zeros(2))


# --- hand-computed Gaussian case (identity flow, known parameters) ---------------------


def _known_head() -> tuple[FlowDensityHead, np.ndarray, np.ndarray, np.ndarray]:
    head = _identity_head(2, 3)
    means = np.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 4.0]])
    scales = np.array([[1.0, 2.0], [0.5, 1.0], [1.5, 0.7]])
    weights = np.array([0.5, 0.3, 0.2])
    with torch.no_grad():
        head.prior.means.copy_(torch.from_numpy(means))
        head.prior.log_scales.copy_(torch.from_numpy(np.log(scales)))
        head.prior.mixture_logits.copy_(torch.from_numpy(np.log(weights)) + 7.0)  # softmax-invariant shift
    return head, means, scales, weights


def test_class_conditional_marginal_and_ignore_semantics() -> None:
    head, means, scales, weights = _known_head()
    x = torch.tensor([[0.5, -0.3], [2.0, 0.0], [-1.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    features = x.T.reshape(1, 2, 2, 2)  # [B=1, C=2, H=2, W=2], pixels in row-major order
    labels = torch.tensor([[[0, 1], [255, 2]]])
    comp = np.stack(
        [stats.multivariate_normal(means[k], np.diag(scales[k] ** 2)).logpdf(x.numpy()) for k in range(3)], 1
    )
    marginal = logsumexp(comp + np.log(weights), axis=1)
    expected = np.array([comp[0, 0], comp[1, 1], marginal[2], comp[3, 2]])
    got = head.log_prob(features, labels).reshape(-1).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(head.log_prob(features).reshape(-1).detach().numpy(), marginal, rtol=1e-10)
    # posterior = Bayes by hand, sums to one
    bayes = np.exp(comp + np.log(weights) - marginal[:, None])
    post = head.posterior(features)
    assert post.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(flatten_pixels(post).detach().numpy(), bayes, rtol=1e-9)
    np.testing.assert_allclose(post.sum(1).detach().numpy(), 1.0, rtol=1e-12)
    # nll: labelled pixels joint (log pi_y + log p(x | y), so pi learns), ignored pixel
    # marginal, mask selects pixels
    joint = expected + np.log(weights)[[0, 1, 0, 2]] * np.array([1, 1, 0, 1])
    nll = head.nll(features, labels)
    assert nll.item() == pytest.approx(-joint.mean(), rel=1e-10)
    mask = torch.tensor([[[True, False], [True, False]]])
    assert head.nll(features, labels, mask=mask).item() == pytest.approx(-(joint[0] + joint[2]) / 2, rel=1e-10)
    assert head.nll(features, labels, per_dim=True).item() == pytest.approx(-joint.mean() / 2, rel=1e-10)


def test_nll_with_no_used_pixel_is_zero_with_graph() -> None:
    head = FlowDensityHead(3, 2, depth=1, hidden=4)
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = head.nll(x, mask=torch.zeros(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and all(
        p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters()
    )


def test_prior_posterior_sums_to_one_and_learnable_flags() -> None:
    prior = GaussianMixturePrior(4, 3, learn_scales=False, learn_weights=False)
    names = {n for n, _ in prior.named_parameters()}
    assert names == {"means"}
    assert "log_scales" in prior.state_dict() and "mixture_logits" in prior.state_dict()
    z = torch.randn(6, 3) * 4
    torch.testing.assert_close(prior.posterior(z).sum(1), torch.ones(6))
    # the initial means are spread out: pairwise distances well above zero
    assert torch.pdist(prior.means).min() > 0.1
    with pytest.raises(ValueError, match="z"):
        prior.log_prob(torch.randn(6, 4))


# --- nflows as an oracle and as a plug-in --------------------------------------------


def _standard_normal_head(c: int, **kwargs) -> FlowDensityHead:
    head = FlowDensityHead(c, 1, **kwargs)
    with torch.no_grad():
        head.prior.means.zero_()
        head.prior.log_scales.zero_()
    return head


def test_log_prob_is_the_change_of_variables_by_autograd_jacobian_and_scipy() -> None:
    # Independent oracle: z from the flow's forward only, log|det J| from autograd's full
    # per-pixel Jacobian (not the blocks' own log-dets), the mixture from scipy.
    torch.manual_seed(0)
    c, k = 4, 3
    head = FlowDensityHead(c, k, depth=2, hidden=8).double().eval()
    perturb_parameters(head, scale=0.2)
    features = torch.randn(2, c, 3, 3, dtype=torch.float64) * 2
    rows = flatten_pixels(features)
    z = head.transform(rows)[0].detach().numpy()
    jac_logdet = np.array(
        [
            torch.linalg.slogdet(
                torch.autograd.functional.jacobian(lambda v: head.transform(v[None])[0][0], r)
            ).logabsdet.item()
            for r in rows
        ]
    )
    means = head.prior.means.detach().numpy()
    scales = head.prior.log_scales.detach().exp().numpy()
    log_pi = torch.log_softmax(head.prior.mixture_logits.detach(), 0).numpy()
    per_class = np.stack([stats.norm(means[j], scales[j]).logpdf(z).sum(1) for j in range(k)], 1)
    expected_marginal = logsumexp(per_class + log_pi, axis=1) + jac_logdet
    np.testing.assert_allclose(
        head.log_prob(features).reshape(-1).detach().numpy(), expected_marginal, rtol=1e-9, atol=1e-9
    )
    labels = torch.randint(0, k, (2, 3, 3))
    labels[0, 0, 0] = 255
    flat = labels.reshape(-1).numpy()
    cond = np.where(
        flat == 255, expected_marginal, per_class[np.arange(flat.size), np.minimum(flat, k - 1)] + jac_logdet
    )
    np.testing.assert_allclose(head.log_prob(features, labels).reshape(-1).detach().numpy(), cond, rtol=1e-9, atol=1e-9)


def test_actual_nflows_transform_plugs_in() -> None:
    nt = pytest.importorskip("nflows.transforms")
    flows = pytest.importorskip("nflows.flows")
    dists = pytest.importorskip("nflows.distributions")
    from nflows.nn.nets import ResidualNet

    torch.manual_seed(1)
    mask = torch.tensor([1, 0, 1, 0, 1])
    transform = nt.CompositeTransform(
        [
            nt.ActNorm(5),
            nt.LULinear(5),
            nt.AffineCouplingTransform(mask, lambda i, o: ResidualNet(i, o, hidden_features=8, num_blocks=1)),
        ]
    )
    head = _standard_normal_head(5, transform=transform, chunk_size=4)
    features = torch.randn(1, 5, 3, 3) + 1
    head.train()
    head.log_prob(features)  # initialises nflows' ActNorm (on a strided subsample: chunked input)
    assert bool(transform._transforms[0].initialized)
    head.eval()
    expected = flows.Flow(transform, dists.StandardNormal([5])).log_prob(flatten_pixels(features)).reshape(1, 3, 3)
    torch.testing.assert_close(head.log_prob(features), expected, rtol=1e-5, atol=1e-5)


# --- gradients, chunking, precision ---------------------------------------------------


def test_log_prob_gradcheck_through_chunked_checkpointed_flow() -> None:
    torch.manual_seed(2)
    head = perturb_parameters(FlowDensityHead(3, 2, depth=2, hidden=4, chunk_size=3).double(), scale=0.2).eval()
    features = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 1, 255], [1, 0, 255]]])
    assert torch.autograd.gradcheck(lambda f: head.log_prob(f, labels), (features,))


def test_chunked_equals_unchunked_values_and_gradients() -> None:
    torch.manual_seed(3)
    whole = perturb_parameters(FlowDensityHead(4, 3, depth=2, hidden=8, chunk_size=None), scale=0.2)
    chunked = copy.deepcopy(whole)
    chunked.chunk_size = 5
    features = torch.randn(2, 4, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(chunked.log_prob(features), whole.log_prob(features))
        torch.testing.assert_close(chunked.posterior(features), whole.posterior(features))
    grads = []
    for head in (whole, chunked):
        x = features.clone().requires_grad_(True)
        head.zero_grad()
        loss = head.log_prob(x).sum()
        (gx,) = torch.autograd.grad(loss, x, retain_graph=True)
        loss.backward()
        grads.append((gx, [p.grad.clone() for p in head.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for g_chunk, g_whole in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_chunk, g_whole, rtol=1e-4, atol=1e-5)


def test_chunked_training_initialises_actnorm_before_checkpointing() -> None:
    head = FlowDensityHead(4, 2, depth=2, hidden=8, chunk_size=7).train()
    features = (torch.randn(2, 4, 5, 5) * 3 + 2).requires_grad_(True)
    head.nll(features).backward()
    assert all(bool(m.initialized) for m in head.modules() if isinstance(m, ActNorm))
    assert torch.isfinite(features.grad).all()
    # the first ActNorm was fitted to all 50 pixels (the init pass takes up to
    # max(chunk_size, 4096) of them, strided), not to the first chunk of 7
    z0, _ = head.transform.transforms[0](flatten_pixels(features.detach()))
    torch.testing.assert_close(z0.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z0.var(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)


def test_float32_output_and_finite_grads_under_bf16_autocast() -> None:
    torch.manual_seed(4)
    head = perturb_parameters(FlowDensityHead(6, 3, depth=2, hidden=16), scale=0.2)
    features = torch.randn(2, 6, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p = head.log_prob(features)
        z, logdet = head(features.to(torch.bfloat16))
    assert log_p.dtype == torch.float32 and z.dtype == torch.float32 and logdet.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(log_p, head.log_prob(features))  # same as without autocast
    (-log_p.mean()).backward()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_float64_features_and_head() -> None:
    head = FlowDensityHead(3, 2, depth=1, hidden=4).double()
    assert head.log_prob(torch.randn(1, 3, 2, 2, dtype=torch.float64)).dtype == torch.float64
    assert head.log_prob(torch.randn(1, 3, 2, 2)).dtype == torch.float64
    with pytest.raises(TypeError, match="features.*float64"):
        FlowDensityHead(3, 2, depth=1, hidden=4).log_prob(torch.randn(1, 3, 2, 2, dtype=torch.float64))


def test_inverse_recovers_features() -> None:
    torch.manual_seed(5)
    head = perturb_parameters(FlowDensityHead(5, 2, depth=2, hidden=8), scale=0.2).eval()
    x = torch.randn(1, 5, 3, 2)
    z, _ = head(x)
    torch.testing.assert_close(head.inverse(z), x, rtol=1e-4, atol=1e-4)


def test_training_on_two_blobs_separates_classes() -> None:
    torch.manual_seed(0)
    b, c, h, w = 4, 4, 8, 8
    labels = torch.randint(0, 2, (b, h, w))
    centres = torch.tensor([[2.0, -1.0, 0.0, 1.0], [-2.0, 1.0, 1.0, -1.0]])
    features = centres[labels].permute(0, 3, 1, 2) + 0.7 * torch.randn(b, c, h, w)
    head = FlowDensityHead(c, 2, depth=1, hidden=32)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        head.nll(features, labels).backward()
        opt.step()
    head.eval()
    test_labels = torch.randint(0, 2, (2, h, w))
    test_features = centres[test_labels].permute(0, 3, 1, 2) + 0.7 * torch.randn(2, c, h, w)
    accuracy = (head.posterior(test_features).argmax(1) == test_labels).float().mean()
    assert accuracy > 0.95


# --- validation -------------------------------------------------------------------------


def test_bad_inputs_name_the_argument() -> None:
    head = FlowDensityHead(3, 2, depth=1, hidden=4)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="features"):
        head.log_prob(torch.randn(3, 4, 4))
    with pytest.raises(TypeError, match="features"):
        head.log_prob(torch.ones(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="features.*C=3"):
        head.log_prob(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match="features.*finite"):
        head.log_prob(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="labels.*downsample_labels"):
        head.log_prob(x, torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        head.log_prob(x, torch.full((1, 4, 4), 2))
    with pytest.raises(TypeError, match="labels"):
        head.log_prob(x, torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="mask"):
        head.nll(x, mask=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        head.nll(x, mask=torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="z"):
        head.inverse(torch.randn(1, 2, 4, 4))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="channels"):
        FlowDensityHead(1, 2)
    with pytest.raises(ValueError, match="num_classes"):
        FlowDensityHead(4, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        FlowDensityHead(4, 2, chunk_size=0)
    with pytest.raises(ValueError, match="ignore_index"):
        FlowDensityHead(4, 3, ignore_index=1)
    with pytest.raises(ValueError, match="depth"):
        FlowDensityHead(4, 2, depth=0)
    with pytest.raises(ValueError, match="hidden"):
        FlowDensityHead(4, 2, hidden=0)
    with pytest.raises(ValueError, match="clamp"):
        FlowDensityHead(4, 2, clamp=-1.0)
    with pytest.raises(TypeError, match="transform"):
        FlowDensityHead(4, 2, transform=torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="mean_scale"):
        GaussianMixturePrior(2, 3, mean_scale=-1.0)


# --- review fixes ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 3, 3), (3, 3), (2, 3), (1, 3, 3)])
def test_nll_mask_of_the_wrong_shape_names_mask(shape) -> None:
    # [B, 1, H, W] used to pass check_same_spatial and be accepted silently; [H, W] with
    # B == H crashed in a broadcast without naming the argument.
    head = FlowDensityHead(4, 2, depth=1, hidden=4)
    with pytest.raises(ValueError, match="mask"):
        head.nll(
            torch.randn(2, 4, 3, 3) if shape != (3, 3) else torch.randn(3, 4, 3, 3),
            mask=torch.ones(shape, dtype=torch.bool),
        )


class _NoHostReads:
    """Make every tensor -> Python read (a device sync on GPU) raise, to pin hot paths."""

    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch

    def __enter__(self) -> None:
        def refuse(*args, **kwargs):
            raise AssertionError("host read of a tensor in a hot path")

        for name in self.names:
            self.monkeypatch.setattr(torch.Tensor, name, refuse)

    def __exit__(self, *exc) -> None:
        self.monkeypatch.undo()


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_training_step_of_the_head_reads_nothing_back_to_the_host(monkeypatch, chunk_size) -> None:
    # ActNorm used to read its `initialized` buffer and nll its used-pixel count on every
    # training call: a device sync per step on GPU.
    from densessl import value_checks

    torch.manual_seed(0)
    head = FlowDensityHead(4, 2, depth=2, hidden=8, chunk_size=chunk_size).train()
    x = torch.randn(2, 4, 5, 5)
    mask = torch.rand(2, 5, 5) > 0.3
    head.nll(x, mask=mask).backward()  # initialises ActNorm (one read is fine here)
    expected = head.nll(x, mask=mask)
    with value_checks(False), _NoHostReads(monkeypatch):
        loss = head.nll(x, mask=mask)
        loss.backward()
        head.nll(x)
    torch.testing.assert_close(loss, expected)
    # a loaded state dict is read again: an uninitialised state re-initialises
    fresh = FlowDensityHead(4, 2, depth=2, hidden=8, chunk_size=chunk_size).train()
    head.load_state_dict(fresh.state_dict())
    head.nll(x * 10 + 3)
    assert all(bool(m.initialized) for m in head.modules() if isinstance(m, ActNorm))
    z0, _ = head.transform.transforms[0](flatten_pixels(x * 10 + 3))
    torch.testing.assert_close(z0.mean(0), torch.zeros(4), atol=1e-4, rtol=0)


def test_prior_density_math_is_float32_under_autocast_and_for_half_inputs() -> None:
    # GaussianMixturePrior is public: used on its own under bf16 autocast its expanded
    # quadratic form ran in bfloat16 (errors of ~0.2 nats at D = 4, worse with D).
    torch.manual_seed(0)
    prior = GaussianMixturePrior(3, 16)
    z = torch.randn(50, 16) * 3
    labels = torch.randint(0, 3, (50,))
    expected = prior.log_prob(z, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = prior.log_prob(z, labels)
        post = prior.posterior(z)
    assert got.dtype == torch.float32 and post.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(post, prior.posterior(z))
    half = prior.log_prob(z.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, prior.log_prob(z.half().float()))


def test_infinite_constructor_numbers_are_refused() -> None:
    # mean_scale=inf gave infinite means and NaN log-densities; clamp=inf NaN log-scales.
    import math

    with pytest.raises(ValueError, match="mean_scale.*finite"):
        GaussianMixturePrior(2, 3, mean_scale=math.inf)
    with pytest.raises(ValueError, match="clamp.*finite"):
        FlowDensityHead(4, 2, clamp=math.inf)


def test_features_on_another_device_name_features():
    head = FlowDensityHead(channels=3, num_classes=2, depth=1, hidden=8)
    # No second real device on CI: a meta tensor stands in for "features on cuda, head on
    # cpu"; the check sits in the row conversion every public method goes through.
    x = torch.randn(1, 3, 2, 2, device="meta")
    with densessl.value_checks(False), pytest.raises(ValueError, match="features must be on the head's device"):
        head._rows(x)


# --- issue 6: masked ActNorm init, learnt mixture weights, precision, transforms --------


def test_masked_nll_initialises_actnorm_on_used_pixels_only() -> None:
    # Padding (masked out) used to take part in ActNorm's data-dependent initialisation.
    torch.manual_seed(0)
    head = FlowDensityHead(4, 2, depth=1, hidden=8).train()
    x = torch.randn(2, 4, 6, 6)
    mask = torch.ones(2, 6, 6, dtype=torch.bool)
    mask[:, :, 3:] = False
    padded = torch.where(mask[:, None], x, torch.full_like(x, 1e3))
    head.nll(padded, mask=mask).backward()
    norm = head.transform.transforms[0]
    used_rows = flatten_pixels(x)[mask.reshape(-1)]
    out, _ = norm(used_rows)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    loss = head.nll(torch.randn(2, 4, 6, 6))
    assert math.isfinite(loss.item()) and loss.item() < 50.0


def test_masked_nll_with_too_few_used_pixels_leaves_actnorm_uninitialised() -> None:
    head = FlowDensityHead(4, 2, depth=1, hidden=8).train()
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 0] = True
    head.nll(torch.randn(1, 4, 5, 5) * 100, mask=mask)
    assert not bool(head.transform.transforms[0].initialized)


def test_mixture_weights_learn_from_labelled_pixels_and_posterior_is_bayes() -> None:
    # Labelled pixels scored log p(z | y) without log pi_y, so pi stayed at 1/2 on 90/10 data.
    scipy_stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    n = 4000
    labels = (torch.rand(n) < 0.1).long()  # 10 % class 1
    x = torch.randn(n, 2) * 0.5 + torch.where(labels[:, None] == 1, 2.0, -2.0)
    features = x.T.reshape(1, 2, 1, n)
    head = FlowDensityHead(2, 2, depth=1, hidden=8)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        head.nll(features, labels.reshape(1, 1, n)).backward()
        opt.step()
    pi = torch.softmax(head.prior.mixture_logits.detach(), 0)
    frequency = labels.float().mean()
    torch.testing.assert_close(pi, torch.stack([1 - frequency, frequency]), atol=0.02, rtol=0)
    # posterior = Bayes' rule with the learnt pi, by scipy on the latents
    head.eval()
    probe = torch.randn(1, 2, 3, 4) * 2
    z = flatten_pixels(head(probe)[0]).double().detach().numpy()
    means = head.prior.means.detach().double().numpy()
    scales = head.prior.log_scales.detach().double().exp().numpy()
    joint = np.stack([pi[k].item() * scipy_stats.norm(means[k], scales[k]).pdf(z).prod(1) for k in range(2)], 1)
    expected = joint / joint.sum(1, keepdims=True)
    got = flatten_pixels(head.posterior(probe)).double().detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # log_prob(x, y) stays the class-conditional density: no log pi_y in it
    cond = head.log_prob(probe, torch.ones(1, 3, 4, dtype=torch.long))
    expected_cond = (
        scipy_stats.norm(means[1], scales[1]).logpdf(z).sum(1) + head(probe)[1].reshape(-1).double().detach().numpy()
    )
    np.testing.assert_allclose(cond.reshape(-1).double().detach().numpy(), expected_cond, rtol=1e-5, atol=1e-4)


def test_mixture_log_prob_joint_adds_the_mixture_weight() -> None:
    from densessl.functional import mixture_log_prob

    lp = torch.log(torch.tensor([[0.2, 0.6], [0.2, 0.6]]))
    logits = torch.log(torch.tensor([0.25, 0.75]))
    got = mixture_log_prob(lp, logits, labels=torch.tensor([1, 255]), joint=True).exp()
    torch.testing.assert_close(got, torch.tensor([0.75 * 0.6, 0.25 * 0.2 + 0.75 * 0.6]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_head_is_refused_with_a_clear_error(dtype) -> None:
    # A bf16 head computed the flow in bf16 (errors of several nats at C = 256) although
    # the docs promise float32 density math.
    head = FlowDensityHead(4, 2, depth=1, hidden=8).to(dtype)
    with pytest.raises(TypeError, match=r"head.*(bfloat16|float16).*\.float\(\)"):
        head.log_prob(torch.randn(1, 4, 2, 2))
    with pytest.raises(TypeError, match=r"transform.*(bfloat16|float16)"):
        FlowDensityHead(4, 2, transform=glow_flow(4, depth=1, hidden=8).to(dtype))
    # low-precision *features* are fine: computed in float32
    out = FlowDensityHead(4, 2, depth=1, hidden=8).log_prob(torch.randn(1, 4, 2, 2).to(dtype))
    assert out.dtype == torch.float32


def test_transform_with_builtin_flow_options_is_refused() -> None:
    with pytest.raises(ValueError, match="depth.*transform"):
        FlowDensityHead(4, 2, transform=glow_flow(4, depth=1, hidden=8), depth=3)
    with pytest.raises(ValueError, match="hidden.*transform"):
        FlowDensityHead(4, 2, transform=glow_flow(4, depth=1, hidden=8), hidden=16)
    with pytest.raises(ValueError, match="clamp.*transform"):
        FlowDensityHead(4, 2, transform=glow_flow(4, depth=1, hidden=8), clamp=1.0)


def test_transform_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"transform.*C=6"):
        FlowDensityHead(6, 2, transform=glow_flow(4, depth=1, hidden=8))


def test_transform_with_batch_statistics_is_refused() -> None:
    # nflows' BatchNorm made chunked and unchunked log-densities differ by up to 4.65 nats
    # and updated its running statistics once per chunk and recompute.
    nt = pytest.importorskip("nflows.transforms")
    with pytest.raises(ValueError, match="batch statistics"):
        FlowDensityHead(4, 2, transform=nt.CompositeTransform([nt.BatchNorm(4), nt.LULinear(4)]))

    class WithTorchBatchNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, x, context=None):
            return self.bn(x), x.new_zeros(x.shape[0])

        def inverse(self, x, context=None):
            return x, x.new_zeros(x.shape[0])

    with pytest.raises(ValueError, match="batch statistics.*bn"):
        FlowDensityHead(4, 2, transform=WithTorchBatchNorm())


@pytest.mark.parametrize("backward", [False, True])
def test_lu_weight_is_formed_once_per_call_not_per_chunk(backward) -> None:
    # W = L U was rebuilt in every chunk and every checkpoint recompute (+25-55 % FLOPs).
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    c, side = 64, 16  # 256 pixels
    features = torch.randn(1, c, side, side, requires_grad=backward)
    unchunked = FlowDensityHead(c, 2, depth=2, hidden=8, chunk_size=None).eval()
    chunked = FlowDensityHead(c, 2, depth=2, hidden=8, chunk_size=64).eval()
    chunked.load_state_dict(unchunked.state_dict())

    def flops(head) -> int:
        with FlopCounterMode(display=False) as counter:
            out = head.log_prob(features)
            if backward:
                out.sum().backward()
        return counter.get_total_flops()

    base, split = flops(unchunked), flops(chunked)
    # the only extra work chunking may add is the checkpoint recompute of each chunk's
    # forward (never another W = L U: that is 2 C^3 = 524k FLOPs per layer and chunk)
    if not backward:
        assert split == base
    else:
        with FlopCounterMode(display=False) as counter:
            unchunked.log_prob(features)
        forward = counter.get_total_flops()
        lu_product = 2 * c**3
        assert split <= base + forward - 2 * lu_product  # the recompute re-forms no W
    # small calls (fewer pixels than channels) never form W at all
    few = torch.randn(1, c, 2, 3)
    with FlopCounterMode(display=False) as counter:
        unchunked.log_prob(few)
    assert counter.get_total_flops() < 2 * 2 * c**3


def test_labelled_calls_and_perturbation_read_nothing_back_to_the_host(monkeypatch) -> None:
    # Label range checks read back to the host twice per labelled call, even with the
    # finiteness checks off; value checks now live under one switch.
    from densessl import DensityPerturbation, value_checks

    torch.manual_seed(0)
    head = FlowDensityHead(4, 3, depth=1, hidden=8).train()
    x = torch.randn(2, 4, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5))
    labels[0, 0] = 255
    mask = torch.rand(2, 5, 5) > 0.3
    head.nll(x, labels, mask=mask).backward()  # initialises ActNorm
    perturb = DensityPerturbation(head, xi=1.0)
    with value_checks(False), _NoHostReads(monkeypatch):
        head.nll(x, labels, mask=mask).backward()
        head.log_prob(x, labels)
        perturb(x)
        perturb(x, labels)
        perturb(x, mask=mask)
    # with checks on, a bad label is still caught
    with pytest.raises(ValueError, match="labels"):
        head.nll(x, torch.full((2, 5, 5), 7))


def test_zuko_transform_plugs_in_and_matches_zuko_log_prob() -> None:
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(0)
    flow = zuko.flows.MAF(features=4, transforms=2, hidden_features=(16,))
    perturb_parameters(flow, scale=0.1)
    head = _standard_normal_head(4, transform=flow.transform, chunk_size=5).eval()
    features = torch.randn(2, 4, 3, 3)
    expected = flow().log_prob(flatten_pixels(features)).reshape(2, 3, 3)
    torch.testing.assert_close(head.log_prob(features), expected, rtol=1e-5, atol=1e-5)
    # gradients reach zuko's parameters, and the inverse round-trips
    head.nll(features).backward()
    assert all(p.grad is not None for p in flow.transform.parameters())
    z, _ = head(features)
    torch.testing.assert_close(head.inverse(z), features, rtol=1e-4, atol=1e-4)
