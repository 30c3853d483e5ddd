"""``distill demo``: config handling (fast) and the --quick end-to-end run (the suite's
generate -> filter -> sft -> kd -> eval test on real tiny models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.demo.stage import DEFAULT_QUICK, DemoConfig, _apply_quick

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"


def test_config_file_loads_and_quick_shrinks_it():
    cfg = load_config(DemoConfig, CONFIG)
    assert cfg.world.n_test >= 100 and cfg.filter_preset == "configs/filter/r1.yaml"
    assert _apply_quick(cfg) is cfg  # quick off: unchanged
    quick = _apply_quick(cfg.model_copy(update={"quick": True}))
    assert quick.eval.n < cfg.eval.n and quick.fault_probe.n < cfg.fault_probe.n
    assert quick.student.train.steps < cfg.student.train.steps
    assert quick.teacher == cfg.teacher  # one cached teacher serves both settings
    assert [o.split("=")[0] for o in cfg.quick_overrides] == [o.split("=")[0] for o in DEFAULT_QUICK]


def test_explicit_set_wins_over_quick():
    from pipeline.cli import build_parser
    from pipeline.demo.stage import config_from_cli

    args = build_parser().parse_args(["demo", "--quick", "--set", "student.train.steps=7", "--set", "eval.n=3"])
    cfg = _apply_quick(config_from_cli(args))
    assert (cfg.student.train.steps, cfg.eval.n) == (7, 3)
    quick = _apply_quick(config_from_cli(build_parser().parse_args(["demo", "--quick"])))
    assert quick.eval.n == 1 and 7 < quick.student.train.steps < load_config(DemoConfig, CONFIG).student.train.steps


def test_bad_keys_are_errors_naming_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="teacher.hidden_sise"):
        load_config(DemoConfig, CONFIG, overrides=["teacher.hidden_sise=3"])
    bad = load_config(DemoConfig, CONFIG).model_copy(update={"quick": True, "quick_overrides": ["world.nope=1"]})
    with pytest.raises(ConfigError, match="world.nope"):
        _apply_quick(bad)
    assert main(["demo", "--config", str(CONFIG), "--set", "world.fault_rate=1.5",
                 "--output", str(tmp_path / "x")]) == 2
    assert "world.fault_rate" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_demo_end_to_end(tmp_path):
    """The --quick demo: the SFT student clearly beats the untrained one on held-out problems, the
    filter removed each kind of fault for its reason, and a rerun resumes without redoing work."""
    from pipeline.demo.stage import run

    cfg = load_config(DemoConfig, CONFIG, values={"quick": True, "output_dir": str(tmp_path / "demo"),
                                                  "cache_dir": str(tmp_path / "cache"), "progress": False})
    summary = run(cfg)
    p1 = {k: v["pass@1"] for k, v in summary["pass1"].items()}
    assert p1["student (untrained)"] <= 5.0
    assert p1["student SFT (filtered)"] >= p1["student (untrained)"] + 25.0, p1
    assert p1["teacher"] >= 50.0, p1

    reasons = summary["filter"]["rejected_by_rule"]
    for reason in ("wrong_answer", "redundancy", "mixed_language", "code_block", "contaminated"):
        assert reasons.get(reason, 0) > 0, (reason, reasons)
    out = Path(cfg.output_dir)
    test_ids = {json.loads(line)["id"] for line in (out / "data" / "test.jsonl").read_text().splitlines()}
    kept = [json.loads(line) for line in (out / "filter" / "kept.jsonl").read_text().splitlines()]
    assert kept and not {r["prompt_id"] for r in kept} & test_ids
    for r in kept:  # nothing the style rules target survived
        text = r["messages"][-1]["content"]
        assert "```" not in text and not re.search(r"[\u4e00-\u9fff]", text)

    # the fault probe (T=1): teacher and trained students answered every held-out problem, and the student
    # trained on unfiltered traces repeats the teacher's faults more often than the one trained on kept traces
    probe = summary["faults"]["probe"]
    assert set(probe) == {"teacher", "student SFT (filtered)", "student KD (filtered)", "student SFT (unfiltered)"}
    n_probe = _apply_quick(cfg).fault_probe.n  # --quick draws one probe sample per problem
    assert all(row["responses"] == summary["world"]["test"] * n_probe for row in probe.values())
    assert probe["student SFT (unfiltered)"]["any"] > probe["student SFT (filtered)"]["any"], probe
    assert set(summary["faults"]["eval"]) == set(summary["pass1"])

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "fault probe" in report
    assert summary["verdict"] in report and "Pass@1" in report
    for png in ("pass1.png", "faults.png", "funnel.png"):
        assert (out / png).stat().st_size > 1000

    # a rerun finds every step done and the teacher cached
    again = run(cfg)
    assert again["teacher"]["cached"] is True
    assert again["pass1"] == summary["pass1"]
    assert all(v == 0.0 for k, v in again["timings_s"].items() if k != "total")
