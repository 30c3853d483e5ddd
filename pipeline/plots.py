"""The PNG charts the stages write next to their JSON reports (matplotlib, headless Agg backend).

Small generic helpers; a stage calls one with its numbers and a path. Plotting never fails a
run: an error is logged and the function returns ``None``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["histogram", "barh", "bars_with_intervals", "interval_figure", "lines", "shorten"]

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def histogram(values: Sequence[float], path: str | Path, title: str, xlabel: str, bins: int = 50,
              vlines: dict[str, float] | None = None) -> Path | None:
    """A histogram (e.g. completion lengths), with optional labelled vertical lines (e.g. max_tokens)."""
    try:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(list(values), bins=bins, color="#4C72B0", edgecolor="white")
        for label, x in (vlines or {}).items():
            ax.axvline(x, color="#C44E52", linestyle="--", label=label)
        if vlines:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        return _save(fig, path)
    except Exception as exc:  # a chart must never fail a run
        log.warning("could not write %s: %s", path, exc)
        return None


def barh(labels: Sequence[str], values: Sequence[float], path: str | Path, title: str, xlabel: str,
         annotate: Sequence[str] | None = None) -> Path | None:
    """Horizontal bars, top to bottom in the given order (e.g. a filter funnel)."""
    try:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
        ys = list(range(len(labels)))[::-1]
        ax.barh(ys, list(values), color="#4C72B0")
        ax.set_yticks(ys, list(labels))
        for y, v, text in zip(ys, values, annotate or [f"{v:g}" for v in values]):
            ax.text(v, y, f" {text}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        return _save(fig, path)
    except Exception as exc:
        log.warning("could not write %s: %s", path, exc)
        return None


def shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle with an ellipsis to at most ``limit`` characters (keeps both ends:
    an org prefix and a checkpoint suffix both tell models apart)."""
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep - keep // 2] + "\u2026" + text[len(text) - keep // 2:]


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False)) or text


BAR_IN = 0.32  # inches per bar: room for a value label rotated upright above its interval


def interval_figure(groups: Sequence[str], series: dict[str, Sequence[tuple[float, float, float]]], title: str,
                    ylabel: str):
    """The figure of :func:`bars_with_intervals` (returned, not saved, so tests can measure its labels).

    Readable at any size: bars keep a fixed width (the figure grows, up to 18 in, then bars thin);
    each value sits above its interval, upright when the bar is narrow; group names wrap; long series
    names are shortened in the middle and the legend sits below the axes, never on the bars.
    """
    plt = _plt()
    n_series = max(1, len(series))
    width_in = min(18.0, max(6.0, 1.2 + len(groups) * (n_series * BAR_IN + 0.35)))
    fig, ax = plt.subplots(figsize=(width_in, 4.8))
    slot = 0.8 / n_series
    bar_in = (width_in - 1.2) / max(1, len(groups)) * slot
    upright = bar_in < 0.45
    top = 0.0
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (n_series - 1) / 2) * slot for i in range(len(groups))]
        ys = [v[0] for v in vals]
        err = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
        ax.bar(xs, ys, width=slot * 0.92, yerr=err, capsize=2, label=shorten(name, 48), error_kw={"linewidth": 0.8})
        for x, v in zip(xs, vals):
            if any(math.isnan(t) for t in v):  # no number (e.g. the paper did not report this set): no label
                continue
            ax.annotate(f"{v[0]:.1f}", (x, max(v)), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, rotation=90 if upright else 0)
            top = max(top, max(v))
    wrap_at = max(8, int((width_in - 1.2) / max(1, len(groups)) * 11))
    ax.set_xticks(range(len(groups)), [_wrap(str(g), wrap_at) for g in groups], fontsize=8)
    ax.set_ylim(0, max(1.0, top) * (1.22 if upright else 1.12))
    if 50 < top <= 100:  # percentages: the headroom above 100 holds labels, not values
        ax.set_yticks([t for t in range(0, 101, 20)])
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(shorten(title, 140), max(40, int(width_in * 11))), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    if len(series) > 1:  # hung below the figure (after the layout), so it can cover neither bars nor group names
        fig.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(series), 2),
                   frameon=False)
    return fig


def bars_with_intervals(groups: Sequence[str], series: dict[str, Sequence[tuple[float, float, float]]],
                        path: str | Path, title: str, ylabel: str) -> Path | None:
    """Grouped bars with error bars: ``series[name][i] = (value, low, high)`` for ``groups[i]``."""
    try:
        fig = interval_figure(groups, series, title, ylabel)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": the legend below the axes is kept
        _plt().close(fig)
        return path
    except Exception as exc:
        log.warning("could not write %s: %s", path, exc)
        return None


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
          xlabel: str, ylabel: str, logy: bool = False) -> Path | None:
    """Line chart of named ``(xs, ys)`` series (e.g. loss curves)."""
    try:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), label=name)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend()
        return _save(fig, path)
    except Exception as exc:
        log.warning("could not write %s: %s", path, exc)
        return None
