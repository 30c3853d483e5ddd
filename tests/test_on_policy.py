"""On-policy KD (GKD) on the tiny pair: prompts, the student's own samples, the lambda draw, training
lowers the JSD on the student's samples, and a SIGKILLed run resumes to the same weights."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.kd import run
from pipeline.train.on_policy import OnPolicyConfig, batch_prompts, is_on_policy, sequence_batch, student_samples
from tests.test_feature_kd import kill_then_resume, metrics
from tests.test_kd import _cfg, _first_batch
from tests.test_sft import assert_same_weights, weights


def test_prompts_and_sequence_batch_by_hand():
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 0, 0, 0]]),
             "labels": torch.tensor([[-100, -100, 3, 4, -100, 6, 7], [-100, 9, 10, 11, -100, -100, -100]]),
             "sample_spans": [[(0, 4), (4, 3)], [(0, 4)]]}
    assert batch_prompts(batch) == [[1, 2], [5], [8]]
    sb = sequence_batch([[1, 2], [5]], [[7, 8, 9], [4]], pad_id=0, device="cpu")
    assert sb["input_ids"].tolist() == [[1, 2, 7, 8, 9], [5, 4, 0, 0, 0]]
    assert sb["labels"].tolist() == [[-100, -100, 7, 8, 9], [-100, 4, -100, -100, -100]]
    assert sb["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert sb["num_tokens"] == 4


def test_lambda_draw_is_seeded_and_has_the_right_rate():
    keys = [[f"s{i}", f"s{i + 1}"] for i in range(2000)]
    rate = sum(is_on_policy(0, k, 0.3) for k in keys) / len(keys)
    assert 0.26 < rate < 0.34
    assert not any(is_on_policy(0, k, 0.0) for k in keys) and all(is_on_policy(0, k, 1.0) for k in keys)
    assert [is_on_policy(5, k, 0.5) for k in keys[:50]] == [is_on_policy(5, k, 0.5) for k in keys[:50]]
    # start_step: off-policy before it, the same draw from it on
    assert not any(is_on_policy(0, k, 1.0, step=9, start_step=10) for k in keys)
    assert [is_on_policy(0, k, 0.3, step=10, start_step=10) for k in keys] == [is_on_policy(0, k, 0.3) for k in keys]


def test_gkd_start_step_trains_off_policy_first(tmp_path, tiny_model_dir, tiny_teacher_dir):
    """Steps before ``start_step`` train on the data with the KD loss (kd + ce logged, no gkd); from
    ``start_step`` on, with lmbda 1, every step trains on the student's own samples."""
    run(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, output_dir=str(tmp_path / "w"), max_steps=5, dtype="fp32",
             on_policy={"lmbda": 1.0, "max_new_tokens": 8, "start_step": 3}))
    rows = metrics(tmp_path / "w")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all("kd" in r and "ce" in r and "gkd" not in r for r in rows[:3]), rows[:3]
    assert all("gkd" in r and "kd" not in r for r in rows[3:]), rows[3:]


def test_samples_are_the_students_own(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir)
    _, tok, corpus, batch, student = _first_batch(cfg)
    student.train()
    prompts = batch_prompts(batch)
    assert len(prompts) == sum(len(s) for s in batch["sample_spans"]) >= 2
    greedy = student_samples(student, prompts, OnPolicyConfig(temperature=0.0, max_new_tokens=8), corpus.stop_ids,
                             tok.pad_token_id, None)
    for p, got in zip(prompts, greedy):  # the student's own greedy continuation, one prompt at a time
        ref = student.generate(torch.tensor([p]), do_sample=False, max_new_tokens=8, eos_token_id=corpus.stop_ids,
                               pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert got == ref[:len(got)] and len(got) >= 1
    sampled = OnPolicyConfig(temperature=1.0, max_new_tokens=8)
    a = student_samples(student, prompts, sampled, corpus.stop_ids, tok.pad_token_id, torch.Generator().manual_seed(3))
    b = student_samples(student, prompts, sampled, corpus.stop_ids, tok.pad_token_id, torch.Generator().manual_seed(3))
    assert a == b and a != greedy
    assert student.training  # restored after sampling in eval mode


def test_gkd_trains_and_resumes_exactly(tmp_path, tiny_model_dir, tiny_teacher_dir):
    base = dict(on_policy={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 12}, save_every=2, dtype="fp32",
                max_steps=6, lr=3e-3)
    straight = run(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, output_dir=str(tmp_path / "a"), **base))
    rows = metrics(tmp_path / "a")
    assert all(r["on_policy"] == 1.0 and "gkd" in r and "kd" not in r for r in rows)
    gkd = [r["gkd"] for r in rows]
    assert sum(gkd[-2:]) < 0.8 * sum(gkd[:2]), gkd
    assert straight["on_policy"]["lmbda"] == 1.0
    resumed, again = kill_then_resume(_cfg(tmp_path, tiny_model_dir, tiny_teacher_dir,
                                           output_dir=str(tmp_path / "b"), **base), kill_after=3)
    assert resumed["resumed_from_step"] == 2
    assert_same_weights(weights(straight["model_dir"]), weights(resumed["model_dir"]))
    assert [r["gkd"] for r in again] == pytest.approx(gkd, rel=1e-5)


