"""Markdown reports (``--markdown``, for bench/RESULTS.md): a titled document and its tables.

:func:`markdown_document` lays out either mode's report: a title, the exact command, the header
fields as bullets, then the body. The CPU mode's body is :func:`peer_table` (fastrnn's times and
each peer's ratio, a row per configuration, with each adapter pair's ratio where both ran)
followed by the pairs' geometric means; the GPU mode's is :func:`cudnn_table` (fastrnn.torch
against cuDNN, a row per shape and dtype), which it also prints; the RL suite's is
:func:`rl_table` (fastrnn.torch against torch.nn, a row per workload).
"""
from __future__ import annotations

import shlex
from typing import Dict, List, Sequence, Tuple

from .accuracy import rl_failure, row_failure
from .formatting import fmt_diff, fmt_err, fmt_errs, fmt_floor, fmt_ms, fmt_x, noise
from .peers import ADAPTER_PAIRS, ADAPTER_TITLES, BASELINE
from .targets import missed_targets, rl_target_text

_PHASES = ("forward", "forward_backward")


def md_table(rows: List[List[str]], right_from: int) -> List[str]:
    """A Markdown table; columns from ``right_from`` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(rows[0]))]
    return ["| " + " | ".join(r) + " |" for r in [rows[0], align] + rows[1:]]


def markdown_document(title: str, argv: Sequence[str], fields: Sequence[Tuple[str, str]],
                      body: List[str]) -> str:
    """``### title``, the command that ran, a ``- title: text`` bullet per field, ``body``."""
    lines = [f"### {title}", "",
             f"- command: `{shlex.join(['python', '-m', 'fastrnn.bench', *argv])}`",
             *(f"- {name}: {text}" for name, text in fields)]
    return "\n".join(lines + body) + "\n"


def other_peers(results: List[Dict[str, object]]) -> List[str]:
    """The peers of a CPU run besides the baseline, in the order they ran."""
    return [name for name in dict.fromkeys(n for r in results for n in r["peers"])
            if name != BASELINE]


# ---- CPU: fastrnn against its peers ---------------------------------------------------------

def peer_table(results: List[Dict[str, object]]) -> List[str]:
    """A row per configuration: fastrnn's times, each peer's ratio, fastrnn's GFLOP/s, floor
    fraction and accuracy."""
    others = other_peers(results)
    adapters = [key for key in ADAPTER_PAIRS if any(key in r for r in results)]
    header = ["config", "fwd ms", "fwd+bwd ms"]
    header += [f"vs {name} {phase}" for name in others for phase in ("fwd", "fwd+bwd")]
    header += [f"{ADAPTER_TITLES[key]} {p}" for key in adapters for p in ("fwd", "fwd+bwd")]
    header += ["GFLOP/s fwd", "GFLOP/s fwd+bwd", "floor fwd", "floor fwd+bwd",
               "max abs err y", "max abs err dx"]
    rows = [header]
    for r in results:
        base = r["peers"].get(BASELINE, {"error": "not run"})
        if "error" in base:
            rows.append([r["config"]["label"]] + ["error"] * (len(header) - 1))
        else:
            rows.append([r["config"]["label"]] + _peer_cells(r, base, others, adapters))
    return md_table(rows, right_from=1)


def _peer_cells(r: Dict[str, object], base: Dict[str, object], others: List[str],
                adapters: List[str]) -> List[str]:
    cells = [fmt_ms(base[k]) for k in _PHASES]
    for name in others:
        ratio = r["speedup"].get(name)
        cells += [fmt_x(ratio[k]) if ratio else "error" if name in r["peers"] else ""
                  for k in _PHASES]
    for key in adapters:
        ratio = r.get(key)
        cells += [fmt_x(ratio[k]) if ratio else "" for k in _PHASES]
    cells += [f"{base[k]['gflops']:.3g}" for k in _PHASES]
    cells += [fmt_floor(base[k]) for k in _PHASES]
    acc = base.get("accuracy")
    return cells + [fmt_diff(acc), fmt_diff(acc and acc["grad_input"])]


# ---- RL suite: fastrnn.torch against torch.nn -----------------------------------------------

_RL_HEADER = ["row", "group", "fastrnn.torch fwd ms", "torch.nn fwd ms", "fwd ratio",
              "fastrnn.torch f+b ms", "torch.nn f+b ms", "f+b ratio", "floor% fwd",
              "floor% f+b", "err y", "err grad", "targets", "notes"]


