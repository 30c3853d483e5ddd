"""The generate loop: shard assignment, resume ledger, batching, progress, records, stats.

Rules:

* Prompts are validated and rendered before anything is written; a bad row stops the run with a
  located error and an untouched output folder.
* Shard ``i`` of ``N`` owns the prompts with ``sha256(prompt_id) % N == i`` (:func:`pipeline.prompts.shard_of`),
  so machines need no coordination and the union of all shards is every prompt, once.
* The shard file is the resume ledger: a (prompt_id, sample_index) already on disk is never asked
  for again, a torn last line is cut on open (``ShardWriter``), and a batch is durable (fsync)
  before the next starts. A kill (SIGKILL included) loses at most the batch in flight.
* ``{output_dir}/config.yaml`` records what produced the folder; resuming with a different teacher,
  template or sampling setting, or with a different shard count, is an error rather than a silently
  mixed corpus.
* Each prompt's seed is derived from the base seed and its id, so its samples do not depend on
  batch composition (vllm, openai backends).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.chat import EMPTY_THINK, THINK_OPEN, render_generation_prompt, with_forced_think
from pipeline.config import ConfigError
from pipeline.generate.backends.base import Backend, Completion, PromptInput
from pipeline.generate.config import GenerateConfig
from pipeline.locking import output_lock
from pipeline.prompts import Prompt, PromptSet, load_prompt_set, shard_of
from pipeline.records import RecordError, ShardWriter, export_parquet, iter_records, write_json_atomic

__all__ = ["generate", "prompt_seed", "sample_key", "make_record", "compute_stats", "write_stats",
           "shard_paths", "MANIFEST", "SHARD_RE"]

log = logging.getLogger(__name__)
MANIFEST = "config.yaml"
SHARD_RE = re.compile(r"^\.?shard-(\d{5})-of-(\d{5})\.(jsonl|parquet)$")
# Settings that change what a sample is: resuming a folder with different values would mix corpora.
PINNED = ("model", "revision", "template", "force_think", "kind", "system_prompt", "sampling.temperature",
          "sampling.top_p", "sampling.max_tokens", "sampling.seed")


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """The prompt's own seed: 31 bits of sha256(base seed, prompt id)."""
    return int(hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).hexdigest()[:8], 16) % (2 ** 31)


def sample_key(record: dict[str, Any]) -> tuple[str, int]:
    return record["prompt_id"], record["sample_index"]


def ledger_path(cfg: GenerateConfig) -> Path:
    """The JSONL the run appends to (hidden when the visible output is Parquet, so readers see one copy)."""
    name = f"{cfg.shard_name()}.jsonl"
    return Path(cfg.output_dir) / (("." + name) if cfg.output_format == "parquet" else name)


def shard_paths(folder: str | Path) -> list[Path]:
    """The visible shard files of a generate folder, sorted."""
    return sorted(p for p in Path(folder).iterdir() if SHARD_RE.match(p.name) and not p.name.startswith("."))


def stats_paths(cfg: GenerateConfig) -> tuple[Path, Path]:
    out = Path(cfg.output_dir)
    if cfg.num_shards == 1:
        return out / "stats.json", out / "lengths.png"
    return out / f"{cfg.shard_name()}.stats.json", out / f"{cfg.shard_name()}.lengths.png"


# ---------------------------------------------------------------------------------------------- config pinning

def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return None if data == {} else data