def test_demo_white_box_rows_configure_feature_and_on_policy_students(tmp_path):
    from pipeline.demo.stage import DemoConfig, _student_config

    cfg = DemoConfig.model_validate({"student": {"white_box": ["features", "on_policy"]}})
    made = {name: _student_config(cfg, "init", ["kept.jsonl"], tmp_path / "train" / name, "teacher", kind)
            for name, kind in (("kd", "logit"), ("kd_features", "features"), ("kd_on_policy", "on_policy"))}
    assert made["kd"].features is None and made["kd"].on_policy is None
    assert made["kd_features"].features.num_layers == 2 and made["kd_features"].on_policy is None
    assert made["kd_on_policy"].on_policy.lmbda == 0.5 and made["kd_on_policy"].features is None
    # GKD starts from a student that writes the format: the first half of its steps are off-policy
    assert made["kd_on_policy"].on_policy.start_step == cfg.student.train.steps // 2
    assert {c.seed for c in made.values()} == {cfg.seed} and len({c.max_steps for c in made.values()}) == 1
    reseeded = DemoConfig.model_validate({"student": {"seed": 7}})
    assert _student_config(reseeded, "init", ["k"], tmp_path / "s", None).seed == 7
    assert _student_config(cfg, "init", ["k"], tmp_path / "s", "teacher", "features", 40).max_steps == 40


def test_demo_equal_time_students_get_the_steps_that_fit_in_sft_time(tmp_path):
    """The equal wall-clock rows: each KD run's steps = steps x SFT's recorded time / its own (capped)."""
    import json

    from pipeline.demo.stage import _equal_time_label, _equal_time_runs, _Steps

    steps = _Steps(tmp_path)
    for name, secs in (("sft", 60.0), ("sft_unfiltered", 61.0), ("kd", 80.0), ("kd_features", 300.0),
                       ("kd_on_policy", 30.0)):
        (steps.dir / f"train_{name}.json").write_text(json.dumps({"hash": "h", "result": {}, "elapsed_s": secs}))
    runs = [("sft", ["d"], None, 800), ("sft_unfiltered", ["u"], None, 800), ("kd", ["d"], "logit", 800),
            ("kd_features", ["d"], "features", 800), ("kd_on_policy", ["d"], "on_policy", 800)]
    got = _equal_time_runs(runs, steps, 800)
    assert got == [("kd_equal_time", ["d"], "logit", 600), ("kd_features_equal_time", ["d"], "features", 160),
                   ("kd_on_policy_equal_time", ["d"], "on_policy", 800)]
    assert _equal_time_label("kd_features_equal_time", 160) == "student KD features (filtered, SFT's time: 160 steps)"
    assert _equal_time_label("kd_equal_time", 600) == "student KD (filtered, SFT's time: 600 steps)"

    # the report's table: one row per student, Pass@1 at equal steps and at SFT's time
    from pipeline.demo.report import _white_box_table
    from pipeline.demo.stage import DemoConfig, _white_box_rows

    for name, secs in (("kd_equal_time", 59.0), ("kd_features_equal_time", 61.0), ("kd_on_policy_equal_time", 31.0)):
        (steps.dir / f"train_{name}.json").write_text(json.dumps({"hash": "h", "result": {}, "elapsed_s": secs}))
    student = DemoConfig.model_validate({"student": {"white_box": ["features", "on_policy"], "train": {"steps": 800}}})
    rows = _white_box_rows(student.student, got, steps)
    assert [r["student"] for r in rows] == ["sft", "kd", "kd_features", "kd_on_policy"]
    assert rows[2]["equal_time_steps"] == 160 and rows[2]["train_s"] == 300.0 and "equal_time_steps" not in rows[0]
    pass1 = {r["label"]: {"pass@1": 10.0 * i} for i, r in enumerate(rows)}
    pass1[rows[2]["equal_time_label"]] = {"pass@1": 55.5}
    table = "\n".join(_white_box_table(rows, pass1))
    assert "| student KD features (filtered) | 800 | 300 | 20.0 | 160 | 61 | 55.5 |" in table
    assert "| student SFT (filtered) | 800 | 60 | 0.0 | 800 | 60 | 0.0 |" in table
    assert not _white_box_table([], pass1) and not _white_box_rows(DemoConfig().student, [], steps)


def test_sampling_under_the_varlen_training_attention_ignores_pads(tmp_path, tiny_model_dir, tiny_teacher_dir):
    """Packed GPU training loads the student with the varlen attention (no padding mask); its
    left-padded prompts must sample what SDPA samples, and the student keeps its attention after."""
    from pipeline.train.attention import VARLEN, register_varlen

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir)
    _, tok, corpus, batch, student = _first_batch(cfg)
    prompts = batch_prompts(batch)
    prompts = [prompts[0], prompts[0][-3:]]  # different lengths: the short one is left-padded
    sampled = OnPolicyConfig(temperature=1.0, max_new_tokens=24)
    want = student_samples(student, prompts, sampled, corpus.stop_ids, tok.pad_token_id,
                           torch.Generator().manual_seed(0))
    register_varlen()
    student.set_attn_implementation(VARLEN)
    assert student_samples(student, prompts, sampled, corpus.stop_ids, tok.pad_token_id,
                           torch.Generator().manual_seed(0)) == want
    assert student.config._attn_implementation == VARLEN
