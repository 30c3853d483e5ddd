"""``distill demo``: the whole pipeline on a laptop CPU in minutes, really distilling.

Steps (each through the stage's public ``run(cfg)``, the code path ``distill <stage>`` runs):

1. world: column addition/subtraction problems (:mod:`pipeline.demo.world`), split into teacher
   training problems, generation prompts and a held-out test split (disjoint, asserted); a few
   test problems are deliberately leaked into the generation prompts (``world.leak_test_prompts``)
   so decontamination has something to catch.
2. teacher: a tiny Qwen2 trained from random weights by ``sft`` on programmed traces with a
   controlled share of faults, cached across runs (:mod:`pipeline.demo.teacher`).
3. ``generate`` (transformers backend, ``generate.n`` samples per prompt), ``filter`` (the R1 preset,
   decontaminated against the demo's held-out split).
4. students from random init (smaller, same tokenizer): ``sft`` on the kept traces, ``sft`` on the
   unfiltered traces, ``kd`` on the kept traces with the teacher's logits.
5. ``eval`` of teacher, untrained student and the three students on the held-out split; the fault
   probe (teacher and trained students sampled at T=1, like the corpus); the filter's style rules
   over both sets of responses (fault shares, filtered vs unfiltered student); then the report.

Every step records a marker (``state/<step>.json``) with a hash of its settings; a rerun skips
finished steps and resumes unfinished ones (the stages resume themselves), and redoes a step whose
settings changed.

    distill demo                  # the default run: 7.0 min on 2 CPU cores, of which the teacher
                                  # takes 2.4 (once: it is cached)
    distill demo --quick          # the tests' setting: 3.5 min with the teacher cached
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.cliutil import add_stage_parser, config_from_args
from pipeline.config import Section, StageConfig, parse_override

__all__ = ["DemoConfig", "run", "register", "DEFAULT_QUICK"]

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


# What --quick changes (the tests' setting): fewer problems, smaller and shorter trainings.
# The teacher is left as it is, so --quick and the default run share one cached teacher.
DEFAULT_QUICK = ["student.train.steps=1100", "eval.n=1", "fault_probe.n=1"]


class WorldConfig(Section):
    """The synthetic task (see ``pipeline/demo/world.py``)."""

    n_teacher_train: int = Field(3000, ge=10, description="problems with programmed traces the teacher learns from")
    n_prompts: int = Field(2000, ge=10, description="generation prompts the teacher answers for the students")
    n_test: int = Field(200, ge=10, description="held-out problems (never in the training or generation prompts)")
    min_digits: int = Field(3, ge=1, description="fewest digits of an operand")
    max_digits: int = Field(3, ge=1, description="most digits of an operand")
    ops: list[str] = Field(default_factory=lambda: ["+", "-"], description="operations: + and/or -")
    fault_rate: float = Field(0.2, ge=0.0, lt=1.0, description="share of faulty teacher traces (equal parts of "
                              "wrong_answer, repetition, code_block, mixed_language)")
    leak_test_prompts: int = Field(6, ge=0, description="held-out problems leaked into the generation prompts "
                                   "(decontamination must remove them)")


class TrainSettings(Section):
    steps: int = Field(1500, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    micro_batch_size: int = Field(8, ge=1, description="rows (samples, or packed rows) per step")
    max_seq_len: int = Field(320, ge=64, description="longest sample / tokens per packed row")
    packing: bool = Field(False, description="pack samples into rows (off: short samples attend cheaper padded)")
    warmup_ratio: float = Field(0.02, ge=0, lt=1, description="linear warmup share")


class TeacherTrainSettings(TrainSettings):
    steps: int = Field(1600, ge=1, description="optimizer steps")


class TeacherConfig(Section):
    hidden_size: int = Field(128, ge=8, description="hidden size")
    num_layers: int = Field(4, ge=1, description="decoder layers")
    num_heads: int = Field(4, ge=1, description="attention heads")
    intermediate_size: int | None = Field(None, description="MLP width (default 2 x hidden)")
    train: TeacherTrainSettings = Field(default_factory=TeacherTrainSettings, description="teacher training")


class StudentConfig(Section):
    hidden_size: int = Field(112, ge=8, description="hidden size")
    num_layers: int = Field(2, ge=1, description="decoder layers")
    num_heads: int = Field(4, ge=1, description="attention heads")
    intermediate_size: int | None = Field(None, description="MLP width (default 2 x hidden)")
    train: TrainSettings = Field(default_factory=TrainSettings, description="each student's training")
    kd_alpha: float = Field(0.5, ge=0, le=1, description="kd: weight of the KL term")
    kd_temperature: float = Field(1.0, gt=0, description="kd: softmax temperature")
    white_box: list[Literal["features", "on_policy"]] = Field(
        default_factory=list, description="extra KD students, each a Pass@1 row at the same steps and seed: "
                                          "features (logit KD + hidden states at 2 mapped layers, from the cache), "
                                          "on_policy (GKD, lmbda 0.5, beta 0.5, live teacher, "
                                          "off-policy for the first half of the steps)")
    equal_time: bool = Field(True, description="with white_box: also train the logit and white-box KD students for "
                             "the wall-clock the SFT student took (fewer steps), one more Pass@1 row each")
    seed: int | None = Field(None, description="seed of the students' init and data order (default: the demo seed); "
                             "vary it alone to compare students distilled from one teacher and one corpus")


class EvalSampling(Section):
    n: int = Field(2, ge=1, description="samples per prompt")
    temperature: float = Field(0.6, ge=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus mass")
    max_tokens: int = Field(320, ge=8, description="most generated tokens")
    batch_size: int = Field(128, ge=1, description="prompts per transformers generate() call")


class SamplingSettings(Section):
    n: int = Field(2, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass")
    max_tokens: int = Field(320, ge=8, description="most generated tokens")
    batch_size: int = Field(128, ge=1, description="prompts per transformers generate() call")


class FaultProbeSampling(SamplingSettings):
    """Sampling of the fault probe: like the corpus (T=1, top-p 1), two samples per held-out problem."""

    n: int = Field(2, ge=1, description="samples per held-out problem")


class DemoConfig(StageConfig):
    """``distill demo`` settings (``configs/demo.yaml``)."""

    output_dir: str = Field("runs/demo", description="everything the demo writes, except the teacher cache")
    cache_dir: str | None = Field(None, description="teacher cache (default $DISTILL_CACHE/demo or ~/.cache/distill-r1/demo)")
    seed: int = Field(0, description="seed of the world, the models and the sampling")
    quick: bool = Field(False, description="use the `quick_overrides` (the --quick flag)")
    quick_overrides: list[str] = Field(default_factory=lambda: list(DEFAULT_QUICK),
                                       description="--set style KEY=VALUE items applied by --quick")
    vocab_size: int = Field(400, ge=300, description="demo tokenizer vocabulary")
    max_position_embeddings: int = Field(1024, ge=64, description="model context")
    world: WorldConfig = Field(default_factory=WorldConfig, description="the synthetic task")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="teacher size and training")
    student: StudentConfig = Field(default_factory=StudentConfig,
                                   description="student size and training (all students alike)")
    generate: SamplingSettings = Field(default_factory=SamplingSettings, description="teacher sampling for the corpus")
    eval: EvalSampling = Field(default_factory=EvalSampling, description="eval sampling")
    fault_probe: FaultProbeSampling = Field(
        default_factory=FaultProbeSampling,
        description="sampling of the fault probe: teacher and students answer the held-out problems like the "
                    "corpus was sampled (T=1), and the filter's style rules count their faulty outputs")
    filter_preset: str = Field("configs/filter/r1.yaml", description="filter config (relative to cwd or the repo)")
    workers: int = Field(1, ge=0, description="filter/grading worker processes (0 = all cores)")
    progress: bool = Field(True, description="progress bars")


def _apply_quick(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with ``quick_overrides`` applied when ``quick`` is set (validated like ``--set``)."""
    if not cfg.quick:
        return cfg
    from pipeline.config import load_config

    data = cfg.model_dump()
    overrides = list(cfg.quick_overrides)
    data["quick_overrides"] = []
    tmp_values = {}
    for item in overrides:
        key_path, value = parse_override(item)
        tmp_values[".".join(key_path)] = value
    return load_config(DemoConfig, None, values={**_flatten(data), **tmp_values})


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Steps:
    """Markers ``state/<name>.json`` = {hash, result}; a changed hash clears the step's folder and redoes it."""

    def __init__(self, out: Path):
        self.dir = out / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def elapsed(self, name: str) -> float:
        """The wall-clock seconds step ``name`` took when it ran (recorded in its marker)."""
        return float(json.loads((self.dir / f"{name}.json").read_text())["elapsed_s"])

    def run(self, name: str, settings: Any, fn, folder: Path | None = None) -> Any:
        from pipeline.records import write_json_atomic

        h = _hash(settings)
        marker = self.dir / f"{name}.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            if saved.get("hash") == h:
                log.info("demo: %s already done (state/%s.json)", name, name)
                self.timings[name] = 0.0
                return saved["result"]
            marker.unlink()
            if folder is not None and folder.exists():
                log.info("demo: %s settings changed; redoing it from scratch", name)
                shutil.rmtree(folder)
        elif folder is not None and folder.exists() and (self.dir / f"{name}.hash").is_file() and \
                (self.dir / f"{name}.hash").read_text() != h:
            shutil.rmtree(folder)  # an unfinished run with other settings: stages would refuse to resume it
        (self.dir / f"{name}.hash").write_text(h)
        log.info("demo: %s ...", name)
        t = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - t, 1)
        write_json_atomic(marker, {"hash": h, "result": result, "elapsed_s": self.timings[name]})
        return result


