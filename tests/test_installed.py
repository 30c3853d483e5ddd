"""Installed outside the repository (a plain ``pip install``), the package finds the public sets
through ``DISTILL_DATA_DIR`` (or the hub), never through the repository layout, and a filter asked to
decontaminate against a set it cannot find stops with one line instead of passing records on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the project: the site folder holding pipeline/, filters/, prompts/."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in ("pipeline", "filters", "prompts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = tmp / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.skip(f"cannot pip install here: {res.stderr.strip()[-300:]}")
    return site


def _run(site: Path, cwd: Path, *argv: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISTILL_DATA_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if data_dir is not None:
        env["DISTILL_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_installed_filter_finds_sets_only_through_the_data_dir(installed, tmp_path, shared_data):
    # a user folder whose ../shared/data holds the sets: the installed code must not look there
    (tmp_path / "shared").symlink_to(shared_data.parent)
    work = tmp_path / "work"
    work.mkdir()
    where = _run(installed, work, "-c", "import pipeline, filters; print(pipeline.__file__, filters.__file__)")
    assert where.stdout.split() == [str(installed / "pipeline" / "__init__.py"), str(installed / "filters" / "__init__.py")]
    (work / "traces.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\nThe answer is \\boxed{4}."}], "answer": "4"}) + "\n")
    args = ("-m", "pipeline.cli", "filter", "--inputs", "traces.jsonl", "--workers", "1", "--set",
            "decontam.benchmarks=[math500, gsm8k]")
    refused = _run(installed, work, *args, "--output", "out")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "distill filter: error: benchmark math500: tried DISTILL_DATA_DIR (not set")
    assert not (work / "out" / "kept.jsonl").exists()
    ok = _run(installed, work, *args, "--output", "out2", data_dir=shared_data)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((work / "out2" / "report.json").read_text())
    assert [(b["location"], b["sha256_of"]) for b in report["decontam_benchmarks"]] == [
        (str(shared_data / "math500.jsonl"), "file"), (str(shared_data / "gsm8k_test.jsonl"), "file")]
