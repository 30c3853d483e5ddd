"""Feature-distillation loss pieces (pipeline.train.feature_losses) on hand-computed values."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.feature_losses import (FeatureProjector, evenly_spaced_layers, feature_distance,
                                           feature_loss_sums, trained_rows)


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