def _resolve(path: str) -> Path | None:
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if cand.is_file():
            return cand
    return None


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; return the summary (also ``<output_dir>/summary.json``, report in ``report.md``)."""
    from pipeline.locking import output_lock

    with output_lock(cfg.output_dir, "distill demo"):
        return _run(cfg)


def _run(cfg: DemoConfig) -> dict[str, Any]:
    from pipeline.demo import report as R
    from pipeline.demo.teacher import ensure_teacher
    from pipeline.records import write_json_atomic

    cfg = _apply_quick(cfg)
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out)
    world = _world(cfg, out)
    t = time.perf_counter()
    teacher = ensure_teacher(cfg, world.teacher_train)
    steps.timings["teacher"] = 0.0 if teacher["cached"] else round(time.perf_counter() - t, 1)
    filter_report, kept = _corpus(cfg, out, steps, teacher, world)
    students, init_dir, equal_time = _students(cfg, out, steps, teacher, kept)
    eval_result, faults = _score(cfg, out, steps, teacher, students, init_dir, equal_time, world.test_path)
    summary = R.summarize(cfg.model_dump(), teacher, filter_report, students, eval_result, faults,
                          world={"teacher_train": len(world.teacher_train), "prompts": len(world.gen_problems),
                                 "leaked": len(world.leaked), "test": len(world.test)},
                          timings={**steps.timings, "total": round(time.perf_counter() - t_start, 1)},
                          white_box=_white_box_rows(cfg.student, equal_time, steps))
    summary["report"] = R.write_report(summary, out)
    write_json_atomic(out / "summary.json", summary)
    print(R.console_summary(summary))
    return summary


@dataclass(frozen=True)
class _World:
    teacher_train: list
    gen_problems: list
    leaked: list
    test: list
    test_path: Path
    prompts_path: Path


def _world(cfg: DemoConfig, out: Path) -> _World:
    """Step 1: the splits (teacher training, generation prompts + leaked test problems, held-out test), written."""
    from pipeline.demo.world import make_splits, write_prompts

    w = cfg.world
    train, test = make_splits(w.n_teacher_train + w.n_prompts, w.n_test, seed=cfg.seed, min_digits=w.min_digits,
                              max_digits=w.max_digits, ops=w.ops)
    teacher_train, gen_problems = train[:w.n_teacher_train], train[w.n_teacher_train:]
    leaked = test[:min(w.leak_test_prompts, len(test))]
    data_dir = out / "data"
    test_path = write_prompts(test, data_dir / "test.jsonl")
    prompts_path = write_prompts(gen_problems + leaked, data_dir / "prompts.jsonl")
    log.info("demo world: %d teacher-training problems, %d generation prompts (+%d leaked test problems), "
             "%d held-out test problems", len(teacher_train), len(gen_problems), len(leaked), len(test))
    return _World(teacher_train, gen_problems, leaked, test, test_path, prompts_path)


def _corpus(cfg: DemoConfig, out: Path, steps: _Steps, teacher: dict, world: _World) -> tuple[dict, Path]:
    """Step 3: the teacher's samples (``generate``) and the R1 filter over them; ``(filter report, kept.jsonl)``."""
    from pipeline.generate.config import GenerateConfig, SamplingConfig, TransformersConfig
    from pipeline.generate.stage import run as generate_run
    from pipeline.prompts import PromptSourceConfig
    from pipeline.records import read_jsonl

    g = cfg.generate
    gen_cfg = GenerateConfig(
        model=teacher["model_dir"], backend="transformers",
        input=PromptSourceConfig(path=str(world.prompts_path), problem_column="problem", answer_column="answer",
                                 id_column="id", require_answer=True),
        force_think=True,
        sampling=SamplingConfig(n=g.n, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens,
                                seed=cfg.seed),
        output_dir=str(out / "generate"), batch_size=max(g.batch_size, 256), progress=cfg.progress,
        transformers=TransformersConfig(device="cpu", dtype="float32", batch_size=g.batch_size))
    steps.run("generate", [gen_cfg.model_dump(), teacher["key"]], lambda: _jsonable(generate_run(gen_cfg)),
              folder=out / "generate")

    filt_cfg = _filter_config(cfg, inputs=[str(out / "generate")], output=out / "filter",
                              benchmarks=[str(world.test_path.resolve())])
    filter_report = steps.run("filter", [filt_cfg.model_dump(), teacher["key"]],
                              lambda: _jsonable(_filter_run(filt_cfg)), folder=out / "filter")
    kept = out / "filter" / "kept.jsonl"
    kept_rows = read_jsonl(kept)
    if not kept_rows:
        raise RuntimeError(f"{kept}: the filter kept none of the teacher's {filter_report['totals']['input']} samples "
                           "(see filter/report.md); the teacher needs more training (teacher.train.steps)")
    leaked_kept = sorted({r.get("prompt_id") for r in kept_rows} & {p.id for p in world.test})
    if leaked_kept:
        raise RuntimeError(f"{kept}: held-out problems survived decontamination: {leaked_kept[:5]}")
    return filter_report, kept


