"""The front door: ``distill --help`` and every subcommand's and sub-action's ``--help`` work, and a
stage module that fails to import stops the CLI with its name instead of vanishing."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pipeline import cli


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree: (), ("eval",), ("eval", "score"), ..."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_command_paths(sub, prefix + (name,)))
    return out


PATHS = _command_paths(cli.build_parser())


def test_the_tree_holds_every_stage_and_sub_action():
    names = {" ".join(p) for p in PATHS}
    for expected in ("generate", "merge", "filter", "sft", "sft check", "kd", "kd cache", "eval", "eval score",
                     "eval compare", "demo"):
        assert expected in names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "distill")
def test_help_of_every_command(path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: distill")
    if path:
        assert f"distill {' '.join(path)}" in text.splitlines()[0]


def test_top_level_help_of_the_installed_script():
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "95% CI" in res.stdout  # the eval summary: a literal percent sign that once crashed --help
    for stage in cli.STAGES:
        assert stage in res.stdout


def test_a_stage_module_that_fails_to_import_is_named(monkeypatch, tmp_path):
    (tmp_path / "broken_stage_mod.py").write_text("import not_a_module_anywhere_42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.STAGES, "broken", "broken_stage_mod")
    with pytest.raises(ImportError, match=r"distill broken: stage module broken_stage_mod failed to import: "
                                          r"ModuleNotFoundError: .*not_a_module_anywhere_42"):
        cli.build_parser()


def test_sub_action_takes_the_stage_flags_before_or_after_its_name(tmp_path):
    parser = cli.build_parser()
    before = parser.parse_args(["kd", "--config", "x.yaml", "cache"])
    after = parser.parse_args(["kd", "cache", "--config", "x.yaml"])
    assert before.config == after.config == "x.yaml"
    assert before.func is after.func
    old = parser.parse_args(["sft", "--config", "x.yaml", "--check"])
    new = parser.parse_args(["sft", "check", "--config", "x.yaml"])
    assert old.check and new.config == old.config == "x.yaml"
