"""The CUDA paths of training (skipped without a GPU; run on one with ``pytest -m gpu``): torch's
FlashAttention varlen kernel equals masked SDPA on packed bf16 rows, the fused lm_head x
cross-entropy equals the plain loss in bf16 autocast, and ``auto`` picks varlen attention."""

from __future__ import annotations

import pytest
import torch

from pipeline.tiny import build_model, train_tokenizer
from pipeline.train import data as D
from pipeline.train.attention import VARLEN, choose, register_varlen

VOCAB = 256  # token ids drawn below this (the trained tokenizer has at least that many)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _packed_batch(vocab: int, B: int = 2, T: int = 512, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    spans = [[(0, 200), (200, 250), (450, 62)], [(0, 512)]]
    pos = torch.zeros(B, T, dtype=torch.long)
    for b, row in enumerate(spans):
        for s, n in row:
            pos[b, s:s + n] = torch.arange(n)
    labels = ids.clone()
    labels[:, :5] = -100
    cu, mx = D._document_bounds(spans, T)
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu, "max_seqlen": mx,
             "num_tokens": int((labels[:, 1:] != -100).sum()), "sample_spans": spans}
    return D.to_device(batch, "cuda")


def _loss_and_grads(model, batch, fused: bool):
    from pipeline.train.sft import causal_lm_loss, fused_causal_lm_loss

    class Acc:
        @staticmethod
        def unwrap_model(m):
            return m

    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fused_causal_lm_loss(model, batch, Acc(), 256) if fused else causal_lm_loss(model, batch, 256)
    (out.loss_sum / batch["num_tokens"]).backward()
    return float(out.loss_sum) / batch["num_tokens"], {k: p.grad.float().clone() for k, p in model.named_parameters()}


def _model(attn: str):
    tok = train_tokenizer(vocab_size=600)
    assert len(tok) >= VOCAB
    model = build_model(tok, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, seed=0).cuda()
    model.set_attn_implementation(attn)
    model.config.use_cache = False
    return model


def test_auto_picks_varlen_on_cuda():
    assert choose("auto", packing=True) in (VARLEN, "flash_attention_2")


def test_varlen_kernel_matches_masked_sdpa_bf16():
    register_varlen()
    batch = _packed_batch(VOCAB)
    ref_loss, ref_g = _loss_and_grads(_model("sdpa"), batch, fused=False)
    loss, g = _loss_and_grads(_model(VARLEN), dict(batch, varlen=True), fused=False)
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    for k in ref_g:
        cos = torch.nn.functional.cosine_similarity(g[k].flatten(), ref_g[k].flatten(), dim=0)
        assert cos > 0.99, k


def test_fused_loss_matches_plain_bf16():
    batch = _packed_batch(VOCAB)
    ref_loss, ref_g = _loss_and_grads(_model("sdpa"), batch, fused=False)
    loss, g = _loss_and_grads(_model("sdpa"), batch, fused=True)
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    for k in ref_g:
        cos = torch.nn.functional.cosine_similarity(g[k].flatten(), ref_g[k].flatten(), dim=0)
        assert cos > 0.99, k