def _students(cfg: DemoConfig, out: Path, steps: _Steps, teacher: dict, kept: Path) -> tuple[dict, Path, list]:
    """Step 4: the students from one random init: SFT (filtered, unfiltered), logit KD, the white-box KD
    students, then (``equal_time``) the KD students again at the SFT student's wall-clock."""
    from pipeline.demo.teacher import init_model_dir

    s = cfg.student
    init_dir = init_model_dir(teacher["tokenizer_dir"], out / "models" / "student_init", hidden_size=s.hidden_size,
                              num_layers=s.num_layers, num_heads=s.num_heads, intermediate_size=s.intermediate_size,
                              max_position_embeddings=cfg.max_position_embeddings, seed=_student_seed(cfg) + 1)
    unfiltered = sorted(str(p) for p in (out / "generate").glob("shard-*.jsonl"))
    students: dict[str, Any] = {}
    # (name, data, KD kind: None = SFT, "logit", "features", "on_policy", steps)
    runs = [("sft", [str(kept)], None, s.train.steps), ("sft_unfiltered", unfiltered, None, s.train.steps),
            ("kd", [str(kept)], "logit", s.train.steps)]
    runs += [(f"kd_{kind}", [str(kept)], kind, s.train.steps) for kind in s.white_box]

    def train_students(todo):
        for name, data, kind, n in todo:
            train_cfg = _student_config(cfg, str(init_dir), data, out / "train" / name,
                                        teacher["model_dir"] if kind else None, kind, n)
            students[name] = steps.run(f"train_{name}", [train_cfg.model_dump(), teacher["key"]],
                                       lambda c=train_cfg, k=kind: _train(c, k is not None), folder=out / "train" / name)

    train_students(runs)
    equal_time = _equal_time_runs(runs, steps, s.train.steps) if s.white_box and s.equal_time else []
    train_students(equal_time)
    return students, init_dir, equal_time


