"""The two PNG charts of a bench: speedup per category, and acceptance rate per category (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from quickdraft.bench.records import Config
from quickdraft.bench.summary import OVERALL, Figures


def grouped_bars(
    path: Path,
    title: str,
    ylabel: str,
    categories: Sequence[str],
    series: dict[str, list[float | None]],
    *,
    reference_line: float | None = None,
    percent: bool = False,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) + 2), 4.2), dpi=120)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(categories))]
        ys = [0.0 if v is None else (100 * v if percent else v) for v in values]
        ax.bar(xs, ys, width=width, label=name)
    if reference_line is not None:
        ax.axhline(reference_line, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_charts(out_dir: Path, configs: Sequence[Config], summary: dict[str, dict[str, Figures]],
                 title: str) -> list[str]:
    """speedup.png and acceptance.png in out_dir; returns the file names written."""
    from quickdraft.bench.report import ACCEPTANCE_CHART, SPEEDUP_CHART

    shown = [c for c in configs if not c.is_baseline]
    if not shown:
        return []
    categories = list(next(iter(summary.values())))
    categories = [c for c in categories if c != OVERALL] + [OVERALL]
    speedups = {c.name: [summary[c.name][cat].speedup for cat in categories] for c in shown}
    grouped_bars(out_dir / SPEEDUP_CHART, f"Speedup over the target alone: {title}", "speedup (x)",
                 categories, speedups, reference_line=1.0)
    acceptance = {c.name: [summary[c.name][cat].acceptance_rate for cat in categories] for c in shown}
    grouped_bars(out_dir / ACCEPTANCE_CHART, f"Draft acceptance rate: {title}", "accepted drafts (%)",
                 categories, acceptance, percent=True)
    return [SPEEDUP_CHART, ACCEPTANCE_CHART]
