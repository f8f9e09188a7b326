"""HardAnchorContrast / ProjectionHead and their functionals, checked against a naive
float64 loop implementation written here, hand-computed cases, autograd, numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import densessl.functional._contrast as contrast_fn
from densessl import HardAnchorContrast, ProjectionHead
from densessl.functional import (
    class_means,
    hard_anchor_contrast,
    info_nce,
    sample_negatives,
    select_hard_anchors,
)

FAST = settings(max_examples=25, deadline=None)


# --------------------------------------------------------------------------- oracle
def naive_contrast(
    emb,
    labels,
    *,
    tau,
    num_anchors,
    negatives=None,
    mask=None,
    probs=None,
    ignore_index=255,
    detach_mean=True,
    chosen=None,
):
    """Loops over pixels, anchors and negatives in float64, following the written definition.

    ``negatives``: ``None`` for all other-class used pixels, or a dict mapping an anchor's
    flat pixel index to the list of its negative flat indices. ``chosen``: the anchors
    ``[(flat_index, class), ...]`` picked by the code under test; they are accepted only if
    they are a valid hardest-k choice up to float ties (a class of two pixels always ties:
    both are equally far from their mean), else the oracle's own pick is used. Returns
    ``(loss, anchors)`` with ``anchors`` the list of ``(flat_index, class)`` in class
    order, hardest first.
    """
    e = emb.double()
    b, d, h, w = e.shape
    pix = {}  # flat index -> (vector, label)
    for bi in range(b):
        for hi in range(h):
            for wi in range(w):
                lab = int(labels[bi, hi, wi])
                if lab == ignore_index or (mask is not None and not bool(mask[bi, hi, wi])):
                    continue
                v = e[bi, :, hi, wi]
                pix[(bi * h + hi) * w + wi] = (v / v.norm(), lab, (bi, hi, wi))
    classes = sorted({lab for _, lab, _ in pix.values()})
    if len(classes) < 2:
        return None, []
    means = {}
    for c in classes:
        total = sum(v for v, lab, _ in pix.values() if lab == c)
        m = total / total.norm()
        means[c] = m.detach() if detach_mean else m
    terms, anchors = [], []
    for c in classes:
        members = [i for i in sorted(pix) if pix[i][1] == c]
        if probs is None:
            score = {i: float(pix[i][0].detach() @ means[c].detach()) for i in members}
        else:
            score = {i: float(probs[pix[i][2][0], c, pix[i][2][1], pix[i][2][2]]) for i in members}
        pick = sorted(members, key=lambda i: (score[i], i))
        if num_anchors is not None:
            pick = pick[:num_anchors]
        if chosen is not None:
            theirs = [i for i, cc in chosen if cc == c]
            rest = [score[i] for i in members if i not in theirs]
            assert len(theirs) == len(pick), (c, theirs, pick)
            assert not rest or max(score[i] for i in theirs) <= min(rest) + 1e-9, (c, theirs, pick)
            pick = theirs
        for a in pick:
            anchors.append((a, c))
            va = pix[a][0]
            negs = [i for i in sorted(pix) if pix[i][1] != c] if negatives is None else negatives[a]
            pos = torch.exp((va @ means[c]) / tau)
            den = pos + sum(torch.exp((va @ pix[n][0]) / tau) for n in negs)
            terms.append(-torch.log(pos / den))
    return sum(terms) / len(terms), anchors


def random_case(seed, b=2, d=3, h=3, w=4, k=3, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < ignore_frac] = 255
    return emb, labels


# ----------------------------------------------------------------- against the oracle
@FAST
@given(
    seed=st.integers(0, 10_000),
    num_anchors=st.sampled_from([1, 2, 5, None]),
    tau=st.floats(0.1, 2.0),
    use_mask=st.booleans(),
)
def test_all_negatives_matches_naive_loop(seed, num_anchors, tau, use_mask):
    emb, labels = random_case(seed)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.8 if use_mask else None
    got, idx = hard_anchor_contrast(
        emb, labels, mask=mask, temperature=tau, num_anchors=num_anchors, num_negatives=None, return_indices=True
    )
    chosen = list(zip(idx.anchors.tolist(), idx.anchor_classes.tolist()))
    expected, anchors = naive_contrast(emb, labels, tau=tau, num_anchors=num_anchors, mask=mask, chosen=chosen)
    assert anchors == chosen
    if expected is None:
        assert got.item() == 0.0
    else:
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d,m", [(2, 2), (8, 16)])  # gather route (N > M*D) and matrix route
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_negatives_match_naive_loop_with_the_same_draws(seed, d, m):
    emb, labels = random_case(seed, d=d, h=4, w=4)
    loss, idx = hard_anchor_contrast(
        emb,
        labels,
        temperature=0.5,
        num_anchors=3,
        num_negatives=m,
        generator=torch.Generator().manual_seed(seed),
        return_indices=True,
    )
    flat = labels.reshape(-1)
    assert idx.negatives.shape == (idx.anchors.shape[0], m)
    # every negative is a used pixel of another class than its anchor
    assert bool((flat[idx.negatives] != 255).all())
    assert bool((flat[idx.negatives] != idx.anchor_classes[:, None]).all())
    negatives = {int(a): idx.negatives[i].tolist() for i, a in enumerate(idx.anchors)}
    chosen = list(zip(idx.anchors.tolist(), idx.anchor_classes.tolist()))
    expected, anchors = naive_contrast(emb, labels, tau=0.5, num_anchors=3, negatives=negatives, chosen=chosen)
    assert anchors == chosen
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    # same seed, same loss; the module gives the same as the function
    again = HardAnchorContrast(0.5, 3, m)(emb, labels, generator=torch.Generator().manual_seed(seed))
    assert again.item() == loss.item()


def test_chunked_gather_route_equals_matrix_route(monkeypatch):
    emb, labels = random_case(5, d=2, h=6, w=6)
    kw = dict(temperature=0.5, num_anchors=4, num_negatives=3)
    whole = hard_anchor_contrast(emb, labels, generator=torch.Generator().manual_seed(0), **kw)
    monkeypatch.setattr(contrast_fn, "_GATHER_CHUNK", 6)  # one anchor per chunk
    chunked = hard_anchor_contrast(emb, labels, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)


def test_probability_anchors_match_naive_loop():
    emb, labels = random_case(7, k=3)
    probs = torch.softmax(torch.randn(2, 3, 3, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    expected, anchors = naive_contrast(emb, labels, tau=0.7, num_anchors=2, probs=probs)
    for mode in ("confidence", "auto"):
        loss, idx = hard_anchor_contrast(
            emb,
            labels,
            probabilities=probs,
            temperature=0.7,
            num_anchors=2,
            num_negatives=None,
            hard_selection=mode,
            return_indices=True,
        )
        assert [(int(a), int(c)) for a, c in zip(idx.anchors, idx.anchor_classes)] == anchors
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    # "distance" ignores the probabilities for ranking
    dist, idx = hard_anchor_contrast(
        emb,
        labels,
        probabilities=probs,
        temperature=0.7,
        num_anchors=2,
        num_negatives=None,
        hard_selection="distance",
        return_indices=True,
    )
    chosen = list(zip(idx.anchors.tolist(), idx.anchor_classes.tolist()))
    torch.testing.assert_close(dist, naive_contrast(emb, labels, tau=0.7, num_anchors=2, chosen=chosen)[0])


# ------------------------------------------------------------------- anchor selection
def test_hard_anchors_are_the_k_farthest_from_the_class_mean_hand_case():
    # class 0: four pixels at angles 0, +10, -10, +40 degrees; mean direction is ~+10 deg,
    # so the farthest are 40 deg (30 off) then -10 deg (20 off). Class 1 at 180, 185 and
    # 200 deg: mean ~188.3 deg, so 200 (11.7 off) then 180 (8.3 off).
    ang = torch.tensor([0.0, 10.0, -10.0, 40.0, 180.0, 185.0, 200.0]) * math.pi / 180
    emb = torch.stack([ang.cos(), ang.sin()]).reshape(1, 2, 1, 7).double()
    labels = torch.tensor([[[0, 0, 0, 0, 1, 1, 1]]])
    _, idx = hard_anchor_contrast(emb, labels, num_anchors=2, num_negatives=None, return_indices=True)
    assert idx.anchors.tolist() == [3, 2, 6, 4]
    assert idx.anchor_classes.tolist() == [0, 0, 1, 1]


def test_hard_anchors_are_the_k_least_confident_hand_case():
    emb = torch.randn(1, 4, 1, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[[0, 0, 0, 1, 1]]])
    p0 = torch.tensor([0.9, 0.3, 0.6, 0.2, 0.4])  # prob of class 0 at each pixel
    probs = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 5)
    _, idx = hard_anchor_contrast(
        emb,
        labels,
        probabilities=probs,
        num_anchors=2,
        num_negatives=None,
        hard_selection="confidence",
        return_indices=True,
    )
    # class 0 confidences 0.9, 0.3, 0.6 -> pixels 1, 2; class 1 confidences 0.8, 0.6 -> pixel 4 then 3
    assert idx.anchors.tolist() == [1, 2, 4, 3]


@FAST
@given(n=st.integers(1, 40), k=st.integers(1, 4), num_anchors=st.integers(1, 6), seed=st.integers(0, 999))
def test_select_hard_anchors_matches_sorting_each_class(n, k, num_anchors, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (n,), generator=g).float()  # many ties: row order must break them
    labels = torch.randint(0, k, (n,), generator=g)
    index, classes = select_hard_anchors(scores, labels, num_anchors)
    expected = []
    for c in range(k):
        rows = sorted((i for i in range(n) if labels[i] == c), key=lambda i: (float(scores[i]), i))
        expected += [(i, c) for i in rows[:num_anchors]]
    assert list(zip(index.tolist(), classes.tolist())) == expected


# ------------------------------------------------------------------ negative sampling
def test_sampled_negatives_are_uniform_over_other_class_pixels():
    labels = torch.tensor([0, 1, 2, 2, 0, 1, 2, 1, 2, 2])  # class 0 at rows 0 and 4
    neg = sample_negatives(labels, torch.zeros(200, dtype=torch.long), 40, torch.Generator().manual_seed(0))
    assert bool((labels[neg] != 0).all())
    counts = np.bincount(neg.reshape(-1).numpy(), minlength=10)
    others = [i for i in range(10) if labels[i] != 0]
    assert counts[[0, 4]].sum() == 0
    p = stats.chisquare(counts[others]).pvalue  # uniform over the 8 other-class rows
    assert p > 1e-3, (counts, p)


def test_sample_negatives_rejects_a_class_with_nothing_else():
    with pytest.raises(ValueError, match="anchor_classes"):
        sample_negatives(torch.tensor([0, 0]), torch.tensor([0]), 3)


# ------------------------------------------------------------------------- gradients
def test_positive_is_detached_gradient_matches_oracle_with_fixed_mean():
    emb, labels = random_case(11, d=3, h=3, w=3)
    emb.requires_grad_(True)
    loss, idx = hard_anchor_contrast(
        emb, labels, temperature=0.5, num_anchors=2, num_negatives=None, return_indices=True
    )
    loss.backward()
    ours = emb.grad.clone()
    chosen = list(zip(idx.anchors.tolist(), idx.anchor_classes.tolist()))

    def oracle_grad(detach_mean):
        x = emb.detach().clone().requires_grad_(True)
        naive_contrast(x, labels, tau=0.5, num_anchors=2, detach_mean=detach_mean, chosen=chosen)[0].backward()
        return x.grad

    torch.testing.assert_close(ours, oracle_grad(True), rtol=1e-9, atol=1e-12)
    # the check is sensitive: a mean that carries gradient gives a different result
    assert (ours - oracle_grad(False)).abs().max() > 1e-3


def test_pixels_only_in_the_mean_get_no_gradient():
    # class 0: pixels 0, 1, 2 (pixel 1, at 20 deg, is its one anchor); class 1: pixel 3.
    # With one sampled negative per anchor, pick a draw where class 1's negative is pixel 1:
    # then pixels 0 and 2 enter the loss only through class 0's (detached) mean.
    ang = torch.tensor([0.0, 20.0, -5.0, 180.0]) * math.pi / 180
    labels = torch.tensor([[[0, 0, 0, 1]]])
    for seed in range(100):
        emb = torch.stack([ang.cos(), ang.sin()]).reshape(1, 2, 1, 4).double().requires_grad_(True)
        loss, idx = hard_anchor_contrast(
            emb,
            labels,
            num_anchors=1,
            num_negatives=1,
            return_indices=True,
            generator=torch.Generator().manual_seed(seed),
        )
        if idx.negatives[1].tolist() == [1]:
            break
    assert idx.anchors.tolist() == [1, 3] and idx.negatives.tolist() == [[3], [1]]
    loss.backward()
    assert bool((emb.grad[0, :, 0, [0, 2]] == 0).all())
    assert emb.grad[0, :, 0, 1].abs().max() > 1e-3 and emb.grad[0, :, 0, 3].abs().max() > 1e-3


# --------------------------------------------------------------------- behaviour
def clustered(seed, noise, b=2, d=8, h=8, w=8, k=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1) * 3
    emb = centres[labels].permute(0, 3, 1, 2) + noise * torch.randn(b, d, h, w, generator=g)
    return emb, labels


def test_tight_separated_clusters_give_lower_loss_than_random_features():
    emb, labels = clustered(0, noise=0.05)
    rand = torch.randn(emb.shape, generator=torch.Generator().manual_seed(1))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    tight = hard_anchor_contrast(emb, labels, num_anchors=16, num_negatives=32, generator=g())
    loose = hard_anchor_contrast(rand, labels, num_anchors=16, num_negatives=32, generator=g())
    assert tight.item() < loose.item() - 1.0
    assert loose.item() > math.log(33) * 0.8  # random features: near log(1 + M)


def test_a_few_optimizer_steps_on_free_embeddings_lower_the_loss():
    _, labels = clustered(0, noise=0.0)
    emb = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss_fn = HardAnchorContrast(temperature=0.5, num_anchors=16, num_negatives=32)
    opt = torch.optim.SGD([emb], lr=20.0)  # the mean over 48 anchors makes per-pixel grads small
    losses = []
    for step in range(20):
        loss = loss_fn(emb, labels, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("case", ["one class", "all ignored", "all masked", "empty image"])
def test_fewer_than_two_classes_is_a_zero_with_a_graph(case):
    emb = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.zeros(2, 3, 3, dtype=torch.long)
    mask = None
    if case == "all ignored":
        labels[:] = 255
    elif case == "all masked":
        labels[0, 0, 0] = 1
        mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    elif case == "empty image":
        emb = torch.randn(2, 4, 0, 3, requires_grad=True)
        labels = torch.zeros(2, 0, 3, dtype=torch.long)
    loss = HardAnchorContrast()(emb, labels, mask=mask)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert emb.grad is not None and not bool(emb.grad.isnan().any())
    assert bool((emb.grad == 0).all())


@FAST
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-6.0, 6.0))
def test_invariant_to_positive_per_pixel_rescaling(seed, log_scale):
    emb, labels = random_case(seed)
    scale = torch.exp(
        log_scale + torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    a = hard_anchor_contrast(emb, labels, num_anchors=3, num_negatives=None)
    b = hard_anchor_contrast(emb * scale, labels, num_anchors=3, num_negatives=None)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("negatives", [1, 7])
def test_loss_equals_hand_computed_value_for_orthogonal_and_opposite_classes(tau, negatives):
    # Every pixel of class c is the same unit vector e_c, so each anchor's cosine to its
    # positive (the class mean) is 1 and to every negative is cos(e_c, e_c'):
    # loss = log(1 + M exp((cos - 1) / tau)) exactly, for M negatives.
    h = w = 4
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[..., w // 2 :] = 1
    for cos in (0.0, -1.0):
        e0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        e1 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) if cos == 0.0 else -e0
        emb = torch.where(labels[:, None] == 0, e0[None, :, None, None], e1[None, :, None, None]) * 3.0
        loss = hard_anchor_contrast(
            emb,
            labels,
            temperature=tau,
            num_anchors=3,
            num_negatives=negatives,
            generator=torch.Generator().manual_seed(0),
        )
        expected = math.log1p(negatives * math.exp((cos - 1.0) / tau))
        assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_infinite_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature.*finite"):
        HardAnchorContrast(temperature=math.inf)
    with pytest.raises(ValueError, match="temperature.*finite"):
        hard_anchor_contrast(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), temperature=math.inf)


def test_mask_is_keyword_only():
    emb, labels = torch.randn(1, 4, 3, 3), torch.randint(0, 2, (1, 3, 3))
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    with pytest.raises(TypeError):
        HardAnchorContrast()(emb, labels, mask)
    with pytest.raises(TypeError):
        hard_anchor_contrast(emb, labels, mask)
    HardAnchorContrast()(emb, labels, mask=mask)


def test_temperature_behaviour():
    emb, labels = clustered(3, noise=0.05, h=4, w=4)
    losses = [
        hard_anchor_contrast(emb, labels, temperature=t, num_anchors=4, num_negatives=None).item()
        for t in (0.05, 0.2, 0.5, 2.0)
    ]
    # every positive beats every negative: a colder temperature means a lower loss
    assert losses == sorted(losses)
    # hot limit: all logits -> 0, each anchor's term -> log(1 + number of other-class pixels)
    hot, idx = hard_anchor_contrast(
        emb, labels, temperature=1e6, num_anchors=4, num_negatives=None, return_indices=True
    )
    flat = labels.reshape(-1)
    others = torch.stack([(flat != c).sum() for c in idx.anchor_classes]).double()
    assert hot.item() == pytest.approx(torch.log1p(others).mean().item(), rel=1e-5)
    # anti-clustered features (anchors closer to other classes) get worse when colder
    flip = torch.roll(labels, 1, dims=2)
    cold, warm = (
        hard_anchor_contrast(emb, flip, temperature=t, num_anchors=4, num_negatives=None).item() for t in (0.1, 1.0)
    )
    assert cold > warm


def test_ignored_and_masked_pixels_are_excluded():
    emb, labels = random_case(21, ignore_frac=0.3)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) < 0.7
    out = (labels == 255) | ~mask
    kw = dict(num_anchors=3, num_negatives=None)
    base = hard_anchor_contrast(emb, labels, mask=mask, **kw)
    # anything at excluded pixels changes nothing, labels included
    emb2 = emb.clone()
    emb2[out[:, None].expand_as(emb)] = 1e3
    labels2 = torch.where(out & (labels != 255), torch.zeros_like(labels), labels)
    torch.testing.assert_close(hard_anchor_contrast(emb2, labels2, mask=mask, **kw), base)
    # a mask is the same as ignoring those pixels
    torch.testing.assert_close(hard_anchor_contrast(emb, labels.masked_fill(~mask, 255), **kw), base)
    # and excluded pixels receive no gradient
    x = emb.clone().requires_grad_(True)
    hard_anchor_contrast(x, labels, mask=mask, **kw).backward()
    assert bool((x.grad[out[:, None].expand_as(x)] == 0).all())
    # custom ignore_index
    torch.testing.assert_close(
        hard_anchor_contrast(emb, labels.masked_fill(labels == 255, -1), mask=mask, ignore_index=-1, **kw), base
    )


def test_large_norm_embeddings_do_not_overflow():
    emb, labels = clustered(4, noise=0.5, h=4, w=4)
    kw = dict(num_anchors=4, num_negatives=None)
    ref = hard_anchor_contrast(emb, labels, **kw)
    big = hard_anchor_contrast(emb * 1e4, labels, **kw)
    assert torch.isfinite(big)
    torch.testing.assert_close(big, ref, rtol=1e-5, atol=1e-6)
    # float16 with values near its maximum: squared norms would overflow in float16
    half = (emb / emb.abs().max() * 6e4).half()
    loss = hard_anchor_contrast(half, labels, **kw)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)


def test_finite_and_float32_under_bfloat16_autocast():
    emb, labels = clustered(5, noise=0.3)
    emb = emb.float().requires_grad_(True)
    ref = hard_anchor_contrast(emb, labels, num_anchors=16, num_negatives=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = HardAnchorContrast(num_anchors=16, num_negatives=None)(emb, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)  # math ran in float32
    loss.backward()
    assert bool(torch.isfinite(emb.grad).all())
    bf = hard_anchor_contrast(emb.detach().bfloat16(), labels, num_anchors=16, num_negatives=None)
    assert bf.dtype == torch.float32 and torch.isfinite(bf)


# ---------------------------------------------------------------------- functionals
def test_info_nce_matches_direct_formula_and_survives_cold_temperature():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, 7, generator=g, dtype=torch.float64)
    direct = -torch.log(torch.exp(pos / 0.3) / (torch.exp(pos / 0.3) + torch.exp(neg / 0.3).sum(1)))
    torch.testing.assert_close(info_nce(pos, neg, 0.3), direct)
    keep = torch.rand(5, 7, generator=g) < 0.5
    direct_masked = -torch.log(torch.exp(pos / 0.3) / (torch.exp(pos / 0.3) + (torch.exp(neg / 0.3) * keep).sum(1)))
    torch.testing.assert_close(info_nce(pos, neg, 0.3, negative_mask=keep), direct_masked)
    cold = info_nce(pos.float(), neg.float(), 1e-4)  # exp(1e4) overflows any float
    assert bool(torch.isfinite(cold).all()) and bool((cold >= 0).all())


def test_class_means_match_numpy():
    g = torch.Generator().manual_seed(0)
    rows, labels = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    labels[labels == 1] = 0  # class 1 absent
    r = rows.numpy().astype(np.float64)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    expected = np.zeros((4, 4))
    for c in (0, 2):
        m = r[labels.numpy() == c].sum(0)
        expected[c] = m / np.linalg.norm(m)
    np.testing.assert_allclose(class_means(rows, labels, 4).numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "make,err,word",
    [
        (lambda e, y: (e[0], y), ValueError, "embeddings"),  # rank 3
        (lambda e, y: (e.long(), y), TypeError, "embeddings"),  # integer embeddings
        (lambda e, y: (e, y.float()), TypeError, "labels"),  # float labels
        (lambda e, y: (e, y[:, :2]), ValueError, "labels"),  # spatial mismatch
        (lambda e, y: (e, y[:1]), ValueError, "labels"),  # batch mismatch
        (lambda e, y: (e, y[0]), ValueError, "labels"),  # rank 2 labels
        (lambda e, y: (e, y.masked_fill(y == 0, -3)), ValueError, "labels"),  # negative labels
        (lambda e, y: (e.masked_fill(e > 1, float("nan")), y), ValueError, "embeddings"),
    ],
)
def test_bad_inputs_name_the_argument(make, err, word):
    emb, labels = random_case(0)
    with pytest.raises(err, match=word):
        HardAnchorContrast()(*make(emb, labels))


def test_bad_mask_and_probabilities_name_the_argument():
    emb, labels = random_case(0, k=3, ignore_frac=0.0)
    loss_fn = HardAnchorContrast(hard_selection="auto")
    with pytest.raises(TypeError, match="mask"):
        loss_fn(emb, labels, mask=torch.ones(labels.shape))
    with pytest.raises(ValueError, match="mask"):
        loss_fn(emb, labels, mask=torch.ones(2, 3, 3, dtype=torch.bool))
    probs2 = torch.full((2, 2, 3, 4), 0.5)  # K = 2 but labels reach 2
    with pytest.raises(ValueError, match="labels"):
        loss_fn(emb, labels, probabilities=probs2)
    with pytest.raises(ValueError, match="probabilities"):
        loss_fn(emb, labels, probabilities=torch.full((2, 3, 3, 4), 0.5))  # does not sum to 1
    with pytest.raises(ValueError, match="probabilities"):
        loss_fn(emb, labels, probabilities=torch.full((2, 3, 3, 3), 1 / 3))  # spatial mismatch
    with pytest.raises(ValueError, match="probabilities"):
        HardAnchorContrast(hard_selection="confidence")(emb, labels)


@pytest.mark.parametrize(
    "kwargs,err,word",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(num_anchors=0), ValueError, "num_anchors"),
        (dict(num_anchors=2.5), TypeError, "num_anchors"),
        (dict(num_negatives=0), ValueError, "num_negatives"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(hard_selection="random"), ValueError, "hard_selection"),
    ],
)
def test_bad_constructor_arguments(kwargs, err, word):
    with pytest.raises(err, match=word):
        HardAnchorContrast(**kwargs)


# ------------------------------------------------------------------- ProjectionHead
def test_projection_head_is_conv_bn_relu_conv_per_pixel():
    torch.manual_seed(0)
    head = ProjectionHead(6, hidden_channels=5, out_channels=3).double()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    head.train()
    y = head(x)
    assert y.shape == (2, 3, 4, 5)
    head.eval()  # BN with its running statistics: a per-pixel affine map, checked by matmuls
    conv1, bn, _, conv2 = head.net
    rows = x.permute(0, 2, 3, 1).reshape(-1, 6)
    hid = rows @ conv1.weight[:, :, 0, 0].T
    hid = (hid - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    out = torch.relu(hid) @ conv2.weight[:, :, 0, 0].T + conv2.bias
    torch.testing.assert_close(head(x), out.reshape(2, 4, 5, 3).permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    "kwargs,err,word",
    [
        (dict(in_channels=0), ValueError, "in_channels"),
        (dict(in_channels=4, hidden_channels=0), ValueError, "hidden_channels"),
        (dict(in_channels=4, out_channels=-1), ValueError, "out_channels"),
        (dict(in_channels=2.0), TypeError, "in_channels"),
    ],
)
def test_projection_head_bad_constructor_arguments(kwargs, err, word):
    with pytest.raises(err, match=word):
        ProjectionHead(**kwargs)


def test_projection_head_bad_inputs():
    head = ProjectionHead(4, 8, 2)
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(3, 2, 2))


def test_num_classes_bounds_labels_and_must_match_probabilities():
    emb = torch.randn(1, 4, 3, 3)
    labels = torch.tensor([[[0, 1, 2], [0, 1, 2], [0, 1, 7]]])
    with pytest.raises(ValueError, match="labels"):
        HardAnchorContrast(num_classes=3)(emb, labels)
    ok = labels.clone()
    ok[0, 2, 2] = 255
    assert torch.isfinite(HardAnchorContrast(num_classes=3)(emb, ok))
    probs = torch.full((1, 4, 3, 3), 0.25)
    with pytest.raises(ValueError, match="probabilities"):
        HardAnchorContrast(num_classes=3)(emb, ok, probabilities=probs)
    with pytest.raises(ValueError, match="num_classes"):
        HardAnchorContrast(num_classes=0)
