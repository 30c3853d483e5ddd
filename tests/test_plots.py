"""Charts are readable at a glance: in ``pass1.png`` / ``comparison.png`` no two labels overlap, nor a
label and the legend, whatever the number of benchmarks and the length of model names."""

from __future__ import annotations

import itertools

import pytest

from pipeline.plots import bars_with_intervals, interval_figure, shorten

LONG = ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "runs/sft/qwen2.5-1.5b-r1/final",
        "paper: DeepSeek-R1-Distill-Qwen-1.5B", "Qwen2.5-Math-1.5B-Instruct-with-a-really-long-experiment-name-v2",
        "/scratch/team/checkpoints/student-7b-kd-jsd-beta0.5-T2-step-120000/final"]
GROUPS = ["MATH-500", "AIME 2024", "AMC 2023", "GSM8K", "mmlu_stem_college_physics_and_chemistry", "HumanEval",
          "MBPP (test split)", "GPQA-like science", "AIME 2025", "OlympiadBench"]


def _boxes(fig):
    """Window extents of every visible piece of text, by kind."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    out = {"ticks": [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()],
           "values": [t.get_window_extent(renderer) for t in ax.texts],
           "title": [ax.title.get_window_extent(renderer)],
           "legend": [lg.get_window_extent(renderer) for lg in fig.legends]}
    return out, ax.get_window_extent(renderer)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


@pytest.mark.parametrize("n_groups, n_series", [(1, 1), (4, 2), (10, 1), (10, 5), (4, 5)])
def test_no_label_overlaps_another(n_groups, n_series):
    series = {LONG[j]: [(100.0 * ((i * 7 + j * 3) % 10) / 9, max(0.0, 100.0 * ((i * 7 + j * 3) % 10) / 9 - 8),
                         min(100.0, 100.0 * ((i * 7 + j * 3) % 10) / 9 + 8)) for i in range(n_groups)]
              for j in range(n_series)}
    fig = interval_figure(GROUPS[:n_groups], series, f"pass@1, {LONG[4]} vs {LONG[3]}", "pass@1 (%)")
    boxes, axes_box = _boxes(fig)
    everything = [b for kind in boxes.values() for b in kind]
    for a, b in itertools.combinations(everything, 2):
        assert not _overlap(a, b), (a, b)
    for legend in boxes["legend"]:  # the legend sits outside the plotting area: it hides no bar
        assert legend.y1 <= axes_box.y0
    for v in boxes["values"]:  # value labels stay inside the axes (above their interval, under the top)
        assert axes_box.y0 <= v.y0 and v.y1 <= axes_box.y1
    assert fig.get_size_inches()[0] <= 18.0


def test_long_names_are_shortened_in_the_middle():
    s = shorten(LONG[4], 30)
    assert len(s) == 30 and s.startswith("/scratch/team/") and s.endswith("0000/final") and "\u2026" in s
    assert shorten("short", 30) == "short"


def test_missing_numbers_get_no_label(tmp_path):
    nan = float("nan")
    fig = interval_figure(["a", "b"], {"m": [(50.0, 40.0, 60.0), (nan, nan, nan)]}, "t", "y")
    assert [t.get_text() for t in fig.axes[0].texts] == ["50.0"]
    assert bars_with_intervals(["a"], {"m": [(1.0, 0.5, 1.5)]}, tmp_path / "x.png", "t", "y").is_file()
