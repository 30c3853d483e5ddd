"""The PNG charts the stages write next to their JSON reports (matplotlib, headless Agg backend).

Small generic helpers; a stage calls one with its numbers and a path. Plotting never fails a
run: an error is logged and the function returns ``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["histogram", "barh", "bars_with_intervals", "lines"]

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


def bars_with_intervals(groups: Sequence[str], series: dict[str, Sequence[tuple[float, float, float]]],
                        path: str | Path, title: str, ylabel: str) -> Path | None:
    """Grouped bars with error bars: ``series[name][i] = (value, low, high)`` for ``groups[i]``."""
    try:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(series))), 4.5))
        width = 0.8 / max(1, len(series))
        for j, (name, vals) in enumerate(series.items()):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
            ys = [v[0] for v in vals]
            err = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
            ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=name)
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend(fontsize=8)
        return _save(fig, path)
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