def _score(cfg: DemoConfig, out: Path, steps: _Steps, teacher: dict, students: dict, init_dir: Path,
           equal_time: list, test_path: Path) -> tuple[dict, dict]:
    """Step 5: eval (R1 sampling) of every model, the fault probe (T=1), and the style rules' fault shares."""
    from pipeline.demo import report as R
    from pipeline.evaluate.stage import ModelSpec, run as eval_run

    s = cfg.student
    teacher_spec = ModelSpec(model=teacher["model_dir"], label="teacher")
    trained = [ModelSpec(model=students["sft"]["model_dir"], label="student SFT (filtered)"),
               ModelSpec(model=students["kd"]["model_dir"], label="student KD (filtered)"),
               ModelSpec(model=students["sft_unfiltered"]["model_dir"], label="student SFT (unfiltered)")]
    trained += [ModelSpec(model=students[f"kd_{kind}"]["model_dir"], label=f"student KD {kind.replace('_', '-')} "
                          "(filtered)") for kind in s.white_box]
    trained += [ModelSpec(model=students[name]["model_dir"], label=_equal_time_label(name, n))
                for name, _, _, n in equal_time]
    models_key = [teacher["key"], {k: v.get("final_loss") for k, v in students.items()}]
    eval_cfg = _eval_config(cfg, [teacher_spec, ModelSpec(model=str(init_dir), label="student (untrained)"), *trained],
                            cfg.eval, test_path, out / "eval")
    eval_result = steps.run("eval", [eval_cfg.model_dump(), *models_key], lambda: _jsonable(eval_run(eval_cfg)),
                            folder=out / "eval")
    # The probe samples like the corpus was sampled (T=1): the teacher's rare fault branches, and whatever a
    # student learned of them, show up there; R1's eval setting (T=0.6, top-p 0.95) cuts them away.
    probe_cfg = _eval_config(cfg, [teacher_spec, *trained], cfg.fault_probe, test_path, out / "fault_probe")
    probe_result = steps.run("fault_probe", [probe_cfg.model_dump(), *models_key],
                             lambda: _jsonable(eval_run(probe_cfg)), folder=out / "fault_probe")
    style_key = _filter_config(cfg, [], out, []).model_dump()
    faults = steps.run("faults", [eval_result.get("comparison"), probe_result.get("comparison"), style_key],
                       lambda: {"eval": R.fault_shares(eval_result, lambda i, o: _style_filter(cfg, i, o),
                                                       out / "faults" / "eval"),
                                "probe": R.fault_shares(probe_result, lambda i, o: _style_filter(cfg, i, o),
                                                        out / "faults" / "probe")},
                       folder=out / "faults")
    return eval_result, faults


