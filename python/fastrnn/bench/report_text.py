"""What a run prints as it goes: header fields, the CPU mode's and the RL suite's table rows, the
GPU progress lines.

A header is a list of ``(title, text)`` fields, printed as ``title: text`` lines under a first
line by :func:`format_header` (the same fields become Markdown bullets). The CPU mode prints a
fixed-width table, one row per peer of each configuration as it finishes (:func:`peer_rows`), the
RL suite one line per row as it finishes (:func:`rl_row`), both laid out by one fixed-width
formatter (:func:`fixed_width`); the GPU mode prints one progress line per row on stderr
(:func:`progress_line`) and its Markdown table at the end.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from fastrnn._cells import CELLS

from .accuracy import rl_failure, row_failure
from .formatting import fmt_diff, fmt_err, fmt_floor, fmt_ms, fmt_x, noise
from .jax_peers import flax_cell_name
from .targets import rl_target_text

Field = Tuple[str, str]


def format_header(first_line: str, fields: Sequence[Field], width: int) -> str:
    """``first_line``, then a ``title: text`` line per field, titles padded to ``width``."""
    return "\n".join([first_line] + [f"{title:{width}s}: {text}" for title, text in fields])


Column = Tuple[str, int, str]  # (title, width, align)


def fixed_width(cells: Sequence[str], columns: Sequence[Column]) -> str:
    """One line of a fixed-width table: each cell padded to its column, two spaces apart."""
    return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, columns)).rstrip()


def fixed_width_head(columns: Sequence[Column]) -> List[str]:
    """The column titles and their underlines."""
    return [fixed_width([t for t, _, _ in columns], columns),
            fixed_width(["-" * w for _, w, _ in columns], columns)]


# ---- CPU: one row per peer ------------------------------------------------------------------

_COLUMNS = [  # (title, width, align)
    ("config", 30, "<"), ("peer", 13, "<"), ("fwd ms", 9, ">"), ("GFLOP/s", 8, ">"),
    ("flr%", 7, ">"), ("fwd+bwd ms", 10, ">"), ("GFLOP/s", 8, ">"), ("flr%", 7, ">"),
    ("speedup fwd", 11, ">"), ("speedup f+b", 11, ">"), ("max|y-ref64|", 12, ">"),
    ("max|dx-ref64|", 13, ">"), ("runs", 8, ">"),
]


def _row(cells: Sequence[str]) -> str:
    return fixed_width(cells, _COLUMNS)


def table_head() -> List[str]:
    """The column titles and their underlines."""
    return fixed_width_head(_COLUMNS)


def peer_rows(result: Dict[str, object]) -> str:
    """The table rows of one configuration: one per peer, then torch.nn's time over
    fastrnn.torch's and Flax's over fastrnn.jax's, each when both ran."""
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
    cell = result["config"]["cell"]
    for key, framework, adapter in (
            ("speedup_torch_adapter", f"torch.nn.{CELLS[cell].torch_class}", "fastrnn.torch"),
            ("speedup_jax_adapter", f"Flax nnx.RNN({flax_cell_name(cell)})", "fastrnn.jax")):
        ratio = result.get(key)
        if ratio:
            lines.append(_row(["", f"  {framework} time / {adapter}'s: fwd "
                                   f"{fmt_x(ratio['forward'])}, fwd+bwd "
                                   f"{fmt_x(ratio['forward_backward'])}"]))
    return "\n".join(lines)


# ---- RL suite: one line per row -------------------------------------------------------------

RL_COLUMNS = [
    ("row", 44, "<"), ("fastrnn ms", 10, ">"), ("torch ms", 9, ">"), ("fwd x", 7, ">"),
    ("flr%", 6, ">"), ("fastrnn f+b", 11, ">"), ("torch f+b", 9, ">"), ("f+b x", 7, ">"),
    ("flr%", 6, ">"), ("err y", 7, ">"), ("err grad", 8, ">"), ("runs", 9, ">"),
    ("target", 0, "<"),
]


def rl_table_head() -> List[str]:
    return fixed_width_head(RL_COLUMNS)


def rl_row(result: Dict[str, object]) -> str:
    """One RL row: both sides' median times (ms; per call for a stream), torch.nn's over
    fastrnn.torch's, fastrnn.torch's floor fraction, the errors, the runs, the targets."""
    label = result["row"]["label"]
    failed = rl_failure(result)
    sides = result.get("sides", {})
    fast, torch_nn = sides.get("fastrnn.torch", {}), sides.get("torch.nn", {})
    if failed and not result.get("ratio"):
        return fixed_width([label, "error: " + failed], RL_COLUMNS[:1] + [("", 0, "<")])
    cells = [label]
    runs = []
    for kind in ("forward", "forward_backward"):
        a, b = fast.get(kind), torch_nn.get(kind)
        if a is None or b is None:
            cells += ["", "", "", ""]
            continue
        cells += [fmt_ms(a), fmt_ms(b), fmt_x(result["ratio"][kind]), fmt_floor(a)]
        runs.append(f"{a['n']}{noise(a)}/{b['n']}{noise(b)}")
    acc = result.get("accuracy") or {}
    cells += [fmt_err(acc["y"]) if "y" in acc else "",
              fmt_err(acc["grad"]) if "grad" in acc else "", " ".join(runs),
              rl_target_text(result) + (f"; {failed}" if failed else "")]
    return fixed_width(cells, RL_COLUMNS)


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