def rl_table(results: List[Dict[str, object]]) -> List[str]:
    """A row per RL workload: both sides' times (per call for a stream) and their ratio,
    fastrnn.torch's floor fraction, the errors against torch.nn, the targets, and notes."""
    return md_table([_RL_HEADER] + [_rl_cells(r) for r in results], right_from=2)


def _rl_cells(r: Dict[str, object]) -> List[str]:
    sides, ratio = r.get("sides", {}), r.get("ratio", {})
    fast, torch_nn = sides.get("fastrnn.torch", {}), sides.get("torch.nn", {})
    cells = [r["row"]["label"], r["row"]["group"]]
    for kind in _PHASES:
        for entry in (fast, torch_nn):
            m = entry.get(kind)
            cells.append(fmt_ms(m) + noise(m) if m else "error" if "error" in entry else "")
        cells.append(fmt_x(ratio.get(kind)))
    cells += [fmt_floor(fast[kind]) if kind in fast else "" for kind in _PHASES]
    acc = r.get("accuracy") or {}
    cells += [fmt_err(acc["y"]) if "y" in acc else "", fmt_err(acc["grad"]) if "grad" in acc
              else "", rl_target_text(r)]
    notes = list(acc.get("flags", []))
    failed = rl_failure(r)
    if failed and failed not in notes:
        notes.append(failed)
    return cells + ["; ".join(n.replace("|", "/") for n in notes)]


# ---- GPU: fastrnn.torch against cuDNN -------------------------------------------------------

_CUDNN_HEADER = ["cell", "H", "B", "T", "dtype", "packed", "algo", "fastrnn fwd ms",
                 "cuDNN fwd ms", "fwd ratio", "fastrnn f+b ms", "cuDNN f+b ms", "f+b ratio",
                 "floor% fwd", "floor% f+b", "err y vs cuDNN", "err vs f64 fastrnn y/dx/dW",
                 "err vs f64 cuDNN y/dx/dW", "targets", "notes"]


def cudnn_table(results: List[Dict[str, object]]) -> List[str]:
    """A row per GPU row: both sides' times and their ratio, fastrnn's floor fraction, the
    errors, the targets, and notes (flags, failures, torch.nn off cuDNN)."""
    return md_table([_CUDNN_HEADER] + [_cudnn_cells(r) for r in results], right_from=1)


def _cudnn_cells(r: Dict[str, object]) -> List[str]:
    row = r["row"]
    algo = r.get("algo") or {}
    fwd_algo, fb_algo = algo.get("forward", ""), algo.get("forward_backward", "")
    cells = [row["cell"], str(row["H"]), str(row["B"]), str(row["T"]), row["dtype"],
             "yes" if row["packed"] else "",
             fwd_algo if fwd_algo == fb_algo else f"{fwd_algo}/{fb_algo}"]
    fr, cu, ratio = r.get("fastrnn", {}), r.get("cudnn", {}), r.get("ratio", {})
    for kind in _PHASES:
        for entry in (fr, cu):
            m = entry.get(kind)
            cells.append(fmt_ms(m) + noise(m) if m else "error" if "error" in entry else "")
        cells.append(fmt_x(ratio.get(kind)))
    for kind in _PHASES:
        m = fr.get(kind)
        cells.append(f"{fmt_floor(m)} {r['floor'][kind]['bound'][:3]}" if m else "")
    acc = r.get("accuracy") or {}
    vs = acc.get("fastrnn_vs_cudnn")
    cells += [fmt_err(vs["y"]) if vs else "", fmt_errs(acc.get("fastrnn_vs_f64")),
              fmt_errs(acc.get("cudnn_vs_f64")), missed_targets(r)]
    return cells + ["; ".join(n.replace("|", "/") for n in _notes(r, acc))]


def _notes(r: Dict[str, object], acc: Dict[str, object]) -> List[str]:
    notes = list(acc.get("flags", []))
    failed = row_failure(r)
    if failed and failed not in notes:
        notes.append(failed)
    if r.get("torch_nn_path", "cudnn") != "cudnn":
        notes.append(f"torch.nn path: {r.get('torch_nn_path')}")
    if r.get("reference_error"):
        notes.append(f"float64 reference failed: {r['reference_error']}")
    return notes
