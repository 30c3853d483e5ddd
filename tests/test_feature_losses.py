"""Feature-distillation loss pieces (pipeline.train.feature_losses) on hand-computed values."""

from __future__ import annotations

import pytest
import torch

import math

from pipeline.train.feature_losses import (FeatureProjector, attention_kl, attention_kl_sums, attention_rows,
                                           evenly_spaced_layers, feature_distance, feature_loss_sums, group_heads,
                                           trained_rows)


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(24, 28, 4) == {7: 6, 14: 12, 21: 18, 28: 24}
    assert evenly_spaced_layers(2, 3, 4) == {2: 1, 3: 2}  # capped by the shallower model; round(1.5) = 2
    assert evenly_spaced_layers(12, 12, 1) == {12: 12}  # one pair = the final hidden states


def test_feature_distance_hand_values():
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # mse = mean over the width: (0 + 4) / 2, (9 + 16) / 2
    assert feature_distance(p, t, "mse", normalize=False).tolist() == [2.0, 12.5]
    cos = feature_distance(torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),
                           torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]), "cosine", normalize=False)
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0, 2.0]))
    # layer norm (no affine): [1, 3] -> [-1, 1]; [10, 20] -> [-1, 1]; [3, 1] -> [1, -1]
    normed = feature_distance(torch.tensor([[1.0, 3.0], [1.0, 3.0]]), torch.tensor([[10.0, 20.0], [3.0, 1.0]]), "mse")
    torch.testing.assert_close(normed, torch.tensor([0.0, 4.0]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="expected 'mse' or 'cosine'"):
        feature_distance(p, t, "l1")


def test_trained_rows_follow_the_next_label():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, 8]])
    # position t is kept when labels[t + 1] is trained
    assert trained_rows(hidden, labels).flatten().tolist() == [1.0, 2.0, 4.0, 6.0]


def _identity_projector(width: int, maps: int) -> FeatureProjector:
    proj = FeatureProjector(width, width, maps)
    with torch.no_grad():
        for m in proj.maps:
            m.weight.copy_(torch.eye(width))
    return proj


def test_feature_loss_weighted_sum_and_zero_at_match():
    s = [torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0]])]
    t = [torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0]])]
    total, sums = feature_loss_sums(s, t, _identity_projector(2, 2), [0.5, 2.0], "mse", normalize=False)
    assert [x.item() for x in sums] == [14.5, 1.0]  # 2 + 12.5; (1 + 1) / 2
    assert total.item() == pytest.approx(0.5 * 14.5 + 2.0 * 1.0)
    # projected student features equal to the teacher's: exactly zero, for both kinds
    proj = FeatureProjector(3, 2, 1, seed=3)
    x = torch.randn(5, 3)
    with torch.no_grad():
        target = proj([x])[0]
    for kind in ("mse", "cosine"):
        total, _ = feature_loss_sums([x], [target], proj, [1.0], kind)
        assert abs(total.item()) < 1e-5
    with pytest.raises(ValueError, match="2 student / 1 teacher"):
        feature_loss_sums(s, t[:1], proj, [1.0])


def test_gradients_reach_projection_and_student():
    proj = FeatureProjector(3, 4, 1, seed=0)
    x = torch.randn(6, 3, requires_grad=True)
    total, _ = feature_loss_sums([x], [torch.randn(6, 4)], proj, [1.0], "cosine")
    total.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert proj.maps[0].weight.grad is not None and proj.maps[0].weight.grad.abs().sum() > 0


def test_projector_init_is_seeded():
    a, b, c = FeatureProjector(3, 4, 2, seed=1), FeatureProjector(3, 4, 2, seed=1), FeatureProjector(3, 4, 2, seed=2)
    torch.testing.assert_close(a.maps[1].weight, b.maps[1].weight)
    assert not torch.equal(a.maps[1].weight, c.maps[1].weight)


# --------------------------------------------------------------------------- attention maps

