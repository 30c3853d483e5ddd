"""The demo's teacher: a tiny Qwen2 trained by the project's own ``sft`` stage on programmed traces, cached.

Rules
-----
* The tokenizer is a small byte-level BPE (:func:`pipeline.tiny.train_tokenizer`) trained on the
  demo world's own text, so digits, the R1 template and every fault's wording are cheap tokens;
  teacher and students share it (KD needs one vocabulary).
* The teacher starts from random weights (:func:`pipeline.tiny.build_model`) and is trained with
  :func:`pipeline.train.sft.run`, the same code path ``distill sft`` runs, on
  :func:`pipeline.demo.world.teacher_corpus` (with its controlled share of faulty traces).
* The result is cached under ``<cache>/teacher-<key>`` where ``<cache>`` is ``cache_dir`` from the
  config, else ``$DISTILL_CACHE/demo``, else ``~/.cache/distill-r1/demo``, and ``<key>`` hashes
  everything that determines the teacher (world, tokenizer, model size, training settings, and
  :data:`RECIPE_VERSION`). A ``teacher.json`` written last marks a complete entry; a killed
  training resumes from its last checkpoint; an ``flock`` keeps two demo runs from training the
  same entry at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.records import write_json_atomic, write_text_atomic

__all__ = ["RECIPE_VERSION", "cache_root", "teacher_key", "init_model_dir", "ensure_teacher"]

log = logging.getLogger(__name__)
RECIPE_VERSION = 4  # bump when world.py's trace program or this recipe changes what a teacher learns


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$DISTILL_CACHE/demo``, else ``~/.cache/distill-r1/demo``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DISTILL_CACHE")
    if env:
        return Path(env).expanduser() / "demo"
    return Path.home() / ".cache" / "distill-r1" / "demo"


def teacher_key(parts: dict[str, Any]) -> str:
    """A short stable hash of everything that determines the teacher."""
    blob = json.dumps({"recipe": RECIPE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def init_model_dir(tokenizer_dir: str | Path, out_dir: str | Path, *, hidden_size: int, num_layers: int,
                   num_heads: int, intermediate_size: int | None, max_position_embeddings: int, seed: int) -> Path:
    """Save a random-weight Qwen2 with the tokenizer of ``tokenizer_dir`` into ``out_dir`` (idempotent)."""
    from transformers import AutoTokenizer

    from pipeline.tiny import build_model

    out = Path(out_dir)
    marker = out / "init.json"
    spec = {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
            "intermediate_size": intermediate_size, "max_position_embeddings": max_position_embeddings, "seed": seed,
            "tokenizer": str(tokenizer_dir)}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = build_model(tok, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    write_json_atomic(marker, spec)
    return out


def ensure_teacher(cfg: Any, train_problems: list) -> dict[str, Any]:
    """Return the cached teacher's record (``model_dir``, ``tokenizer_dir``, ``key``, ...), training it if absent.

    ``cfg`` is the demo config (``pipeline.demo.stage.DemoConfig``).
    """
    from pipeline.demo.world import teacher_corpus, tokenizer_texts

    # what determines the teacher: not the generation prompts nor the leak (they come after its problems)
    world = cfg.world.model_dump(exclude={"n_prompts", "leak_test_prompts"})
    parts = {"world": world, "vocab_size": cfg.vocab_size, "teacher": cfg.teacher.model_dump(), "seed": cfg.seed,
             "max_position_embeddings": cfg.max_position_embeddings}
    key = teacher_key(parts)
    root = cache_root(cfg.cache_dir) / f"teacher-{key}"
    done = root / "teacher.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if Path(info["model_dir"]).is_dir():
            log.info("demo: teacher from cache %s", root)
            return {**info, "cached": True}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second demo run waits here, then finds teacher.json
        if done.is_file():
            return {**json.loads(done.read_text()), "cached": True}
        return {**_train_teacher(cfg, root, key, parts, train_problems, teacher_corpus, tokenizer_texts),
                "cached": False}


def _train_teacher(cfg, root: Path, key: str, parts: dict, train_problems: list, teacher_corpus,
                   tokenizer_texts) -> dict[str, Any]:
    from pipeline.tiny import train_tokenizer
    from pipeline.train.sft import SFTConfig, run as sft_run

    t0 = time.perf_counter()
    tc = cfg.teacher
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        # The tokenizer sees prompts and traces of the teacher's training problems only (never the test split).
        train_tokenizer(tokenizer_texts(train_problems), vocab_size=cfg.vocab_size).save_pretrained(tok_dir)
    corpus = teacher_corpus(train_problems, cfg.world.fault_rate, seed=cfg.seed)
    data = root / "corpus.jsonl"
    if not data.is_file():
        write_text_atomic(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus))
    init = init_model_dir(tok_dir, root / "init", hidden_size=tc.hidden_size, num_layers=tc.num_layers,
                          num_heads=tc.num_heads, intermediate_size=tc.intermediate_size,
                          max_position_embeddings=cfg.max_position_embeddings, seed=cfg.seed)
    log.info("demo: training the teacher (%d traces, %d faulty) into %s", len(corpus),
             sum(1 for r in corpus if r["meta"]["fault"]), root)
    summary = sft_run(SFTConfig(
        model=str(init), data=[str(data)], output_dir=str(root / "train"), max_seq_len=tc.train.max_seq_len,
        packing=tc.train.packing, micro_batch_size=tc.train.micro_batch_size, grad_accum=1, max_steps=tc.train.steps,
        lr=tc.train.lr, warmup_ratio=tc.train.warmup_ratio, min_lr_ratio=0.05, adam_betas=(0.9, 0.98),
        dtype="fp32", seed=cfg.seed, save_every=max(50, tc.train.steps // 4), keep_checkpoints=1, resume=True,
        log_every=10, progress=cfg.progress))
    info = {"key": key, "model_dir": summary["model_dir"], "tokenizer_dir": str(tok_dir), "corpus": str(data),
            "traces": len(corpus), "faulty_traces": sum(1 for r in corpus if r["meta"]["fault"]),
            "final_loss": summary.get("final_loss"), "steps": summary.get("steps"),
            "train_s": round(time.perf_counter() - t0, 1), "parts": parts}
    write_json_atomic(root / "teacher.json", info)
    return info
