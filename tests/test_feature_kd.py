"""`distill kd` with `features:` on the tiny pair: live == cached, masks, gradients, training, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ConfigError
from pipeline.train.feature_kd import FeatureKDConfig, FeatureTerm, plan_features
from pipeline.train.kd import KDLoss, _feature_setup, run
from pipeline.train.kd_cache import FeatureCache, TopKCache, build_cache
from pipeline.train.models import load_teacher, hidden_states
from tests.test_kd import _cfg, _first_batch
from tests.test_sft import assert_same_weights, run_cli, weights

FEATURES = {"num_layers": 2, "loss": "mse", "weight": 0.5, "layer_weights": [1.0, 2.0]}


def test_plan_defaults_and_errors():
    f = FeatureKDConfig(num_layers=2)
    plan = plan_features(f, (2, 128), (3, 192))  # the tiny pair: student 2 layers x 128, teacher 3 x 192
    assert (plan.teacher_layers, plan.student_layers, plan.weights) == ([2, 3], [1, 2], [1.0, 1.0])
    assert plan_features(FeatureKDConfig(layer_map={3: 2, 0: 0}), (2, 128), (3, 192)).teacher_layers == [3, 0]
    with pytest.raises(ConfigError, match=r"features.layer_map: 4: 2 is out of range \(teacher layers 0..3"):
        plan_features(FeatureKDConfig(layer_map={4: 2}), (2, 128), (3, 192))
    with pytest.raises(ConfigError, match="features.layer_weights: 1 weights for 2 mapped layers"):
        plan_features(FeatureKDConfig(num_layers=2, layer_weights=[1.0]), (2, 128), (3, 192))


def _term_inputs(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, features=FEATURES)
    acc, tok, corpus, batch, student = _first_batch(cfg)
    plan, projector = _feature_setup(cfg)
    teacher, _ = load_teacher(cfg, torch.device("cpu"))
    return cfg, acc, tok, corpus, batch, student, plan, projector, teacher


def test_masks_respected_and_gradients_reach_projection_and_student(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg, acc, tok, corpus, batch, student, plan, projector, teacher = _term_inputs(tmp_path, tiny_model_dir,
                                                                                  tiny_teacher_dir)
    term = FeatureTerm(cfg.features, plan, projector)
    with torch.no_grad():
        t_states = hidden_states(teacher, batch, layers=True)
        s_states = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           output_hidden_states=True).hidden_states
    base, parts = term(term.student_rows(s_states, batch["labels"]), term.teacher_rows(batch, t_states))
    assert base.item() > 0 and set(parts) == {"feat", "feat_t2_s1", "feat_t3_s2"}
    assert base.item() == pytest.approx(0.5 * (parts["feat_t2_s1"] + 2.0 * parts["feat_t3_s2"]).item(), rel=1e-6)
    # teacher features scrambled where the NEXT label is not trained: the loss does not move
    untrained = torch.zeros_like(batch["labels"], dtype=torch.bool)
    untrained[:, :-1] = batch["labels"][:, 1:] == -100
    untrained[:, -1] = True
    assert untrained.any() and (~untrained).any()
    noisy = tuple(torch.where(untrained[..., None], torch.randn_like(h) * 100, h) for h in t_states)
    same, _ = term(term.student_rows(s_states, batch["labels"]), term.teacher_rows(batch, noisy))
    assert same.item() == base.item()
    trained_noise = tuple(torch.where(untrained[..., None], h, h + torch.randn_like(h)) for h in t_states)
    moved, _ = term(term.student_rows(s_states, batch["labels"]), term.teacher_rows(batch, trained_noise))
    assert moved.item() != base.item()
    # through KDLoss with only the feature term weighted: grads reach the projection and the student
    only_feat = cfg.model_copy(update={"kd_alpha": 0.0})
    out = KDLoss(only_feat, acc, tok, corpus, teacher=teacher, features=term)(student, batch)
    student.zero_grad()
    out.loss_sum.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in projector.maps)
    assert student.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    assert out.parts["feat"].item() > 0 and "kd" in out.parts


def test_zero_when_the_student_is_the_teacher(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, features={"layer_map": {1: 1, 3: 3}})
    acc, tok, corpus, batch, _ = _first_batch(cfg)
    teacher, _ = load_teacher(cfg, torch.device("cpu"))
    plan = plan_features(cfg.features, (3, 192), (3, 192))
    from pipeline.train.feature_losses import FeatureProjector

    projector = FeatureProjector(192, 192, 2)
    with torch.no_grad():
        for m in projector.maps:
            m.weight.copy_(torch.eye(192))
    out = KDLoss(cfg, acc, tok, corpus, teacher=teacher, features=FeatureTerm(cfg.features, plan, projector))(
        teacher, batch)
    assert abs(out.parts["feat"].item()) < 1e-6 and abs(out.parts["kd"].item()) < 1e-4


def test_live_equals_cached_and_cache_is_bounded(tmp_path, tiny_model_dir, tiny_teacher_dir):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    feats = {**FEATURES, "cache_dtype": "float32"}
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, teacher_cache=str(tmp_path / "tc"), features=feats,
               cache={"k": vocab, "logprob_dtype": "float32", "batch_size": 4})
    from pipeline.train.kd import build_teacher_cache

    summary = build_teacher_cache(cfg)
    assert summary["complete"] and summary["feature_layers"] == [2, 3]
    acc, tok, corpus, batch, student = _first_batch(cfg)
    plan, projector = _feature_setup(cfg)  # from the cache's manifest: no teacher config read
    fcache = FeatureCache(cfg.teacher_cache)
    fcache.store.check_corpus(corpus, "features")
    teacher, _ = load_teacher(cfg, torch.device("cpu"))
    live = KDLoss(cfg, acc, tok, corpus, teacher=teacher, features=FeatureTerm(cfg.features, plan, projector))(
        student, batch)
    cached = KDLoss(cfg, acc, tok, corpus, cache=TopKCache(cfg.teacher_cache),
                    features=FeatureTerm(cfg.features, plan, projector, fcache))(student, batch)
    assert cached.parts["feat"].item() == pytest.approx(live.parts["feat"].item(), rel=1e-5)
    assert cached.loss_sum.item() == pytest.approx(live.loss_sum.item(), rel=1e-4)
    # another layer map than the cache holds is refused; so is a cache over its size bound
    other = cfg.model_copy(update={"features": FeatureKDConfig(layer_map={1: 1})})
    with pytest.raises(ConfigError, match=r"cache holds teacher layers \[2, 3\]"):
        _feature_setup(other)
    tiny_bound = cfg.model_copy(update={"teacher_cache": str(tmp_path / "tc2"),
                                        "features": FeatureKDConfig(**{**feats, "cache_max_gb": 1e-6})})
    with pytest.raises(ConfigError, match="features.cache_max_gb: caching 2 teacher layers x 192 wide"):
        build_teacher_cache(tiny_bound)


def test_feature_kd_trains_resumes_exactly_and_saves_no_projection(tmp_path, tiny_model_dir, tiny_teacher_dir):
    base = dict(features=FEATURES, save_every=2, dtype="fp32")
    straight = run(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, output_dir=str(tmp_path / "a"), **base))
    assert straight["final_feat"] < 0.8 * straight["first_feat"]
    assert straight["feature_layer_map"] == {2: 1, 3: 2} and straight["projection_params"] == 2 * 128 * 192
    saved = weights(straight["model_dir"])
    assert set(saved) == set(weights(tiny_model_dir))  # no projection in the student
    resumed, rows = kill_then_resume(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, output_dir=str(tmp_path / "b"),
                                          **base), kill_after=5)
    assert resumed["resumed_from_step"] == 4
    assert_same_weights(saved, weights(resumed["model_dir"]))
    assert [r["feat"] for r in rows] == pytest.approx([r["feat"] for r in metrics(tmp_path / "a")], rel=1e-5)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def kill_then_resume(cfg, kill_after: int) -> tuple[dict, list[dict]]:
    """``distill kd`` in a subprocess SIGKILLed after step ``kill_after``, then resumed here: the
    resumed run's summary and its whole metrics log."""
    yml = Path(cfg.output_dir).with_suffix(".yaml")
    yml.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    p = run_cli(["kd", "--config", str(yml)], {"DISTILL_TEST_KILL": f"step:{kill_after}"})
    assert p.returncode == -9, p.stderr[-2000:]
    return run(cfg.model_copy(update={"resume": True})), metrics(cfg.output_dir)
