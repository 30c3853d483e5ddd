"""Benchmark sets are found without the repository layout: an explicit path, ``$DISTILL_DATA_DIR``,
or the Hugging Face hub; when none works the error says what was tried. Decontamination that cannot
load a set is an error, and its report names every set's file and sha256."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filters.config import FilterConfig
from filters.decontam import BenchmarkIndex, benchmark_sources
from pipeline.cli import main
from pipeline.evaluate.benchmarks import KNOWN, BenchmarkNotFound, load_problems, problem_texts, resolve_spec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_installed_code_does_not_search_the_shared_folder(tmp_path, monkeypatch):
    """From a folder whose ../shared/data holds the sets, without DISTILL_DATA_DIR nothing is found there."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "aime24.jsonl").write_text(json.dumps({"id": 1, "problem": "p", "answer": "1"}) + "\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    with pytest.raises(BenchmarkNotFound, match=r"benchmark aime24: tried DISTILL_DATA_DIR \(not set; .*aime24.jsonl\); "
                                                r"the Hugging Face hub is off"):
        resolve_spec("aime24", hf_fallback=False)


def test_hub_unreachable_names_everything_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchmarkNotFound) as exc:
        load_problems("math500")
    msg = str(exc.value)
    assert f"{tmp_path / 'math500.jsonl'} (not found), then the Hugging Face dataset 'HuggingFaceH4/MATH-500'" in msg
    assert "\n" not in msg


def test_gsm8k_hub_mapping_matches_the_real_dataset_columns(tmp_path, monkeypatch):
    """openai/gsm8k (config main): only `question` and `answer` ("... #### 1,234"); the hub spec must not
    ask for a column it lacks. Checked on a local file with exactly that schema."""
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    spec = resolve_spec("gsm8k", hf_fallback=True)
    assert spec.path == "hf:openai/gsm8k:main" and spec.split == "test"
    hub_like = tmp_path / "gsm8k_hub.jsonl"
    hub_like.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"work\n#### {i},000"}) + "\n"
                                for i in range(1, 4)))
    probs = load_problems(spec.model_copy(update={"path": str(hub_like)}))
    assert [(p.id, p.problem, p.answer) for p in probs] == [("0", "Q1?", "1000"), ("1", "Q2?", "2000"),
                                                            ("2", "Q3?", "3000")]


def test_gsm8k_ids_agree_between_the_local_copy_and_the_hub_rows(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    local = load_problems("gsm8k", hf_fallback=False)
    assert [p.id for p in local[:3]] == ["0", "1", "2"]  # the hub spec numbers rows the same way
    assert KNOWN["gsm8k"].hf_id is None


def test_decontam_missing_benchmark_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkNotFound, match=r"decontam: benchmark 'nope.jsonl': no such file \(relative paths "
                                                rf"start at {tmp_path}\)"):
        BenchmarkIndex(["nope.jsonl"], 13)


def test_decontam_default_sets_and_report_hashes(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    own = tmp_path / "held_out.jsonl"
    own.write_text(json.dumps({"question": "How many primes are below one hundred, counting two and also ninety-seven?"})
                   + "\n")
    sources = benchmark_sources(FilterConfig(decontam={"benchmarks": ["math500", "aime24", "amc23", "gsm8k",
                                                                      str(own)]}).decontam)
    assert [s["location"] for s in sources] == [str(shared_data / f) for f in
                                                ("math500.jsonl", "aime24.jsonl", "amc23.jsonl", "gsm8k_test.jsonl")] \
        + [str(own.resolve())]
    assert [s["problems"] for s in sources] == [500, 30, 40, 1319, 1]
    for s in sources:
        assert s["sha256"] == _sha(Path(s["location"])) and s["sha256_of"] == "file"
    assert problem_texts(str(own))[1] == [("held_out:1", "How many primes are below one hundred, counting two and "
                                                         "also ninety-seven?")]


def _filter_cli(tmp_path: Path, *extra: str) -> list[str]:
    inp = tmp_path / "traces.jsonl"
    inp.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"},
                                            {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\\boxed{4}"}],
                               "answer": "4"}) + "\n")
    return ["filter", "--inputs", str(inp), "--output", str(tmp_path / "out"), "--workers", "1", *extra]


def test_filter_run_asked_to_decontaminate_without_sets_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(_filter_cli(tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("distill ")]
    assert "Traceback" not in err and len(lines) == 1
    assert "benchmark math500: tried DISTILL_DATA_DIR (not set" in lines[0] and "HuggingFaceH4/MATH-500" in lines[0]
    assert not (tmp_path / "out" / "kept.jsonl").exists()


def test_filter_report_names_the_sets_and_their_sha256(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    assert main(_filter_cli(tmp_path, "--set", "decontam.benchmarks=[aime24]")) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["decontam_benchmarks"] == [{"name": "aime24", "location": str(shared_data / "aime24.jsonl"),
                                              "sha256": _sha(shared_data / "aime24.jsonl"), "sha256_of": "file",
                                              "problems": 30}]
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"Decontaminated against: aime24 ({shared_data / 'aime24.jsonl'}, 30 problems, sha256 of the file " \
           f"{_sha(shared_data / 'aime24.jsonl')[:16]}" in md


def test_eval_without_data_dir_says_what_it_tried(tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", "--model", str(tmp_path / "m"),
                          "--benchmarks", "aime24", "--output", str(tmp_path / "ev")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("distill eval: error: benchmark aime24: tried DISTILL_DATA_DIR")
    assert not (tmp_path / "ev" / "eval_run.json").exists()
