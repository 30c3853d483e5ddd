"""One writer per output: every writing stage refuses, with one line and exit code 2, to write where
another process holds the output's lock (``pipeline.locking.output_lock``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.locking import lock_path

HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline.locking import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def held():
    """``held(path)``: another process takes the output lock of ``path`` and keeps it for the test."""
    procs = []

    def hold(path: Path) -> Path:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return path

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def _prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                            for i in range(3)))
    return path


def _fake_model(path: Path) -> Path:
    """A folder that passes the up-front model check (the lock is refused before anything loads it)."""
    path.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    return path


def _train_yaml(tmp_path: Path, extra: str = "") -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"model: {_fake_model(tmp_path / 'model')}\ndata: [{data}]\noutput_dir: {tmp_path / 'run'}\n{extra}")
    return cfg


def _shard_folder(tmp_path: Path) -> Path:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "shard-00000-of-00001.jsonl").write_text("")
    return gen


CASES = {
    "generate": (lambda t: t / "gen" / "shard-00000-of-00001.jsonl",
                 lambda t: ["generate", "--model", str(_fake_model(t / "m")), "--backend", "transformers",
                            "--input", str(_prompts(t / "p.jsonl")), "--output", str(t / "gen")]),
    "merge": (lambda t: t / "merged.jsonl",
              lambda t: ["merge", "--inputs", str(_shard_folder(t)), "--output", str(t / "merged.jsonl")]),
    "sft": (lambda t: t / "run", lambda t: ["sft", "--config", str(_train_yaml(t))]),
    "kd": (lambda t: t / "run", lambda t: ["kd", "--config", str(_train_yaml(t, f"teacher: {_fake_model(t / 'tm')}\n"))]),
    "kd cache": (lambda t: t / "cache",
                 lambda t: ["kd", "cache", "--config", str(_train_yaml(t, f"teacher: {_fake_model(t / 'tm')}\n")),
                            "--teacher-cache", str(t / "cache")]),
    "eval": (lambda t: t / "ev", lambda t: ["eval", "--model", str(t / "m"), "--output", str(t / "ev")]),
    "eval score": (lambda t: t / "sc", lambda t: ["eval", "score", "--input", str(_prompts(t / "r.jsonl")),
                                                  "--output", str(t / "sc")]),
    "demo": (lambda t: t / "demo", lambda t: ["demo", "--output", str(t / "demo")]),
}


@pytest.mark.parametrize("stage", list(CASES))
def test_a_second_writer_is_refused_in_one_line(stage, tmp_path, held, capsys):
    output, argv = CASES[stage]
    locked = held(output(tmp_path))
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"distill {stage.split()[0]}: error: {locked}: another distill {stage}" in err
    assert str(lock_path(locked)) in err


def test_only_the_main_rank_of_a_launch_takes_the_lock(tmp_path, held, monkeypatch):
    """Under ``accelerate launch``/``torchrun`` every rank runs the stage on one folder: rank 0 holds the lock."""
    from pipeline.errors import OutputBusy
    from pipeline.locking import launcher_output_lock

    out = held(tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    with launcher_output_lock(out, "distill sft"):
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(OutputBusy, match="another distill sft"):
        with launcher_output_lock(out, "distill sft"):
            pass