def check_output_dir(cfg: GenerateConfig) -> None:
    """Refuse to resume a folder written with other pinned settings or another shard count."""
    out = Path(cfg.output_dir)
    for p in out.glob("*shard-*-of-*.jsonl") if out.is_dir() else []:
        m = SHARD_RE.match(p.name)
        if m and int(m.group(2)) != cfg.num_shards:
            raise ConfigError(f"{p}: output_dir holds shards of a {int(m.group(2))}-way split; this run is "
                              f"num_shards={cfg.num_shards}. Use a new output_dir (or the same num_shards) so no "
                              "prompt is generated twice")
    manifest = out / MANIFEST
    current = cfg.model_dump(mode="json")
    if manifest.is_file():
        saved = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
        saved.setdefault("kind", "reasoning")  # folders written before sample kinds existed
        for key in PINNED:
            if _get(saved, key) != _get(current, key):
                raise ConfigError(f"{manifest}: {key}: this folder was generated with {_get(saved, key)!r}, this run "
                                  f"has {_get(current, key)!r}; use a new output_dir or the same value")
        return
    from pipeline.records import write_text_atomic

    pinned = {k: v for k, v in current.items() if k not in ("shard_index", "progress")}
    write_text_atomic(manifest, "# written by `distill generate`; rerun with --config this file to resume\n"
                      + yaml.safe_dump(pinned, sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------------------------------------- records

def make_record(cfg: GenerateConfig, prompt: Prompt, messages: list[dict[str, str]], sample_index: int,
                prefix: str, completion: Completion) -> dict[str, Any]:
    """One line of the output (fixed schema: every key always present, stable types)."""
    response = with_forced_think(prefix, completion.text)
    if cfg.kind == "non_reasoning" and not response.lstrip().startswith(THINK_OPEN):
        response = EMPTY_THINK + response  # a server that renders the prompt itself: keep the empty block
    return {
        "id": f"{prompt.id}-{sample_index}",
        "prompt_id": prompt.id,
        "sample_index": sample_index,
        "domain": prompt.domain,
        "kind": cfg.kind,
        "messages": messages + [{"role": "assistant", "content": response}],
        "answer": prompt.answer,
        "finish_reason": completion.finish_reason,
        "num_tokens": {"prompt": int(completion.prompt_tokens), "completion": int(completion.completion_tokens)},
        "teacher": {"model": cfg.model, "revision": cfg.revision},
        "sampling": {"n": cfg.sampling.n, "temperature": float(cfg.sampling.temperature),
                     "top_p": float(cfg.sampling.top_p), "max_tokens": cfg.sampling.max_tokens,
                     "seed": cfg.sampling.seed},
        "meta": dict(prompt.meta),
    }


def _server_prefix(cfg: GenerateConfig) -> str:
    """The assistant prefix sent to a server that renders the prompt (only when it accepts a prefill)."""
    if not cfg.openai.prefill_think:
        return ""
    if cfg.kind == "non_reasoning":
        return EMPTY_THINK
    return THINK_OPEN + "\n" if cfg.force_think else ""


def _templates(cfg: GenerateConfig) -> dict[str, str]:
    from prompts import load_template

    return {domain: load_template(name) for domain, name in cfg.template.items()}


def _messages(cfg: GenerateConfig, templates: dict[str, str], prompt: Prompt) -> list[dict[str, str]]:
    from prompts import apply_template

    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return msgs + [{"role": "user", "content": apply_template(templates[prompt.domain], prompt.problem)}]


def _check_domains(prompts: Iterable[Prompt], templates: dict[str, str]) -> None:
    for p in prompts:
        if p.domain not in templates:
            path, _, line = p.source.rpartition(":")
            raise RecordError(path or p.source, int(line) if line.isdigit() else None,
                              f"no template for domain {p.domain!r} (config `template` has: "
                              f"{', '.join(sorted(templates))})", field="domain")


# ---------------------------------------------------------------------------------------------- stats

def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return float(s[lo] + (s[hi] - s[lo]) * (k - lo))

    return {"min": float(s[0]), "p5": q(0.05), "p25": q(0.25), "p50": q(0.5), "p75": q(0.75), "p95": q(0.95),
            "p99": q(0.99), "max": float(s[-1]), "mean": sum(s) / len(s)}


def compute_stats(paths: Iterable[str | Path]) -> tuple[dict[str, Any], list[int]]:
    """Counts, tokens, finish reasons and completion-length percentiles over shard files."""
    finish: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    lengths: list[int] = []
    prompt_ids: set[str] = set()
    prompt_tokens = 0
    think_closed = 0
    for loc in iter_records(list(paths)):
        r = loc.record
        finish[r["finish_reason"]] += 1
        domains[r["domain"]] += 1
        prompt_ids.add(r["prompt_id"])
        lengths.append(int(r["num_tokens"]["completion"]))
        prompt_tokens += int(r["num_tokens"]["prompt"])
        response = r["messages"][-1]["content"]
        think_closed += "</think>" in response and THINK_OPEN in response[:64]
    n = len(lengths)
    return {
        "samples": n,
        "prompts": len(prompt_ids),
        "tokens": {"prompt": prompt_tokens, "completion": sum(lengths)},
        "finish_reasons": dict(finish.most_common()),
        "truncated_share": (finish.get("length", 0) / n) if n else 0.0,
        "closed_think_share": (think_closed / n) if n else 0.0,
        "domains": dict(domains.most_common()),
        "completion_tokens": _percentiles(lengths),
    }, lengths


def write_stats(stats: dict[str, Any], lengths: list[int], json_path: Path, png_path: Path,
                max_tokens: int | None) -> None:
    from pipeline.plots import histogram

    write_json_atomic(json_path, stats)
    if lengths:
        histogram(lengths, png_path, title=f"completion lengths ({len(lengths)} samples)", xlabel="tokens",
                  vlines={"max_tokens": max_tokens} if max_tokens else None)


# ---------------------------------------------------------------------------------------------- the loop

def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sample", desc=desc, disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def generate(cfg: GenerateConfig, backend: Backend | None = None, make_backend: Any = None,
             prompt_set: PromptSet | None = None) -> dict[str, Any]:
    """Run shard ``cfg.shard_index`` of ``cfg.num_shards``; returns the stats dict (also written to disk)."""
    t0 = time.perf_counter()
    prompt_set = prompt_set or load_prompt_set(cfg.input)
    templates = _templates(cfg)
    _check_domains(prompt_set.prompts, templates)
    mine = [p for p in prompt_set.prompts if shard_of(p.id, cfg.num_shards) == cfg.shard_index]
    path = ledger_path(cfg)
    with output_lock(path, "distill generate"):  # one writer per shard (shards of one folder run in parallel)
        check_output_dir(cfg)
        return _run_shard(cfg, prompt_set, templates, mine, backend, make_backend, t0)


def _run_shard(cfg: GenerateConfig, prompt_set: PromptSet, templates: dict[str, str], mine: list[Prompt],
               backend: Backend | None, make_backend: Any, t0: float) -> dict[str, Any]:
    """Generate the missing samples of this shard (under its lock), then write its stats."""
    path = ledger_path(cfg)
    n = cfg.sampling.n
    owned = backend is None
    run_samples = run_tokens = 0
    gen_s = 0.0
    retries = 0
    with ShardWriter(path, key=sample_key) as writer:
        todo = [(p, tuple(k for k in range(n) if (p.id, k) not in writer.done)) for p in mine]
        todo = [(p, ks) for p, ks in todo if ks]
        remaining = sum(len(ks) for _, ks in todo)
        log.info("%s: %d prompts in this shard (of %d), %d samples already on disk, %d to generate",
                 path, len(mine), len(prompt_set.prompts), len(mine) * n - remaining, remaining)
        if todo:
            if backend is None:
                backend = make_backend(cfg)
            retries_before = getattr(backend, "retries", 0)  # openai: requests retried (read only once loaded)
            t_gen = time.perf_counter()
            bar = _progress(remaining, cfg.progress, f"generate {cfg.shard_name()}")
            try:
                for start in range(0, len(todo), cfg.batch_size):
                    batch = todo[start:start + cfg.batch_size]
                    inputs, convs = [], []
                    for p, ks in batch:
                        msgs = _messages(cfg, templates, p)
                        if backend.tokenizer is not None:
                            text, prefix = render_generation_prompt(backend.tokenizer, msgs, cfg.force_think,
                                                                    no_think=cfg.kind == "non_reasoning")
                        else:  # the server renders; a forced opener only exists when it is prefilled
                            text = ""
                            prefix = _server_prefix(cfg)
                        inputs.append(PromptInput(messages=msgs, text=text, forced_prefix=prefix,
                                                  seed=prompt_seed(cfg.sampling.seed, p.id), sample_indices=ks))
                        convs.append(msgs)
                    outputs = backend.generate(inputs, cfg.sampling)
                    records = []
                    for (p, ks), inp, msgs, comps in zip(batch, inputs, convs, outputs):
                        if len(comps) != len(ks):
                            raise RuntimeError(f"backend {backend.name} returned {len(comps)} samples for prompt "
                                               f"{p.id}, expected {len(ks)}")
                        for k, c in zip(ks, comps):
                            records.append(make_record(cfg, p, msgs, k, inp.forced_prefix, c))
                            run_tokens += c.completion_tokens
                    writer.write(records)
                    run_samples += len(records)
                    bar.update(len(records))
                    elapsed = max(1e-9, time.perf_counter() - t_gen)
                    bar.set_postfix_str(f"{run_tokens / elapsed:,.0f} tok/s", refresh=False)
            finally:
                gen_s = time.perf_counter() - t_gen
                retries = getattr(backend, "retries", 0) - retries_before
                bar.close()
                if owned and backend is not None:
                    backend.close()
    if cfg.output_format == "parquet":
        export_parquet(path, Path(cfg.output_dir) / f"{cfg.shard_name()}.parquet")
    wall = time.perf_counter() - t0
    stats, lengths = compute_stats([path])
    stats.update({
        "shard": {"index": cfg.shard_index, "num_shards": cfg.num_shards, "path": str(path)},
        "prompts_total": len(prompt_set.prompts),
        "prompts_in_shard": len(mine),
        "expected_samples": len(mine) * n,
        "complete": stats["samples"] == len(mine) * n,
        "duplicate_prompts": {"count": prompt_set.duplicates, "examples": prompt_set.duplicate_examples,
                              "dropped": cfg.input.drop_duplicates},
        "this_run": {"samples": run_samples, "completion_tokens": run_tokens, "wall_s": round(wall, 3),
                     "generate_s": round(gen_s, 3),
                     "samples_per_s": run_samples / gen_s if gen_s else 0.0,
                     "tokens_per_s": run_tokens / gen_s if gen_s else 0.0,
                     "retries": retries},
        "teacher": {"model": cfg.model, "revision": cfg.revision}, "backend": cfg.backend,
        "sampling": cfg.sampling.model_dump(),
    })
    json_path, png_path = stats_paths(cfg)
    write_stats(stats, lengths, json_path, png_path, cfg.sampling.max_tokens)
    log.info("%s: %d samples (%d this run, %.1f samples/s, %.0f tok/s); finish reasons %s; stats in %s",
             path, stats["samples"], run_samples, stats["this_run"]["samples_per_s"],
             stats["this_run"]["tokens_per_s"], stats["finish_reasons"], json_path)
    return stats
