"""What a run prints as it goes: header fields, the CPU mode's table rows, the GPU progress lines.

A header is a list of ``(title, text)`` fields, printed as ``title: text`` lines under a first
line by :func:`format_header` (the same fields become Markdown bullets). The CPU mode prints a
fixed-width table, one row per peer of each configuration as it finishes (:func:`peer_rows`); the
GPU mode prints one progress line per row on stderr (:func:`progress_line`) and its Markdown
table at the end.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from fastrnn._cells import CELLS

from .accuracy import row_failure
from .formatting import fmt_diff, fmt_err, fmt_floor, fmt_ms, fmt_x, noise

Field = Tuple[str, str]


def format_header(first_line: str, fields: Sequence[Field], width: int) -> str:
    """``first_line``, then a ``title: text`` line per field, titles padded to ``width``."""
    return "\n".join([first_line] + [f"{title:{width}s}: {text}" for title, text in fields])


# ---- CPU: one row per peer ------------------------------------------------------------------

_COLUMNS = [  # (title, width, align)
    ("config", 30, "<"), ("peer", 13, "<"), ("fwd ms", 9, ">"), ("GFLOP/s", 8, ">"),
    ("flr%", 7, ">"), ("fwd+bwd ms", 10, ">"), ("GFLOP/s", 8, ">"), ("flr%", 7, ">"),
    ("speedup fwd", 11, ">"), ("speedup f+b", 11, ">"), ("max|y-ref64|", 12, ">"),
    ("max|dx-ref64|", 13, ">"), ("runs", 8, ">"),
]


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, _COLUMNS)).rstrip()


def table_head() -> List[str]:
    """The column titles and their underlines."""
    return [_row([t for t, _, _ in _COLUMNS]), _row(["-" * w for _, w, _ in _COLUMNS])]


def peer_rows(result: Dict[str, object]) -> str:
    """The table rows of one configuration: one per peer, then torch.nn's time over
    fastrnn.torch's when both ran."""
    label = result["config"]["label"]
    lines = []
    for i, (name, entry) in enumerate(result["peers"].items()):
        first = label if i == 0 else ""
        if "error" in entry:
            lines.append(_row([first, name, "error: " + entry["error"]]))
            continue
        fwd, fb = entry["forward"], entry["forward_backward"]
        speed = result["speedup"].get(name, {})
        acc = entry.get("accuracy")
        lines.append(_row([first, name, fmt_ms(fwd), f"{fwd['gflops']:.2f}", fmt_floor(fwd),
                           fmt_ms(fb), f"{fb['gflops']:.2f}", fmt_floor(fb),
                           fmt_x(speed.get("forward")), fmt_x(speed.get("forward_backward")),
                           fmt_diff(acc), fmt_diff(acc and acc["grad_input"]),
                           f"{fwd['n']}{noise(fwd)}/{fb['n']}{noise(fb)}"]))
    adapter = result.get("speedup_torch_adapter")
    if adapter:
        torch_class = CELLS[result["config"]["cell"]].torch_class
        lines.append(_row(["", f"  torch.nn.{torch_class} time / "
                               f"fastrnn.torch's: fwd {fmt_x(adapter['forward'])}, "
                               f"fwd+bwd {fmt_x(adapter['forward_backward'])}"]))
    return "\n".join(lines)


# ---- GPU: one progress line per row ---------------------------------------------------------

def progress_line(i: int, n: int, r: Dict[str, object], seconds: float) -> str:
    """``[i/n] label (seconds): algo, both sides' times and ratio, fastrnn's error``."""
    head = f"[{i:>{len(str(n))}}/{n}] {r['row']['label']} ({seconds:.1f} s)"
    failed = row_failure(r)
    if failed and not r.get("ratio"):
        return f"{head}: FAILED {failed}"
    algo, ratio, fr, cu = r["algo"], r["ratio"], r["fastrnn"], r["cudnn"]
    parts = [f"algo {algo['forward']}/{algo['forward_backward']}"]
    for kind, label in (("forward", "fwd"), ("forward_backward", "f+b")):
        parts.append(f"{label} {fr[kind]['median_s'] * 1e3:.3f} ms vs cuDNN "
                     f"{cu[kind]['median_s'] * 1e3:.3f} ({ratio[kind]:.2f}x)")
    vs = (r.get("accuracy") or {}).get("fastrnn_vs_cudnn")
    if vs:
        parts.append(f"err y {fmt_err(vs['y'])}")
    return f"{head}: " + "; ".join(parts) + (f"; {failed}" if failed else "")
