"""Tiny offline Qwen2 models: a BPE tokenizer trained with ``tokenizers`` plus random weights.

Used by the tests (no hub access here) and by the demo's teacher and students. The recipe is
the one measured in ``shared/STACK.md``: the tokenizer uses Qwen2's exact pre-tokenizer so that
``AutoTokenizer`` (which reloads it as ``Qwen2Tokenizer``) gives the same ids, and the model's
head size is 32 so vLLM's CPU attention accepts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.chat import CHATML_TEMPLATE

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "train_tokenizer", "build_model", "build_tiny_model",
           "scramble_weights"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer regex (tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _default_corpus() -> list[str]:
    base = [
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "<think>\nLet me compute this step by step.\n</think>\nThe answer is \\boxed{42}.",
        "What is 12 + 30? First add the tens, then the ones. So the result is 42.",
        "def f(x):\n    return x * 2\n```python\nprint(f(3))\n```",
        "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } \\frac \\sqrt",
        "我们来一步一步地思考这个问题。答案是四十二。",
    ]
    return base * 20


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1000):
    """Train a byte-level BPE with Qwen2's pre-tokenizer; return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) if texts is not None else _default_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(tokenizer, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int | None = None, intermediate_size: int | None = None,
                max_position_embeddings: int = 2048, seed: int = 0, vocab_size: int | None = None,
                tie_word_embeddings: bool = True):
    """A ``Qwen2ForCausalLM`` with random weights sized to ``tokenizer`` (head_dim = hidden/heads)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model


def scramble_weights(model, std: float = 0.15, seed: int = 0):
    """Redraw every weight matrix of ``model`` from N(0, std^2), in place; returns the model.

    A default-init random model repeats one token forever; at std 0.15 it writes varied text, so
    sampled rows end at different steps (what the decoder tests and benchmarks need)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model


def build_tiny_model(out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 1000,
                     **model_kwargs) -> Path:
    """Train a tokenizer, build a random Qwen2, ``save_pretrained`` both into ``out_dir``."""
    out_dir = Path(out_dir)
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(tok, **model_kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
