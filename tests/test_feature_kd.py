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
from pipeline.train.kd_cache import FeatureCache, TopKCache
from pipeline.train.models import load_teacher, hidden_states
from pipeline.tiny import build_model
from tests.test_kd import _cfg, _first_batch
from tests.test_sft import assert_same_weights, run_cli, weights

FEATURES = {"num_layers": 2, "loss": "mse", "weight": 0.5, "layer_weights": [1.0, 2.0]}



def _identity(width: int, maps: int):
    """A FeatureProjector whose maps are the identity (student features pass through unchanged)."""
    from pipeline.train.feature_losses import FeatureProjector

    projector = FeatureProjector(width, width, maps)
    with torch.no_grad():
        for m in projector.maps:
            m.weight.copy_(torch.eye(width))
    return projector

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
    out = KDLoss(cfg, acc, tok, corpus, teacher=teacher, features=FeatureTerm(cfg.features, plan, _identity(192, 2)))(
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


# --------------------------------------------------------------------------- attention maps

ATTN = {"num_layers": 2, "weight": 0.5, "attention_weight": 2.0}


@pytest.fixture(scope="module")
def gqa_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A teacher whose heads group onto the tiny student's 4: hidden 192, 8 query heads (2 kv), 3 layers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    out = tmp_path_factory.mktemp("gqa_teacher")
    tok.save_pretrained(out)
    build_model(tok, hidden_size=192, num_layers=3, num_heads=8, num_kv_heads=2, seed=2).save_pretrained(out)
    return out


def test_attention_plan_pairs_and_head_counts():
    on = FeatureKDConfig(layer_map={3: 2, 0: 0, 1: 1}, attention_weight=1.0, layer_weights=[1.0, 5.0, 2.0])
    plan = plan_features(on, (2, 128), (3, 192), heads=(4, 8))
    assert plan.attention_pairs == [(3, 2), (1, 1)] and plan.attention_weights == [1.0, 2.0]  # embeddings left out
    assert plan_features(FeatureKDConfig(num_layers=2), (2, 128), (3, 192)).attention_pairs == []  # off
    with pytest.raises(ConfigError, match="features.attention_weight: teacher has 6 attention heads, student 4"):
        plan_features(FeatureKDConfig(num_layers=2, attention_weight=1.0), (2, 128), (3, 192), heads=(4, 6))
    with pytest.raises(ConfigError, match=r"features.attention_weight: layer map \{0: 0\} has no pair of decoder"):
        plan_features(FeatureKDConfig(layer_map={0: 0}, attention_weight=1.0), (2, 128), (3, 192), heads=(4, 4))


def test_attention_term_masks_gradients_and_zero_at_match(tmp_path, tiny_model_dir, gqa_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, gqa_teacher_dir, features=ATTN, attn_implementation="eager")
    acc, tok, corpus, batch, _ = _first_batch(cfg)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation="eager")
    plan, projector = _feature_setup(cfg)
    assert plan.attention_pairs == [(2, 1), (3, 2)]
    teacher, _ = load_teacher(cfg, torch.device("cpu"), "eager")
    term = FeatureTerm(cfg.features, plan, projector)
    from pipeline.train.models import forward_states

    with torch.no_grad():
        t_maps = forward_states(teacher, batch, attentions=True).attentions
    # a packed row: the eager teacher gives other documents' keys exactly 0 (what the KL relies on)
    spans = batch["sample_spans"][0]
    assert len(spans) >= 2
    (p0, n0), (p1, n1) = spans[:2]
    assert t_maps[0][0, :, p1:p1 + n1, p0:p0 + n0].abs().max().item() == 0.0
    s_maps = forward_states(student, batch, attentions=True).attentions
    base, parts = term.attention(s_maps, t_maps, batch["labels"])
    assert set(parts) == {"attn", "attn_t2_s1", "attn_t3_s2"} and parts["attn"].item() > 0
    assert base.item() == pytest.approx(2.0 * (parts["attn_t2_s1"] + parts["attn_t3_s2"]).item(), rel=1e-5)
    # teacher rows whose next label is not trained: scrambling them leaves the loss alone
    untrained = torch.ones_like(batch["labels"], dtype=torch.bool)
    untrained[:, :-1] = batch["labels"][:, 1:] == -100
    assert untrained.any() and (~untrained).any()
    noisy = tuple(torch.where(untrained[:, None, :, None], torch.rand_like(a), a) for a in t_maps)
    assert term.attention(s_maps, noisy, batch["labels"])[0].item() == base.item()
    # gradients reach the student's attention projections in both mapped layers
    student.zero_grad()
    base.backward()
    assert all(layer.self_attn.q_proj.weight.grad.abs().sum() > 0 for layer in student.model.layers)
    # the teacher as its own student: KD, features and attention all ~0 through KDLoss
    same = plan_features(cfg.features, (3, 192), (3, 192), heads=(8, 8))
    out = KDLoss(cfg, acc, tok, corpus, teacher=teacher, features=FeatureTerm(cfg.features, same, _identity(192, 2)))(
        teacher, batch)
    assert abs(out.parts["attn"].item()) < 1e-5 and abs(out.parts["feat"].item()) < 1e-5


def test_attention_refusals(tmp_path, tiny_model_dir, tiny_teacher_dir, gqa_teacher_dir):
    from pipeline.train.kd import build_teacher_cache

    cached = _cfg(tmp_path, tiny_model_dir, gqa_teacher_dir, features=ATTN, teacher_cache=str(tmp_path / "tc"))
    for call in (run, build_teacher_cache):
        with pytest.raises(ConfigError, match="features.attention_weight: attention alignment needs the live "
                                              "teacher"):
            call(cached)
    assert not (tmp_path / "tc").exists() and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="attn_implementation: 'sdpa' returns no attention maps"):
        run(_cfg(tmp_path, tiny_model_dir, gqa_teacher_dir, features=ATTN, attn_implementation="sdpa"))
    with pytest.raises(ConfigError, match="teacher has 6 attention heads, student 4"):
        run(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, features=ATTN))


def test_attention_kd_run_logs_the_term(tmp_path, tiny_model_dir, gqa_teacher_dir):
    attn_only = {**ATTN, "weight": 0.0, "attention_weight": 100.0}  # the attention term drives the step
    summary = run(_cfg(tmp_path, tiny_model_dir, gqa_teacher_dir, features=attn_only, max_steps=4, dtype="fp32"))
    assert summary["attn_implementation"] == "eager"  # auto -> eager for the maps
    assert summary["attention_layer_map"] == {2: 1, 3: 2} and summary["attention_weight"] == 100.0
    rows = metrics(tmp_path / "run")
    assert all(r["attn"] > 0 and "attn_t2_s1" in r and "attn_t3_s2" in r for r in rows)
    assert summary["first_attn"] == rows[0]["attn"] and summary["final_attn"] == rows[-1]["attn"]
    assert summary["final_attn"] < summary["first_attn"]
    saved = json.loads((Path(summary["model_dir"]) / "config.json").read_text())
    assert "eager" not in json.dumps(saved)  # the saved student does not pin eager attention
