"""Shared fixtures: tiny offline Qwen2 models (random weights, a tokenizer trained here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.tiny import build_model, train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if SHARED_DATA.is_dir():  # how tests (and users) point the code at the public sets: never a repo-relative search
    os.environ.setdefault("DISTILL_DATA_DIR", str(SHARED_DATA))


def _tokenizer_corpus() -> list[str]:
    texts = [
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "<think>\nFirst, 12 + 30 = 42. Let me double check: 42 - 30 = 12.\n</think>\n\nThe answer is \\boxed{42}.",
        "Solve for x: 2x + 3 = 11. Subtract 3, divide by 2, so x = 4. \\frac{1}{2} \\sqrt{3} \\pi",
        "```python\ndef f(x):\n    return x * 2\n```",
        "我们来一步一步地思考这个问题。答案是四十二。",
    ] * 10
    math_train = SHARED_DATA / "math_train_sample2000.jsonl"
    if math_train.exists():
        import json

        with open(math_train, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= 300:
                    break
                row = json.loads(line)
                texts.append(row["problem"])
                texts.append(row.get("solution", ""))
    return texts


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data folder ../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tok")
    train_tokenizer(_tokenizer_corpus(), vocab_size=1000).save_pretrained(out)
    return out


def _save_model(tmp_path_factory, tok_dir: Path, name: str, **kwargs) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = tmp_path_factory.mktemp(name)
    tok.save_pretrained(out)
    build_model(tok, **kwargs).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Student-sized: hidden 128, 4 heads (head_dim 32, vLLM-CPU compatible), 2 layers."""
    return _save_model(tmp_path_factory, tiny_tokenizer_dir, "tiny_student", hidden_size=128, num_layers=2,
                       num_heads=4, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A larger model with the same tokenizer (for kd): hidden 192, 6 heads, 3 layers."""
    return _save_model(tmp_path_factory, tiny_tokenizer_dir, "tiny_teacher", hidden_size=192, num_layers=3,
                       num_heads=6, seed=1)
