"""The training data path: masking, EOS, think blocks, packing, plans, collate, preflight."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipeline.records import RecordError
from pipeline.tiny import CHATML_TEMPLATE
from pipeline.train import data as D
from pipeline.train.config import TrainConfig

# DeepSeek-R1-Distill style: drops everything up to </think> from assistant turns.
STRIPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<|im_start|>assistant\n' + c + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Ends assistant turns with plain text, no special token.
NO_STOP_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def trace(i: int) -> list[dict]:
    a, b = 3 + i % 17, 11 + (7 * i) % 23
    steps = " ".join(f"Step {k}: {a} + {k} = {a + k}." for k in range(i % 9))
    return [{"role": "user", "content": f"What is {a} + {b}? Please reason step by step."},
            {"role": "assistant", "content": f"<think>\nAdd {a} and {b}. {steps}\n</think>\n\nThe answer is \\boxed{{{a + b}}}."}]


def write_corpus(path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"t{i}", "messages": trace(i)}) + "\n")


def cfg_for(tmp_path, data, **kw) -> TrainConfig:
    base = dict(model="unused", data=[str(data)], output_dir=str(tmp_path / "run"), max_seq_len=256)
    base.update(kw)
    return TrainConfig(**base)


def trained_text(tok, ids, trained) -> str:
    return tok.decode([t for t, m in zip(ids, trained) if m])


def test_mask_is_exactly_the_assistant_turns_plus_eos(tok):
    msgs = [{"role": "system", "content": "You are careful."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "<think>\n3 + 3 = 6\n</think>\n\n6."}]
    r = D.Renderer(tok, CHATML_TEMPLATE)
    ids, trained = r.render(msgs)
    assert r.stop_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    # Trained runs, in order, are exactly each assistant content + <|im_end|> (not the "\n" after it).
    runs, cur = [], []
    for t, m in zip(ids, trained):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    assert runs == [msgs[2]["content"] + "<|im_end|>", msgs[4]["content"] + "<|im_end|>"]
    # Every untrained token is template or system/user text.
    untrained = tok.decode([t for t, m in zip(ids, trained) if not m])
    assert "careful" in untrained and "3 + 3?" in untrained and "2 = 4" not in untrained
    assert trained[0] is False


def test_template_that_strips_think_falls_back_to_chatml(tok, caplog):
    import copy

    stripped = copy.deepcopy(tok)
    stripped.chat_template = STRIPPING_TEMPLATE
    with caplog.at_level("WARNING"):
        template = D.chat_template_for_training(stripped)
    assert template == CHATML_TEMPLATE and "drops <think>" in caplog.text
    msgs = trace(5)
    ids, trained = D.Renderer(stripped, template).render(msgs)
    assert "Step 3: 3 + 3" in trained_text(tok, ids, trained) or "<think>" in trained_text(tok, ids, trained)
    assert D.sample_problems(stripped, D.Renderer(stripped, template), msgs, ids, trained) == []
    # Had we trained with the stripping template, preflight would have caught the lost reasoning.
    bad = D.Renderer(stripped, STRIPPING_TEMPLATE)
    ids2, tr2 = bad.render(msgs)
    assert any("reasoning" in p for p in D.sample_problems(stripped, bad, msgs, ids2, tr2))


def test_template_without_stop_token_gets_eos_appended(tok):
    r = D.Renderer(tok, NO_STOP_TEMPLATE)
    assert r.append_eos and r.stop_ids == [tok.eos_token_id]
    msgs = trace(2)
    ids, trained = r.render(msgs)
    last = max(j for j, m in enumerate(trained) if m)
    assert ids[last] == tok.eos_token_id
    text = trained_text(tok, ids, trained)
    # the straddling " <" token is trained; blank template text may only ride along inside a merged token
    assert text.lstrip().startswith("<think>") and text.endswith("<|im_end|>")
    assert text[:-len("<|im_end|>")].strip() == msgs[1]["content"].strip()
    assert D.sample_problems(tok, r, msgs, ids, trained) == []


def test_preflight_problems_empty_mask_and_untrained_eos(tok):
    r = D.Renderer(tok, CHATML_TEMPLATE)
    msgs = trace(1)
    ids, trained = r.render(msgs)
    assert D.sample_problems(tok, r, msgs, ids, [False] * len(ids)) == ["no trained tokens (empty assistant mask)"]
    no_eos = list(trained)
    no_eos[max(j for j, m in enumerate(trained) if m)] = False
    assert any("EOS not trained" in p for p in D.sample_problems(tok, r, msgs, ids, no_eos))


def test_record_without_assistant_is_a_located_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": trace(0)}) + "\n" + json.dumps({"messages": trace(0)[:1]}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'messages'.*no assistant turn"):
        list(D.load_conversations([str(p)]))


def test_pack_bins_cover_every_sample_once_within_capacity():
    rng = random.Random(0)
    lengths = np.array([rng.randint(20, 900) for _ in range(3000)])
    bins = D.pack_bins(lengths, 1024)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert max(int(lengths[list(b)].sum()) for b in bins) <= 1024
    waste = 1 - lengths.sum() / (len(bins) * 1024)
    assert waste < 0.05, waste


def test_corpus_plans_and_collate(tmp_path, tok):
    data = tmp_path / "kept.jsonl"
    write_corpus(data, 40)
    for packing in (True, False):
        cfg = cfg_for(tmp_path, data, packing=packing, micro_batch_size=3, max_seq_len=300)
        corpus = D.build_corpus(cfg, tok, CHATML_TEMPLATE)
        assert len(corpus) == 40 and corpus.keys[0] == "t0"
        p0, p0b, p1 = D.plan_epoch(corpus, cfg, 0), D.plan_epoch(corpus, cfg, 0), D.plan_epoch(corpus, cfg, 1)
        assert p0 == p0b and p0 != p1
        seen = sorted(i for mb in p0 for row in mb for i in row)
        assert seen == list(range(40))  # every sample once per epoch
        for mb in p0[:5]:
            b = D.collate(corpus, mb, tok.pad_token_id, packing)
            assert b["num_tokens"] == int((b["labels"][:, 1:] != -100).sum()) == D.micro_batch_tokens(corpus, mb)
            assert ("attention_mask" in b) == (not packing)
            for r, spans in enumerate(b["sample_spans"]):
                for start, n in spans:
                    assert b["position_ids"][r, start] == 0 and b["position_ids"][r, start + n - 1] == n - 1
                    assert b["labels"][r, start] == -100  # never predict a sample from the previous one
        stats = D.padding_stats(corpus, p0, cfg)
        assert 0 <= stats["padding_fraction"] < 1
    # the cache is reused (same key) and a too-short max_seq_len drops samples, counted
    cfg = cfg_for(tmp_path, data, max_seq_len=110)
    small = D.build_corpus(cfg, tok, CHATML_TEMPLATE)
    assert small.dropped_too_long > 0 and len(small) + small.dropped_too_long == 40


def test_packed_loss_equals_unpacked_loss(tmp_path, tok, tiny_model_dir):
    """Same samples, packed into rows vs padded one per row: same per-token losses."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.train.sft import causal_lm_loss

    data = tmp_path / "kept.jsonl"
    write_corpus(data, 12)
    cfg = cfg_for(tmp_path, data, max_seq_len=512, micro_batch_size=12)
    corpus = D.build_corpus(cfg, tok, CHATML_TEMPLATE)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()

    def per_token(batch):
        with torch.no_grad():
            logits = model(**D.model_inputs(batch)).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        tgt = batch["labels"][:, 1:]
        out = {}
        for r, (keys, spans) in enumerate(zip(batch["sample_keys"], batch["sample_spans"])):
            for k, (s, n) in zip(keys, spans):
                t = tgt[r, s:s + n - 1]
                m = t != -100
                out[k] = lp[r, s:s + n - 1][m].gather(-1, t[m].unsqueeze(-1)).squeeze(-1)
        return out

    bins = D.pack_bins(corpus.lengths, cfg.max_seq_len)
    assert any(len(b) > 1 for b in bins)
    packed = D.collate(corpus, bins, tok.pad_token_id, packing=True)
    padded = D.collate(corpus, [(i,) for i in range(len(corpus))], tok.pad_token_id, packing=False)
    a, b = per_token(packed), per_token(padded)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    # and the stage's loss function agrees on the sums
    with torch.no_grad():
        la, lb = causal_lm_loss(model, packed), causal_lm_loss(model, padded)
    assert la.num_tokens == lb.num_tokens
    torch.testing.assert_close(la.loss_sum, lb.loss_sum, rtol=1e-4, atol=1e-3)
    # without position-id resets (plain causal attention across samples) the losses would differ
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
    assert not torch.allclose(per_token(leaky)[corpus.keys[bins[0][1]]], b[corpus.keys[bins[0][1]]], atol=1e-3)


def test_parallel_rendering_equals_serial(tmp_path, tok):
    data = tmp_path / "kept.jsonl"
    write_corpus(data, 150)
    serial = D.render_corpus(cfg_for(tmp_path, data, max_seq_len=150), tok, CHATML_TEMPLATE)
    par = D.render_corpus(cfg_for(tmp_path, data, max_seq_len=150, data_workers=2), tok, CHATML_TEMPLATE)
    assert par.keys == serial.keys and serial.dropped_too_long == par.dropped_too_long > 0
    assert np.array_equal(par.ids, serial.ids) and np.array_equal(par.trained, serial.trained)