def _eval_config(cfg: DemoConfig, models: list, sampling: SamplingSettings | EvalSampling, test_path: Path,
                 output: Path):
    """An ``eval`` config scoring ``models`` on the held-out split with ``sampling`` (transformers on CPU)."""
    from pipeline.evaluate.benchmarks import BenchmarkSpec
    from pipeline.evaluate.stage import EvalConfig
    from pipeline.generate.config import SamplingConfig, TransformersConfig

    return EvalConfig(
        models=models, backend="transformers",
        benchmarks=[BenchmarkSpec(name="demo_test", path=str(test_path.resolve()), problem_column="problem",
                                  answer_column="answer", id_column="id")],
        sampling=SamplingConfig(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, seed=cfg.seed),
        pass_k=[1], output_dir=str(output), batch_size=max(256, sampling.batch_size), grading_workers=cfg.workers,
        bootstrap_seed=cfg.seed, progress=cfg.progress, hf_fallback=False,
        transformers=TransformersConfig(device="cpu", dtype="float32", batch_size=sampling.batch_size))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _filter_config(cfg: DemoConfig, inputs: list[str], output: Path, benchmarks: list[str]):
    from filters.config import FilterConfig
    from pipeline.config import load_config

    preset = _resolve(cfg.filter_preset)
    values = {"inputs": inputs, "output_dir": str(output), "workers": cfg.workers, "decontam.benchmarks": benchmarks}
    if preset is None:
        log.warning("demo: filter preset %s not found; using the FilterConfig defaults", cfg.filter_preset)
        return load_config(FilterConfig, None, values=values)
    return load_config(FilterConfig, preset, values=values)