def _maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3-token causal example, 2 heads: ``(student [1, 2, 3, 3], teacher [1, 2, 3, 3], labels [1, 3])``.
    Trained rows: t = 0 and t = 1 (labels[1], labels[2] trained); row 2 predicts nothing."""
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.25, 0.25]],
                            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])[None]
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]],
                            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.2, 0.2]]])[None]
    return student, teacher, torch.tensor([[-100, 5, 6]])


def test_attention_kl_hand_value_and_zero_at_match():
    student, teacher, labels = _maps()
    # row 0: both one-hot on key 0 -> 0; row 1: head 0 KL([.25, .75] || [.5, .5]), head 1 equal -> 0; mean of heads
    row1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    total, sums = attention_kl_sums([student], [teacher], labels, [3.0])
    assert sums[0].item() == pytest.approx(row1 / 2, rel=1e-6)
    assert total.item() == pytest.approx(3.0 * row1 / 2, rel=1e-6)
    assert attention_rows(teacher, labels).shape == (2, 2, 3)  # [trained rows, heads, keys]
    same, _ = attention_kl_sums([teacher], [teacher], labels, [1.0])
    assert same.item() == 0.0
    with pytest.raises(ValueError, match="1 student / 2 teacher attention maps"):
        attention_kl_sums([student], [teacher, teacher], labels, [1.0])


def test_attention_untrained_rows_and_masked_keys_do_not_count():
    student, teacher, labels = _maps()
    base, _ = attention_kl_sums([student], [teacher], labels, [1.0])
    # row 2 is not trained (no next label): any values there leave the loss alone
    s2, t2 = student.clone(), teacher.clone()
    s2[..., 2, :] = torch.tensor([0.9, 0.05, 0.05])
    t2[..., 2, :] = torch.tensor([0.0, 0.0, 1.0])
    assert attention_kl_sums([s2], [t2], labels, [1.0])[0].item() == base.item()
    # an untrained row by its label: labels[1] ignored drops row 0 (KL 0 here) -> same; drop row 1 -> 0
    assert attention_kl_sums([student], [teacher], torch.tensor([[-100, -100, 6]]), [1.0])[0].item() == base.item()
    assert attention_kl_sums([student], [teacher], torch.tensor([[-100, 5, -100]]), [1.0])[0].item() == 0.0
    # a masked key (teacher probability 0: future, padding, another document) adds nothing whatever the
    # student holds there, even an exact 0 (no log(0) -> inf/nan)
    s3 = student.clone()
    s3[0, 0, 1] = torch.tensor([0.4, 0.4, 0.2])  # mass on the future key 2 of row 1
    moved, _ = attention_kl_sums([s3], [teacher], labels, [1.0])
    expected = (0.25 * math.log(0.25 / 0.4) + 0.75 * math.log(0.75 / 0.4)) / 2
    assert moved.item() == pytest.approx(expected, rel=1e-6)
    s4 = student.clone()
    s4[0, 0, 1] = torch.tensor([1.0, 0.0, 0.0])  # underflowed student prob where the teacher has mass
    assert math.isfinite(attention_kl_sums([s4], [teacher], labels, [1.0])[0].item())


def test_attention_teacher_heads_grouped_by_averaging():
    gen = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(5, 4, 7, generator=gen), -1)  # 5 rows, 4 teacher heads, 7 keys
    s = torch.softmax(torch.randn(5, 2, 7, generator=gen), -1)
    manual = torch.stack([(t[:, 0] + t[:, 1]) / 2, (t[:, 2] + t[:, 3]) / 2], 1)
    torch.testing.assert_close(group_heads(t, 2), manual)
    torch.testing.assert_close(attention_kl(s, t), attention_kl(s, manual))
    by_hand = (manual * (manual.log() - s.log())).sum(-1).mean(-1)
    torch.testing.assert_close(attention_kl(s, t), by_hand)
    assert group_heads(t, 4) is t
    with pytest.raises(ValueError, match="4 teacher attention heads do not group into 3"):
        group_heads(t, 3)


def test_attention_gradients_reach_the_student():
    student, teacher, labels = _maps()
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    causal = torch.ones(3, 3).tril().bool()
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    total, _ = attention_kl_sums([probs], [teacher], labels, [1.0])
    total.backward()
    assert logits.grad is not None and logits.grad[0, :, 1].abs().sum() > 0  # the trained row 1
    assert logits.grad[0, :, 2].abs().sum() == 0  # the untrained row 2
