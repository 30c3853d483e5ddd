"""The eval stage: benchmark loading, score-only mode, reports/comparison, end-to-end on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.config import ConfigError
from pipeline.evaluate.benchmarks import BenchmarkSpec, load_problems, resolve_spec
from pipeline.evaluate.reference import PAPER, match_reference
from pipeline.evaluate.report import comparison_table, run_table, write_comparison
from pipeline.evaluate.stage import EvalConfig, ScoreConfig, score
from pipeline.records import RecordError, read_jsonl

REPO = Path(__file__).resolve().parents[1]
THINK = "<think>\nreasoning\n</think>\n\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- benchmarks

def test_short_names_resolve_to_the_shared_files(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    expected = {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}
    for name, rows in expected.items():
        spec = resolve_spec(name, hf_fallback=False)
        assert Path(spec.path).parent == shared_data
        probs = load_problems(spec)
        assert len(probs) == rows
        assert len({p.id for p in probs}) == rows and all(p.answer for p in probs)
    assert load_problems("MATH-500", hf_fallback=False)[0].id == "test/precalculus/807.json"
    assert resolve_spec("MATH-500", hf_fallback=False).name == "math500"  # aliases share one key and folder
    assert load_problems(BenchmarkSpec(name="aime2024", limit=5), hf_fallback=False)[0].answer == "204"


def test_data_dir_env_var_wins_and_gsm8k_answers_are_cleaned(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "gsm8k_test.jsonl", [
        {"problem": "p1", "answer": "so 2+2=4\n#### 1,234", "idx": 7},
        {"problem": "p2", "answer": "18", "idx": 8},
    ])
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    probs = load_problems("gsm8k", hf_fallback=False)
    assert [(p.id, p.answer) for p in probs] == [("7", "1234"), ("8", "18")]


def test_any_set_by_config_with_column_mapping_and_limit(tmp_path):
    f = write_jsonl(tmp_path / "olympiad.jsonl", [{"q": f"question {i}", "a": str(i)} for i in range(10)])
    spec = BenchmarkSpec(name="olympiad", path=str(f), problem_column="q", answer_column="a", limit=3)
    probs = load_problems(spec)
    assert [(p.id, p.problem, p.answer) for p in probs] == [("0", "question 0", "0"), ("1", "question 1", "1"),
                                                            ("2", "question 2", "2")]


def test_parquet_benchmark(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]),
                   tmp_path / "set.parquet")
    probs = load_problems(BenchmarkSpec(name="tiny", path=str(tmp_path / "set.parquet")))
    assert [p.answer for p in probs] == ["2", "4"]


def test_bad_benchmark_rows_name_file_line_and_field(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "no answer", "answer": ""}])
    with pytest.raises(RecordError) as exc:
        load_problems(BenchmarkSpec(name="bad", path=str(f)))
    assert exc.value.line == 2 and exc.value.field == "answer" and "bad.jsonl" in str(exc.value)
    f2 = write_jsonl(tmp_path / "dup.jsonl", [{"problem": "a", "answer": "1", "id": 1}, {"problem": "b", "answer": "2", "id": 1}])
    with pytest.raises(RecordError, match="duplicate problem id"):
        load_problems(BenchmarkSpec(name="dup", path=str(f2), id_column="id"))


def test_unknown_or_missing_benchmark_is_a_user_error(tmp_path, monkeypatch):
    from pipeline.evaluate.benchmarks import BenchmarkNotFound

    with pytest.raises(ConfigError, match="not a known benchmark"):
        resolve_spec("mmlu")
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkNotFound, match="aime24.jsonl \\(not found\\)"):
        resolve_spec("aime24", hf_fallback=False)


def test_eval_config_validation():
    with pytest.raises(ValueError, match="give `model`"):
        EvalConfig()
    cfg = EvalConfig(model="m", benchmarks=["math500", {"name": "x", "path": "x.jsonl", "n": 8}])
    assert cfg.sampling.temperature == 0.6 and cfg.sampling.top_p == 0.95 and cfg.sampling.max_tokens == 32768
    assert cfg.force_think and cfg.system_prompt is None and cfg.template == "math"
    assert isinstance(cfg.benchmarks[1], BenchmarkSpec) and cfg.benchmarks[1].n == 8
    with pytest.raises(ValueError, match="duplicate"):
        EvalConfig(model="m", benchmarks=["math500", "MATH-500"])


def test_eval_configs_in_repo_load():
    from pipeline.config import load_config

    files = sorted((REPO / "configs" / "eval").glob("*.yaml"))
    assert files, "configs/eval/*.yaml missing"
    for f in files:
        cfg = load_config(EvalConfig, f)
        assert cfg.sampling.temperature == 0.6 and cfg.sampling.top_p == 0.95


# --------------------------------------------------------------------------- reference numbers

def test_paper_reference_matching():
    assert match_reference("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == "DeepSeek-R1-Distill-Qwen-1.5B"
    assert match_reference("/ckpt/r1-distill-llama-70b/") == "DeepSeek-R1-Distill-Llama-70B"
    assert match_reference("deepseek-ai/DeepSeek-R1") == "DeepSeek-R1"
    assert match_reference("Qwen/Qwen2.5-Math-1.5B") is None
    assert match_reference(None, "my-student") is None
    assert PAPER["DeepSeek-R1-Distill-Qwen-1.5B"]["aime24"]["pass@1"] == 28.9
    assert PAPER["DeepSeek-R1-Distill-Qwen-7B"]["math500"]["pass@1"] == 92.8


# --------------------------------------------------------------------------- score-only mode

def _responses(n_problems: int = 6, k: int = 4) -> list[dict]:
    """Problem i: the first i % (k+1) samples right (boxed), the rest wrong, unclosed or answerless."""
    rows = []
    for i in range(n_problems):
        for j in range(k):
            ans = str(10 + i)
            if j < i % (k + 1):
                resp = f"{THINK}The result is $\\boxed{{{ans}}}$."
            elif j % 3 == 0:
                resp = f"{THINK}The result is $\\boxed{{{int(ans) + 1}}}$."
            elif j % 3 == 1:
                resp = "<think>\nthinking and thinking \\boxed{%s}" % ans  # cut off: wrong
            else:
                resp = f"{THINK}I give up."
            rows.append({"prompt_id": f"p{i}", "sample_index": j, "answer": ans, "response": resp,
                         "finish_reason": "length" if j % 3 == 1 else "stop",
                         "num_tokens": {"prompt": 10, "completion": 100 + j}})
    return rows


def test_score_mode_grades_and_scores(tmp_path):
    rows = _responses()
    # Half of the lines as chat messages instead of a response field.
    for r in rows[::2]:
        r["messages"] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": r.pop("response")}]
    inp = write_jsonl(tmp_path / "responses.jsonl", rows)
    res = score(ScoreConfig(inputs=[str(inp)], output_dir=str(tmp_path / "out"), pass_k=[1, 2, 4], progress=False,
                            grading_workers=1))
    scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert len(scored) == len(rows)
    expected_correct = [r["sample_index"] < int(r["prompt_id"][1:]) % 5 for r in rows]
    assert [s["correct"] for s in scored] == expected_correct
    assert all("extracted" in s and "grade_status" in s for s in scored)
    m = res["benchmarks"]["responses"]
    per_problem = [min(i % 5, 4) / 4 for i in range(6)]
    assert m["pass@1"] == pytest.approx(100 * sum(per_problem) / 6)
    assert m["problems"] == 6 and m["n_min"] == 4
    assert m["truncation_rate"] == pytest.approx(100 * sum(r["finish_reason"] == "length" for r in rows) / len(rows))
    assert m["mean_response_tokens"] == pytest.approx(101.5)
    for f in ("results.json", "results.md", "pass1.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["benchmarks"]["responses"]["pass@1"] == pytest.approx(m["pass@1"])


def test_score_mode_rejects_bad_lines_with_location(tmp_path):
    inp = write_jsonl(tmp_path / "r.jsonl", [{"answer": "1", "response": f"{THINK}\\boxed{{1}}"},
                                             {"response": f"{THINK}\\boxed{{1}}"}])
    code = cli_main(["eval", "score", "--input", str(inp), "--output", str(tmp_path / "o")])
    assert code == 2
    with pytest.raises(RecordError) as exc:
        score(ScoreConfig(inputs=[str(inp)], output_dir=str(tmp_path / "o2"), progress=False))
    assert (exc.value.line, exc.value.field) == (2, "answer")
    inp2 = write_jsonl(tmp_path / "r2.jsonl", [{"answer": "1", "text": "x"}])
    with pytest.raises(RecordError, match="response"):
        score(ScoreConfig(inputs=[str(inp2)], output_dir=str(tmp_path / "o3"), progress=False))


def test_score_cli_and_rerun_is_exactly_once(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "responses.jsonl", _responses())
    out = tmp_path / "scored"
    assert cli_main(["eval", "score", "--input", str(inp), "--output", str(out), "--pass-k", "1", "4"]) == 0
    first = json.loads((out / "results.json").read_text())["benchmarks"]
    assert cli_main(["eval", "score", "--input", str(inp), "--output", str(out), "--pass-k", "1", "4"]) == 0
    again = json.loads((out / "results.json").read_text())["benchmarks"]
    assert len(read_jsonl(out / "scored.jsonl")) == len(_responses())
    assert again == first
    assert "pass@1" in capsys.readouterr().out


SCORE_KILL_SCRIPT = """
import sys
from pipeline.evaluate.stage import ScoreConfig, score
score(ScoreConfig(inputs=[sys.argv[1]], output_dir=sys.argv[2], grading_workers=1, grading_batch=25,
                  pass_k=[1, 4], progress=False))