def _filter_run(filt_cfg) -> dict:
    from filters.stage import run as filter_run

    return filter_run(filt_cfg)


def _style_filter(cfg: DemoConfig, inputs: list[str], output: Path) -> dict:
    """The filter's style rules only (``style = True`` in filters/registry.py) over eval responses."""
    filt = _filter_config(cfg, inputs, output, [])
    from filters.registry import RULES, style_keys

    off = {"enabled": False}
    update = {cls.key: getattr(filt, cls.key).model_copy(update=off) for cls in RULES if cls.key not in style_keys()}
    filt = filt.model_copy(update={**update, "overwrite": True, "progress": False} if "progress" in
                           type(filt).model_fields else {**update, "overwrite": True})
    return _filter_run(filt)


def _white_box_rows(s: StudentConfig, equal_time: list, steps: _Steps) -> list[dict[str, Any]]:
    """SFT vs logit KD vs each white-box KD student: steps, measured training seconds, their Pass@1 rows
    (at equal steps, and at the SFT student's wall-clock); empty without ``student.white_box``."""
    if not s.white_box:
        return []
    labels = {"sft": "student SFT (filtered)", "kd": "student KD (filtered)",
              **{f"kd_{k}": f"student KD {k.replace('_', '-')} (filtered)" for k in s.white_box}}
    timed = {name.removesuffix("_equal_time"): (name, n) for name, _, _, n in equal_time}
    rows = []
    for name, label in labels.items():
        row = {"student": name, "label": label, "steps": s.train.steps, "train_s": steps.elapsed(f"train_{name}")}
        if name in timed:
            et, n = timed[name]
            row.update(equal_time_label=_equal_time_label(et, n), equal_time_steps=n,
                       equal_time_train_s=steps.elapsed(f"train_{et}"))
        rows.append(row)
    return rows


def _student_seed(cfg: DemoConfig) -> int:
    return cfg.seed if cfg.student.seed is None else cfg.student.seed


def _equal_time_runs(runs: list, steps: _Steps, n_steps: int) -> list:
    """The KD runs again, each with the steps that fit in the SFT student's wall-clock (its measured time x
    ``n_steps`` / the KD run's measured time; a KD run's time includes building its teacher cache)."""
    t_sft = steps.elapsed("train_sft")
    out = []
    for name, data, kind, _ in runs:
        if kind is not None:
            n = max(1, min(n_steps, round(n_steps * t_sft / max(steps.elapsed(f"train_{name}"), 1e-6))))
            out.append((f"{name}_equal_time", data, kind, n))
    return out


