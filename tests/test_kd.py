"""`distill kd` on tiny offline models: tokenizer check, fused == logits path, KL goes down, top-k cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.train.kd import KDConfig, KDLoss, run
from pipeline.train.kd_cache import TopKCache, TopKCacheWriter, build_cache
from pipeline.train.tokenizer_check import TokenizerMismatch, check_vocab


def _corpus(path: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        a, b = 3 + i, 10 + 2 * i
        rows.append({"id": f"s{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}? Please reason step by step."},
            {"role": "assistant", "content": f"<think>\nFirst, {a} + {b} = {a + b}. Let me double check.\n</think>\n\n"
                                             f"The answer is \\boxed{{{a + b}}}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, **kw) -> KDConfig:
    values = {"model": str(tiny_model_dir), "teacher": str(tiny_teacher_dir),
              "data": [str(_corpus(tmp_path / "kept.jsonl"))], "output_dir": str(tmp_path / "run"),
              "max_seq_len": 256, "micro_batch_size": 2, "max_steps": 6, "lr": 3e-3, "warmup_ratio": 0.0,
              "kd_alpha": 1.0, "kd_chunk_size": 16, "progress": False, "seed": 0, **kw}
    return KDConfig.model_validate(values)


# --------------------------------------------------------------------------- tokenizer check

def test_tokenizer_check_identical_padded_and_mismatched(tiny_model_dir, tiny_teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.tiny import train_tokenizer

    s_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    t_tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    v = len(s_tok)
    res = check_vocab(t_tok, s_tok, teacher_rows=v, student_rows=v)
    assert res.vocab_size == v and res.warnings == []
    # embeddings padded to different sizes (Qwen2.5 151,936 vs 152,064): accepted, logits cut to v
    assert check_vocab(t_tok, s_tok, teacher_rows=v + 128, student_rows=v + 64).vocab_size == v
    with pytest.raises(TokenizerMismatch, match=f"student output embedding has {v - 1} rows"):
        check_vocab(t_tok, s_tok, teacher_rows=v, student_rows=v - 1)
    other = train_tokenizer(["a completely different corpus about cats and dogs " * 3, "xyz 123"], vocab_size=400)
    with pytest.raises(TokenizerMismatch) as err:
        check_vocab(other, s_tok)
    msg = str(err.value)
    assert f"sizes {len(other)} (teacher) vs {v} (student)" in msg
    assert "first differing ids: id " in msg and "only in student" in msg


# --------------------------------------------------------------------------- loss paths

def _first_batch(cfg):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from pipeline.train import data as D
    from pipeline.train.loop import load_tokenizer

    tok = load_tokenizer(cfg)
    corpus = D.build_corpus(cfg, tok, D.chat_template_for_training(tok))
    plan = D.plan_epoch(corpus, cfg, epoch=0)
    batch = D.collate(corpus, plan[0], pad_id=tok.pad_token_id, packing=cfg.packing)
    student = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    return Accelerator(cpu=True), tok, corpus, batch, student


def test_fused_loss_equals_logits_path_and_gradients(tmp_path, tiny_model_dir, tiny_teacher_dir):
    from pipeline.train.models import load_teacher

    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, kd_alpha=0.4, kd_temperature=2.0, kd_loss="jsd",
               kd_beta=0.3)
    acc, tok, corpus, batch, student = _first_batch(cfg)
    teacher, _ = load_teacher(cfg, torch.device("cpu"))
    results = []
    for fused in (True, False):
        c = cfg.model_copy(update={"kd_fused": fused})
        student.zero_grad()
        out = KDLoss(c, acc, tok, corpus, teacher=teacher)(student, batch)
        out.loss_sum.backward()
        results.append((out, student.model.embed_tokens.weight.grad.clone(), student.model.norm.weight.grad.clone()))
    (a, ga, na), (b, gb, nb) = results
    assert int(a.num_tokens) == int(b.num_tokens) == batch["num_tokens"] > 0
    assert a.loss_sum.item() == pytest.approx(b.loss_sum.item(), rel=1e-5)
    assert a.parts["kd"].item() == pytest.approx(b.parts["kd"].item(), rel=1e-5)
    assert a.parts["ce"].item() == pytest.approx(b.parts["ce"].item(), rel=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(na, nb, rtol=1e-4, atol=1e-6)
    # the identical model as its own teacher: KD part is exactly 0
    same = KDLoss(cfg, acc, tok, corpus, teacher=student.eval())(student, batch)
    assert abs(same.parts["kd"].item()) < 1e-4


# --------------------------------------------------------------------------- training

def test_kd_training_lowers_kl_and_saves(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir)
    summary = run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("kd" in r and "ce" in r for r in rows)
    assert rows[-1]["kd"] < 0.8 * rows[0]["kd"], [r["kd"] for r in rows]
    assert summary["teacher_source"] == "model" and summary["fused"] is True
    assert summary["final_kd"] == rows[-1]["kd"] and (Path(summary["model_dir"]) / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["kd_loss"] == "forward_kl"


# --------------------------------------------------------------------------- top-k cache

def test_cache_writer_is_crash_safe(tmp_path):
    root = tmp_path / "cache"
    rng = np.random.default_rng(0)

    def sample(key, n):
        return key, rng.integers(0, 50, n).astype(np.int32), rng.integers(0, 50, (n, 4)).astype(np.int32), \
            rng.normal(size=(n, 5)).astype(np.float32)

    a, b = sample("a", 3), sample("b", 5)
    (root).mkdir()
    (root / "manifest.json").write_text(json.dumps({"format": "distill-r1/kd-topk-v1", "k": 4,
                                                    "logprob_dtype": "float32", "kd_temperature": 1.0,
                                                    "vocab_size": 50}))
    with TopKCacheWriter(root, 0, 4, "float32") as w:
        w.write([a, b])
    # a kill after the bytes of "c" but before its index line, plus a torn index line
    with open(root / "topk-0.bin", "ab") as fh:
        fh.write(b"\x01" * 100)
    with open(root / "index-0.jsonl", "a") as fh:
        fh.write('{"id": "c", "part": 0, "off')
    with TopKCacheWriter(root, 0, 4, "float32") as w:
        assert w.done == {"a", "b"}
        c = sample("c", 2)
        w.write([b, c])  # b is skipped: already on disk
    cache = TopKCache(root)
    assert len(cache) == 3
    for key, _, ids, lp in (a, b, c):
        got_ids, got_lp = cache.get(key)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_allclose(got_lp, lp)


def test_cache_round_trips_and_trains(tmp_path, tiny_model_dir, tiny_teacher_dir):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    # k = whole vocabulary and fp32: the cached loss must equal the live-teacher loss exactly
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, teacher_cache=str(tmp_path / "tc"), kd_alpha=0.5,
               cache={"k": vocab, "logprob_dtype": "float32", "batch_size": 4})
    summary = build_cache(cfg)
    assert summary["complete"] and summary["cached_samples"] == 12 and summary["trained_tokens_this_run"] > 0
    assert build_cache(cfg)["samples_this_run"] == 0  # rerun: nothing left to do
    acc, tok, corpus, batch, student = _first_batch(cfg)
    cache = TopKCache(cfg.teacher_cache)
    cache.validate(corpus, cfg.kd_temperature, vocab)
    from pipeline.train.models import load_teacher

    teacher, _ = load_teacher(cfg, torch.device("cpu"))
    live = KDLoss(cfg, acc, tok, corpus, teacher=teacher)(student, batch)
    cached = KDLoss(cfg, acc, tok, corpus, cache=cache)(student, batch)
    assert cached.parts["kd"].item() == pytest.approx(live.parts["kd"].item(), rel=1e-4)
    assert int(cached.num_tokens) == int(live.num_tokens)
    with pytest.raises(ConfigError, match="re-tempered"):
        cache.validate(corpus, 2.0, vocab)

    # a real top-k (k=16, fp16) trains and the KD part goes down; the teacher is never loaded
    cfg16 = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, teacher_cache=str(tmp_path / "tc16"),
                 output_dir=str(tmp_path / "run16"), cache={"k": 16, "batch_size": 4})
    build_cache(cfg16)
    no_teacher = cfg16.model_copy(update={"teacher": "/nonexistent/teacher"})
    summary = run(no_teacher)
    assert summary["teacher_source"] == "cache" and summary["cache_k"] == 16
    assert summary["final_kd"] < 0.8 * summary["first_kd"]


def test_cli_kd_help_and_config_errors(tmp_path, capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["kd", "--help"])
    out = capsys.readouterr().out
    assert "kd_temperature" in out and "cache" in out and "teacher_cache" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: [x]\noutput_dir: o\nteacher: t\ntemperature: 2\n")
    with pytest.raises(ConfigError, match="temperature: unknown key"):
        load_config(KDConfig, bad)
    assert main(["kd", "--config", str(bad)]) == 2
    none = tmp_path / "none.yaml"
    none.write_text("model: m\ndata: [x]\noutput_dir: o\n")
    with pytest.raises(ConfigError, match="teacher_cache"):
        load_config(KDConfig, none)
