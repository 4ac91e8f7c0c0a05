"""The speed-up plot (``--plot``, CPU mode): peer time / fastrnn time against the batch size.

A panel per cell, a line per peer, phase and the rest of the configuration (H, T, ...), both
axes logarithmic. Needs matplotlib, which the benchmark does not otherwise need: the command line
imports it (:func:`import_pyplot`) before anything runs, so a missing matplotlib fails at once.
"""
from __future__ import annotations

from typing import Dict, List

from fastrnn._cells import MODES, num_gates

from .report_json import write_atomically

# label, line style, marker face (hollow markers tell the phases apart where a line has 1 point)
_PHASES = {"forward": ("fwd", "-", None), "forward_backward": ("fwd+bwd", "--", "none")}
# Panels: the cells with the most gates first (lstm, gru, then the vanilla cells).
_PLOT_CELLS = tuple(sorted(MODES, key=lambda mode: -num_gates(mode)))


def import_pyplot():
    """matplotlib's pyplot on a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _series_name(label: str) -> str:
    """A configuration label without its cell and batch size: what a line of the plot keeps."""
    return " ".join(w for w in label.split()[1:] if not w.startswith("B="))


def write_plot(path: str, results: List[Dict[str, object]], plt) -> None:
    """Speed-up (peer time / fastrnn time) against the batch size: a panel per cell, a line per
    peer, phase and the rest of the configuration (H, T, ...)."""
    series: Dict[tuple, List[tuple]] = {}
    for r in results:
        cfg = r["config"]
        for name, ratio in r["speedup"].items():
            for phase in _PHASES:
                key = (cfg["cell"], name, phase, _series_name(cfg["label"]))
                series.setdefault(key, []).append((cfg["B"], ratio[phase]))
    cells = [c for c in _PLOT_CELLS if any(r["config"]["cell"] == c for r in results)]
    ncols = min(2, len(cells))
    fig, axes = plt.subplots((len(cells) + 1) // 2, ncols, squeeze=False,
                             figsize=(6.5 * ncols, 4.5 * ((len(cells) + 1) // 2)))
    for ax, cell in zip(axes.flat, cells):
        batches = sorted({r["config"]["B"] for r in results if r["config"]["cell"] == cell})
        _draw_panel(ax, cell, series, batches, plt)
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _draw_panel(ax, cell: str, series: Dict[tuple, List[tuple]], batches: List[int],
                plt) -> None:
    """One cell's panel: its series (colour by peer, marker by shape), on log-log axes."""
    peers = list(dict.fromkeys(key[1] for key in series))
    shapes = list(dict.fromkeys(key[3] for key in series))
    for (c, name, phase, shape), points in series.items():
        if c != cell:
            continue
        bs, ratios = zip(*sorted(points))
        label, style, face = _PHASES[phase]
        ax.plot(bs, ratios, style, color=f"C{peers.index(name)}",
                marker="osD^v<>p*h"[shapes.index(shape) % 10], markerfacecolor=face,
                label=f"vs {name}, {label}, {shape}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])  # the measured sizes, not 10^k
    ax.set_xticks([], minor=True)
    ax.set_title(cell)
    ax.set_xlabel("batch size B")
    ax.set_yscale("log")  # a ratio: 2x and 0.5x equally far from 1
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(plt.LogFormatter(labelOnlyBase=False))  # 0.5, 2, 3 rather than 5x10^-1 ...
    ax.set_ylabel("peer time / fastrnn time")
    ax.legend(fontsize="x-small")