def _equal_time_label(name: str, n: int) -> str:
    kind = name.removesuffix("_equal_time").removeprefix("kd").lstrip("_").replace("_", "-")
    return f"student KD{' ' + kind if kind else ''} (filtered, SFT's time: {n} steps)"


def _student_config(cfg: DemoConfig, init_dir: str, data: list[str], out: Path, teacher: str | None,
                    kind: str | None = None, steps: int | None = None):
    s = cfg.student
    steps = steps or s.train.steps
    common = dict(model=init_dir, data=data, output_dir=str(out), max_seq_len=s.train.max_seq_len, packing=s.train.packing,
                  micro_batch_size=s.train.micro_batch_size, grad_accum=1, max_steps=steps, lr=s.train.lr,
                  warmup_ratio=s.train.warmup_ratio, min_lr_ratio=0.05, adam_betas=(0.9, 0.98), dtype="fp32",
                  seed=_student_seed(cfg), save_every=max(50, steps // 4), keep_checkpoints=1, resume=True,
                  log_every=10, progress=cfg.progress)
    if teacher is None:
        from pipeline.train.sft import SFTConfig

        return SFTConfig(**common)
    from pipeline.train.kd import KDConfig, TopKCacheConfig

    # The teacher runs once over the kept traces (`distill kd cache`: top-64 log-probs of a 400-token vocabulary
    # plus the rest bucket), not once per step: the KD student then trains as fast as the SFT one.
    extra: dict[str, Any] = {}
    if kind == "features":
        extra["features"] = {"num_layers": 2, "loss": "mse", "weight": 0.1}
    elif kind == "on_policy":  # GKD needs the live teacher: it scores the student's own samples. GKD starts from
        # an SFT'd student: from random weights the first half of the steps trains off-policy (measured: with no
        # warm-up the student spends half its steps on its own noise and scores 0% in three seeds)
        extra["on_policy"] = {"lmbda": 0.5, "beta": 0.5, "max_new_tokens": s.train.max_seq_len // 2,
                              "start_step": steps // 2}
    return KDConfig(**common, teacher=teacher, teacher_dtype="fp32", kd_loss="forward_kl",
                    kd_alpha=s.kd_alpha, kd_temperature=s.kd_temperature,
                    teacher_cache=None if kind == "on_policy" else str(out / "teacher_cache"),
                    cache=TopKCacheConfig(k=64, logprob_dtype="float32", batch_size=32), **extra)


def _train(train_cfg, kd: bool) -> dict:
    if kd:
        from pipeline.train.kd import build_teacher_cache, run as kd_run

        if train_cfg.on_policy is None:
            build_teacher_cache(train_cfg)
        return _jsonable(kd_run(train_cfg))
    from pipeline.train.sft import run as sft_run

    return _jsonable(sft_run(train_cfg))


FLAGS = {
    "--output": ("output_dir", str, "output folder (default runs/demo)"),
    "--quick": ("quick", "store_true", "the shorter setting used by the tests (3.5 min on 2 cores with the teacher cached)"),
    "--cache-dir": ("cache_dir", str, "teacher cache folder"),
}


def config_from_cli(args) -> DemoConfig:
    """The demo config from parsed CLI args: ``configs/demo.yaml`` unless ``--config``; with ``--quick``,
    an explicit ``--set`` wins over what ``quick_overrides`` changes."""
    if args.config is None:
        default = _resolve("configs/demo.yaml")
        args.config = str(default) if default else None
    cfg = config_from_args(DemoConfig, args, FLAGS)
    if cfg.quick and getattr(args, "overrides", None):
        cfg = cfg.model_copy(update={"quick_overrides": [*cfg.quick_overrides, *args.overrides]})
    return cfg


def _main(args) -> int:
    run(config_from_cli(args))
    return 0


def register(sub) -> None:
    p = add_stage_parser(sub, "demo", DemoConfig, "The whole pipeline on a CPU in minutes: a tiny teacher trained "
                         "here, generate, filter, SFT/KD students, Pass@1 report.", FLAGS)
    p.set_defaults(func=_main)