"""


def test_score_resumes_after_sigkill_with_identical_metrics(tmp_path):
    # Wrong answers that need math-verify (not decided by normal form) make grading take a few seconds.
    rows = []
    for i in range(100):
        for j in range(4):
            ans = f"\\frac{{{i + 1}}}{{{i + 2}}}"
            resp = f"{THINK}\\boxed{{{i + 1}/{i + 2}}}" if j % 2 == 0 else f"{THINK}\\boxed{{\\sqrt{{{i + 3}}}}}"
            rows.append({"prompt_id": f"q{i}", "sample_index": j, "answer": ans, "response": resp})
    inp = write_jsonl(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SCORE_KILL_SCRIPT, str(inp), str(out)], env=env, cwd=REPO)
    scored = out / "scored.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if scored.exists() and scored.read_bytes().count(b"\n") >= 25:
            break
        assert proc.poll() is None, "scoring finished before it could be killed; make the input larger"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    partial = scored.read_bytes().count(b"\n")
    assert 25 <= partial < len(rows), partial
    res = score(ScoreConfig(inputs=[str(inp)], output_dir=str(out), grading_workers=1, pass_k=[1, 4], progress=False))
    lines = read_jsonl(scored)
    keys = [(r["prompt_id"], r["sample_index"]) for r in lines]
    assert len(keys) == len(rows) == len(set(keys))
    clean = score(ScoreConfig(inputs=[str(inp)], output_dir=str(tmp_path / "clean"), grading_workers=1,
                              pass_k=[1, 4], progress=False))
    assert res["benchmarks"] == clean["benchmarks"]
    assert res["benchmarks"]["responses"]["pass@1"] == pytest.approx(50.0)


# --------------------------------------------------------------------------- reports

def _fake_results(label: str, model: str, math: float, aime: float) -> dict:
    def m(v):
        return {"pass@1": v, "ci95": [v - 5, v + 5], "pass@k": {"1": v, "4": v + 10}, "cons@k": {"4": v + 5},
                "problems": 30, "samples": 120, "n_min": 4, "n_max": 4, "truncation_rate": 2.0,
                "no_answer_rate": 3.0, "mean_response_tokens": 4000.0, "grading_timeouts": 0}
    return {"label": label, "model": model, "backend": "vllm", "benchmarks": {"math500": m(math), "aime24": m(aime)},
            "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}}


def test_run_table_shows_paper_numbers_when_model_matches():
    table = run_table(_fake_results("r1-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 82.0, 27.5))
    assert "paper pass@1" in table and "83.9" in table and "28.9" in table
    assert "| MATH-500 | 30 | 4 | 82.0 | 77.0–87.0 | 92.0 |" in table
    assert "paper" not in run_table(_fake_results("student", "runs/sft/final", 10.0, 0.0))


def test_comparison_of_several_models(tmp_path):
    a = _fake_results("base", "Qwen/Qwen2.5-Math-1.5B", 30.0, 3.3)
    b = _fake_results("distilled", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 80.0, 25.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps(b))
    paths = write_comparison([a, tmp_path / "b"], tmp_path / "cmp")
    md = Path(paths["markdown"]).read_text()
    assert "| base | 30.0 [25.0, 35.0] | 3.3 [-1.7, 8.3] |" in md
    assert "DeepSeek-R1-Distill-Qwen-1.5B (paper) | 83.9 | 28.9" in md
    summary = json.loads(Path(paths["json"]).read_text())
    assert summary["models"]["distilled"]["pass@1"]["math500"] == 80.0
    assert summary["paper"]["DeepSeek-R1-Distill-Qwen-1.5B"] == {"math500": 83.9, "aime24": 28.9}
    png = Path(paths["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "base" in comparison_table([a, a]) and "base (2)" in comparison_table([a, a])


def test_compare_cli(tmp_path):
    for name, v in (("x", 10.0), ("y", 20.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_fake_results(name, name, v, v)))
    assert cli_main(["eval", "compare", str(tmp_path / "x"), str(tmp_path / "y" / "results.json"),
                     "--output", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.png").exists()
    assert cli_main(["eval", "compare", str(tmp_path / "nope.json"), "--output", str(tmp_path / "c2")]) == 2


# --------------------------------------------------------------------------- end to end on the tiny model

def _eval_cfg(model_dir: Path, out: Path, **extra) -> EvalConfig:
    values = dict(model=str(model_dir), label="tiny", backend="transformers",
                  benchmarks=[{"name": "math500", "limit": 20}], sampling={"n": 2, "max_tokens": 32, "seed": 3},
                  pass_k=[1, 2], output_dir=str(out), grading_workers=1, progress=False,
                  transformers={"device": "cpu", "batch_size": 8}, batch_size=8)
    values.update(extra)
    return EvalConfig.model_validate(values)


def test_end_to_end_tiny_model_on_math500(tiny_model_dir, shared_data, tmp_path, monkeypatch):
    from pipeline.evaluate.stage import run

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    out = tmp_path / "eval"
    res = run(_eval_cfg(tiny_model_dir, out))
    m = res["benchmarks"]["math500"]
    assert (m["problems"], m["samples"], m["n_min"]) == (20, 40, 2)
    assert 0.0 <= m["pass@1"] <= 100.0 and m["ci95"][0] <= m["pass@1"] <= m["ci95"][1]
    assert set(m["pass@k"]) == {"1", "2"} and "2" in m["cons@k"]
    assert m["mean_response_tokens"] is not None and m["mean_response_tokens"] <= 32
    assert sum(m["statuses"].values()) == 40
    samples = read_jsonl(out / "math500" / "samples.jsonl")
    assert len(samples) == 40
    assert len({(s["problem_id"], s["sample_index"]) for s in samples}) == 40
    problems = {p["id"]: p for p in read_jsonl(out / "math500" / "problems.jsonl")}
    for s in samples:
        assert s["response"].startswith("<think>\n")  # forced opener is part of the response
        assert s["answer"] == problems[s["problem_id"]]["answer"]
        assert isinstance(s["correct"], bool) and "extracted" in s and s["grade_status"]
        assert s["truncated"] == (s["finish_reason"] == "length")
    gen = read_jsonl(next((out / "math500" / "generations").glob("shard-*.jsonl")))
    user = gen[0]["messages"][0]
    assert [m_["role"] for m_ in gen[0]["messages"]] == ["user", "assistant"]  # no system prompt
    assert user["content"].endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    saved = json.loads((out / "results.json").read_text())
    assert saved["sampling"]["temperature"] == 0.6 and saved["sampling"]["top_p"] == 0.95
    assert saved["backend"] == "transformers" and saved["dtype"] == "float32"
    assert saved["versions"]["torch"] and saved["versions"]["math-verify"] and saved["versions"]["transformers"]
    assert saved["timing"]["generation_s"] > 0 and saved["timing"]["grading_s"] >= 0
    assert (out / "results.md").read_text().count("MATH-500") == 1
    assert (out / "pass1.png").read_bytes()[:4] == b"\x89PNG"
    # The same folder with another sampling protocol is refused, not mixed.
    with pytest.raises(ConfigError, match="protocol.temperature"):
        run(_eval_cfg(tiny_model_dir, out, sampling={"n": 2, "max_tokens": 32, "seed": 3, "temperature": 1.0}))
    # Scoring the generations afresh gives the same numbers as the eval.
    rescored = score(ScoreConfig(inputs=[str(p) for p in (out / "math500" / "generations").glob("shard-*.jsonl")],
                                 output_dir=str(tmp_path / "rescored"), pass_k=[1, 2], progress=False))
    (name, again), = rescored["benchmarks"].items()
    for key in ("pass@1", "ci95", "pass@k", "cons@k", "truncation_rate", "no_answer_rate", "statuses"):
        assert again[key] == m[key], key


def _eval_cli(model_dir: Path, out: Path) -> list[str]:
    """The same eval as a ``distill eval`` command line (flags + --set overrides)."""
    return [sys.executable, "-m", "pipeline.cli", "eval", "--model", str(model_dir), "--label", "tiny",
            "--backend", "transformers", "--n", "2", "--max-tokens", "32", "--output", str(out), "--workers", "1",
            "--set", "benchmarks=[{name: math500, limit: 10}]", "--set", "sampling.seed=5",
            "--set", "pass_k=[1, 2]", "--set", "progress=false", "--set", "transformers.device=cpu",
            "--set", "transformers.batch_size=1", "--set", "batch_size=1"]


def test_eval_resumes_after_sigkill_exactly_once(tiny_model_dir, shared_data, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISTILL_DATA_DIR": str(shared_data)}
    cmd = _eval_cli(tiny_model_dir, out)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "math500" / "generations" / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 4:
            break
        assert proc.poll() is None, "the eval finished before it could be killed"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = read_jsonl(shard)
    assert 4 <= len(before) < 20
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen = read_jsonl(shard)
    assert gen[:len(before)] == before  # finished samples are kept as they were
    assert len(gen) == 20 == len({(g["prompt_id"], g["sample_index"]) for g in gen})
    samples = read_jsonl(out / "math500" / "samples.jsonl")
    assert len(samples) == 20 == len({(s["problem_id"], s["sample_index"]) for s in samples})
    res = json.loads((out / "results.json").read_text())
    m = res["benchmarks"]["math500"]
    assert (m["problems"], m["samples"], m["n_min"]) == (10, 20, 2) and not m.get("partial")
    # A third run (in-process) finds everything done: loads no model, grades nothing, same metrics.
    from pipeline.evaluate.stage import run

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    run(_eval_cfg(tiny_model_dir, out, label="tiny", benchmarks=[{"name": "math500", "limit": 10}],
                  sampling={"n": 2, "max_tokens": 32, "seed": 5}))
    res3 = json.loads((out / "results.json").read_text())
    assert res3["benchmarks"]["math500"] == m
    assert res3["timing"]["per_benchmark"]["math500"]["graded"] == 0
    assert res3["timing"]["model_load_s"] == 0.0


def test_several_models_side_by_side(tiny_model_dir, tiny_teacher_dir, shared_data, tmp_path, monkeypatch):
    from pipeline.evaluate.stage import run

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    out = tmp_path / "cmp"
    cfg = _eval_cfg(tiny_model_dir, out, model=None, label=None,
                    models=[{"model": str(tiny_model_dir), "label": "student"},
                            {"model": str(tiny_teacher_dir), "label": "teacher"}],
                    benchmarks=[{"name": "math500", "limit": 4}, {"name": "gsm8k", "limit": 3}],
                    sampling={"n": 1, "max_tokens": 8}, pass_k=[1])
    res = run(cfg)
    assert [r["label"] for r in res["runs"]] == ["student", "teacher"]
    for label in ("student", "teacher"):
        r = json.loads((out / label / "results.json").read_text())
        assert set(r["benchmarks"]) == {"math500", "gsm8k"}
        assert r["benchmarks"]["gsm8k"]["problems"] == 3
    md = (out / "comparison.md").read_text()
    assert "| student |" in md and "| teacher |" in md and "GSM8K pass@1" in md
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_hf_fallback_offline_is_a_clear_error(monkeypatch):
    import pipeline.evaluate.benchmarks as bm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bm, "data_dirs", lambda: [])
    spec = resolve_spec("aime24")
    assert spec.path == "hf:HuggingFaceH4/aime_2024"
    with pytest.raises(bm.BenchmarkNotFound, match="the Hugging Face dataset 'HuggingFaceH4/aime_2024'"):
        load_problems(spec)
