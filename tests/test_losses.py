"""Distillation losses against hand-computed values and torch references; chunked == unchunked."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.train.losses import (
    IGNORE_INDEX, KDSpec, TopK, chunked_kd_from_logits, cross_entropy_sum, forward_kl, fused_linear_kd,
    generalized_jsd, kd_divergence, naive_kd_from_logits, reverse_kl, teacher_topk, token_divergence,
)

KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_hand_computed_two_token_vocab():
    # student q = (1/2, 1/2); teacher p = (3/4, 1/4)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    lab = torch.tensor([0])
    p, q = (0.75, 0.25), (0.5, 0.5)
    assert forward_kl(s, t, lab).loss_sum.item() == pytest.approx(0.1308120, abs=1e-6)
    assert forward_kl(s, t, lab).loss_sum.item() == pytest.approx(_kl(p, q), abs=1e-6)
    assert reverse_kl(s, t, lab).loss_sum.item() == pytest.approx(_kl(q, p), abs=1e-6)
    for beta in (0.25, 0.5, 0.8):
        m = tuple(beta * a + (1 - beta) * b for a, b in zip(p, q))
        want = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
        assert generalized_jsd(s, t, lab, beta=beta).loss_sum.item() == pytest.approx(want, abs=1e-6)
    assert forward_kl(s, t, lab).num_tokens.item() == 1


def test_temperature_scales_logits_and_multiplies_by_t_squared():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T=2 the teacher is (3/4, 1/4)
    got = forward_kl(s, t, torch.tensor([1]), temperature=2.0).loss_sum.item()
    assert got == pytest.approx(4.0 * _kl((0.75, 0.25), (0.5, 0.5)), abs=1e-6)


def test_forward_kl_matches_torch_kl_div_on_trained_tokens_only():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, 50, generator=g), torch.randn(2, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (2, 7), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    temp = 1.7
    ref = F.kl_div(F.log_softmax(s[keep] / temp, -1), F.softmax(t[keep] / temp, -1), reduction="sum") * temp**2
    got = forward_kl(s, t, labels, temperature=temp)
    assert got.loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    assert got.num_tokens.item() == int(keep.sum())
    ref_rev = F.kl_div(F.log_softmax(t[keep] / temp, -1), F.softmax(s[keep] / temp, -1), reduction="sum") * temp**2
    assert reverse_kl(s, t, labels, temperature=temp).loss_sum.item() == pytest.approx(ref_rev.item(), rel=1e-5)


@pytest.mark.parametrize("kind,beta", KINDS)
def test_identical_logits_give_zero(kind, beta):
    x = torch.randn(3, 5, 40) * 4
    labels = torch.zeros(3, 5, dtype=torch.long)
    out = kd_divergence(x, x.clone(), labels, temperature=1.3, kind=kind, beta=beta)
    assert abs(out.loss_sum.item()) < 1e-5
    assert out.num_tokens.item() == 15


def test_jsd_endpoints_equal_the_kls_and_interior_is_bounded():
    s, t = torch.randn(6, 30) * 2, torch.randn(6, 30) * 2
    lab = torch.zeros(6, dtype=torch.long)
    fkl, rkl = forward_kl(s, t, lab).loss_sum, reverse_kl(s, t, lab).loss_sum
    assert generalized_jsd(s, t, lab, beta=0.0).loss_sum.item() == pytest.approx(fkl.item(), rel=1e-6)
    assert generalized_jsd(s, t, lab, beta=1.0).loss_sum.item() == pytest.approx(rkl.item(), rel=1e-6)
    mid = generalized_jsd(s, t, lab, beta=0.5).loss_sum.item()
    swapped = generalized_jsd(t, s, lab, beta=0.5).loss_sum.item()
    assert mid == pytest.approx(swapped, rel=1e-5)  # JSD(1/2) is symmetric
    assert 0 < mid <= 6 * math.log(2) + 1e-6  # and at most log 2 per token
    with pytest.raises(ValueError, match="kd_beta"):
        generalized_jsd(s, t, lab, beta=1.5)


def test_fully_masked_gives_zero_and_zero_tokens():
    s, t = torch.randn(2, 4, 20, requires_grad=True), torch.randn(2, 4, 20)
    labels = torch.full((2, 4), IGNORE_INDEX)
    for kind, beta in KINDS:
        out = kd_divergence(s, t, labels, kind=kind, beta=beta)
        assert out.loss_sum.item() == 0.0 and out.num_tokens.item() == 0
    ce = cross_entropy_sum(s, labels)
    assert ce.loss_sum.item() == 0.0 and ce.num_tokens.item() == 0
    # the fused path with no trained rows: zero, and backward still reaches the weight (DDP needs a grad)
    w = torch.randn(20, 8, requires_grad=True)
    h = torch.randn(0, 8, requires_grad=True)
    res = fused_linear_kd(h, w, torch.zeros(0, dtype=torch.long), lambda a, b: torch.zeros(b - a, 20), KDSpec())
    res.loss_sum.backward()
    assert res.num_tokens.item() == 0 and w.grad is not None and torch.count_nonzero(w.grad) == 0


def test_teacher_wider_than_student_is_cut_to_the_student_vocab():
    s = torch.randn(4, 30)
    t = torch.randn(4, 30)
    padded = torch.cat([t, torch.full((4, 8), 5.0)], dim=-1)  # padded rows the tokenizer never uses
    lab = torch.zeros(4, dtype=torch.long)
    assert forward_kl(s, padded, lab).loss_sum.item() == pytest.approx(forward_kl(s, t, lab).loss_sum.item())


def _problem(n=37, h=16, v=61, seed=0, masked=(0, 1, 2, 20)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.5
    teacher_logits = torch.randn(n, v + 3, generator=g) * 2  # teacher padded by 3 rows
    labels = torch.randint(0, v, (n,), generator=g)
    labels[list(masked)] = IGNORE_INDEX
    return hidden, weight, teacher_logits, labels


def _naive(hidden, weight, teacher_logits, labels, spec, bias=None):
    logits = F.linear(hidden, weight, bias)
    return naive_kd_from_logits(logits, teacher_logits, labels, spec)


def _fused(hidden, weight, teacher_logits, labels, spec, bias=None):
    keep = labels != IGNORE_INDEX
    t_rows = teacher_logits[keep]
    return fused_linear_kd(hidden[keep], weight, labels[keep], lambda a, b: t_rows[a:b], spec, bias=bias)


@pytest.mark.parametrize("kind,beta", KINDS)
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_fused_equals_naive_value_and_gradients(kind, beta, chunk):
    hidden, weight, teacher_logits, labels = _problem()
    bias = torch.randn(weight.shape[0]) * 0.1
    spec = KDSpec(kind=kind, beta=beta, temperature=1.5, alpha=0.3, chunk_size=chunk)
    grads = []
    for fn in (_naive, _fused):
        h, w, b = (x.clone().requires_grad_(True) for x in (hidden, weight, bias))
        out = fn(h, w, teacher_logits, labels, spec, bias=b)
        (out.loss_sum * 0.37).backward()  # a non-unit upstream grad must scale the stored grads
        grads.append((out, h.grad, w.grad, b.grad))
    (ref, *ref_g), (got, *got_g) = grads
    assert got.num_tokens.item() == ref.num_tokens.item() == 33
    for a, b in [(got.loss_sum, ref.loss_sum), (got.kd_sum, ref.kd_sum), (got.ce_sum, ref.ce_sum)]:
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-5)
    assert ref.loss_sum.item() == pytest.approx(0.3 * ref.kd_sum.item() + 0.7 * ref.ce_sum.item(), rel=1e-6)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,beta", KINDS[:3])
def test_chunked_from_logits_equals_naive_value_and_gradients(kind, beta):
    hidden, weight, teacher_logits, labels = _problem(seed=3)
    spec = KDSpec(kind=kind, beta=beta, temperature=2.0, alpha=0.6, chunk_size=4)
    logits = F.linear(hidden, weight)
    keep = labels != IGNORE_INDEX
    a = logits.clone().requires_grad_(True)
    ref = naive_kd_from_logits(a, teacher_logits, labels, spec)
    ref.loss_sum.backward()
    b = logits.clone().requires_grad_(True)
    rows = b[keep]
    t_rows = teacher_logits[keep]
    got = chunked_kd_from_logits(rows, lambda s, e: t_rows[s:e], labels[keep], spec)
    got.loss_sum.backward()
    assert got.loss_sum.item() == pytest.approx(ref.loss_sum.item(), rel=1e-5)
    assert got.kd_sum.item() == pytest.approx(ref.kd_sum.item(), rel=1e-5)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_fused_without_weight_grad_frozen_lm_head():
    hidden, weight, teacher_logits, labels = _problem(seed=5)
    spec = KDSpec(chunk_size=7)
    h = hidden.clone().requires_grad_(True)
    out = _fused(h, weight, teacher_logits, labels, spec)  # weight does not require grad (LoRA)
    out.loss_sum.backward()
    h2 = hidden.clone().requires_grad_(True)
    _naive(h2, weight, teacher_logits, labels, spec).loss_sum.backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), v=st.integers(2, 40), chunk=st.integers(1, 9), temp=st.floats(0.5, 3.0),
       kind=st.sampled_from(["forward_kl", "reverse_kl", "jsd"]), seed=st.integers(0, 10_000))
def test_fused_equals_naive_property(n, v, chunk, temp, kind, seed):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(n, 8, generator=g), torch.randn(v, 8, generator=g)
    teacher_logits = torch.randn(n, v, generator=g) * 3
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = IGNORE_INDEX
    spec = KDSpec(kind=kind, beta=0.5, temperature=temp, alpha=0.5, chunk_size=chunk)
    ref = _naive(hidden, weight, teacher_logits, labels, spec)
    got = _fused(hidden, weight, teacher_logits, labels, spec)
    assert got.loss_sum.item() == pytest.approx(ref.loss_sum.item(), rel=1e-4, abs=1e-5)
    assert got.num_tokens.item() == ref.num_tokens.item()


def test_topk_rest_bucket_is_the_exact_tail_mass():
    t = torch.randn(5, 50) * 2
    top = teacher_topk(t, k=8, temperature=1.0)
    p = F.softmax(t, -1)
    want_rest = torch.log(1 - p.gather(-1, top.ids).sum(-1))
    torch.testing.assert_close(top.logprobs[:, -1], want_rest, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(top.logprobs.exp().sum(-1), torch.ones(5), rtol=1e-5, atol=1e-6)
    assert top.ids.shape == (5, 8) and top.logprobs.shape == (5, 9)


def test_topk_kd_with_full_k_equals_full_kd_and_smaller_k_lower_bounds_it():
    hidden, weight, teacher_logits, labels = _problem(seed=7)
    keep = labels != IGNORE_INDEX
    v = weight.shape[0]
    t_rows = teacher_logits[keep][:, :v]
    spec = KDSpec(kind="forward_kl", temperature=1.3, alpha=1.0, chunk_size=6)
    full = _fused(hidden, weight, teacher_logits[:, :v], labels, spec).kd_sum.item()
    prev = None
    for k in (v, 20, 5, 1):
        top = teacher_topk(t_rows, k, spec.temperature)
        got = fused_linear_kd(hidden[keep], weight, labels[keep], lambda a, b, top=top: TopK(top.ids[a:b], top.logprobs[a:b]),
                              spec).kd_sum.item()
        if k == v:
            assert got == pytest.approx(full, rel=1e-5)
        # coarser buckets can only lose information (data-processing inequality)
        assert got <= (prev if prev is not None else full) + 1e-5
        prev = got


def test_token_divergence_rejects_unknown_kind_and_bad_spec():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="unknown kd_loss"):
        token_divergence(x, x, "l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kd_alpha"):
        fused_linear_kd(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(1, dtype=torch.long),
                        lambda a, b: torch.zeros(1, 3), KDSpec(alpha=1.5))
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(x, x, torch.zeros(1, dtype=torch.long), temperature=0.0)


@pytest.mark.parametrize("temp,alpha", [(1.0, 0.3), (1.0, 1.0), (0.7, 1.0), (2.5, 0.0)])
def test_closed_form_forward_kl_gradient_matches_autograd(temp, alpha):
    """The fused forward-KL path uses hand-written gradients; check every T/alpha branch."""
    hidden, weight, teacher_logits, labels = _problem(seed=11)
    spec = KDSpec(kind="forward_kl", temperature=temp, alpha=alpha, chunk_size=8)
    grads = []
    for fn in (_naive, _fused):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = fn(h, w, teacher_logits, labels, spec)
        out.loss_sum.backward()
        grads.append((out.loss_sum.item(), out.kd_sum.item(), out.ce_sum.item(), h.grad, w.grad))
    (l0, k0, c0, h0, w0), (l1, k1, c1, h1, w1) = grads
    assert (l1, k1, c1) == pytest.approx((l0, k0, c0), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(h1, h0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1, w0, rtol=1e-4, atol=1e-6)
