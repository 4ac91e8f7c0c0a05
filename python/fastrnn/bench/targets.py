"""The targets: how fast fastrnn.torch should be against cuDNN (GPU mode) and against torch.nn
on the RL suite, per row and per run.

GPU: training (forward+backward) must be at least as fast as cuDNN on every row; where cuDNN has
no persistent kernel (GRU, float32 or packed input -- torch only picks cuDNN's persistent
algorithm for unpacked float16) at batch <= 16, forward and forward+backward must each be twice
as fast.

RL suite (:data:`RL_TARGET_RULE`, printed next to the rows, never asserted nor failing a run):
the reset path 10x the torch.nn step loop forward+backward; cells 1.5x at batch <= 16 and never
slower; streaming 1.5x per call.

CPU mode, the adapter pairs (:data:`fastrnn.bench.peers.ADAPTER_PAIRS`: torch.nn against
fastrnn.torch, Flax against fastrnn.jax): the geometric mean of each pair's ratio over the run
(:func:`adapter_summary`); for the JAX pair, the target :data:`JAX_TARGET_RULE` (printed, never
asserted): fastrnn.jax at least 3x Flax's time in geometric mean forward+backward, and no row
slower than Flax.
"""
from __future__ import annotations

import math
from typing import Dict, List

from .configs import GpuRow, RlRow
from .peers import ADAPTER_PAIRS, ADAPTER_TITLES

TARGET_TRAINING = 1.0        # fwd+bwd: cuDNN time / fastrnn time on every row
TARGET_NO_PERSISTENT = 2.0   # where cuDNN has no persistent kernel, at batch <= 16
TARGET_NO_PERSISTENT_MAX_B = 16
TARGET_RULE = ("fwd+bwd ratio >= 1.0 on every row; ratio >= 2.0 (fwd and fwd+bwd, each checked) "
               "at B <= 16 where cuDNN has no persistent kernel: GRU, float32 or packed input "
               "(torch only picks cuDNN's persistent algorithm for unpacked float16)")
_PHASES = (("fwd", "forward"), ("f+b", "forward_backward"))


def row_targets(row: GpuRow, ratio: Dict[str, float]) -> Dict[str, object]:
    """Which targets apply to ``row`` and whether its ratios (cuDNN time / fastrnn time) meet
    them."""
    cfg = row.config
    applies = cfg.B <= TARGET_NO_PERSISTENT_MAX_B and (
        cfg.cell == "gru" or row.dtype == "float32" or row.packed)
    fb = ratio.get("forward_backward")
    out: Dict[str, object] = {"training_1x": {"required": TARGET_TRAINING, "ratio": fb,
                                              "met": fb is not None and fb >= TARGET_TRAINING}}
    out["no_persistent_2x"] = {"applies": applies, "required": TARGET_NO_PERSISTENT}
    if applies:
        for kind in ("forward", "forward_backward"):
            r = ratio.get(kind)
            out["no_persistent_2x"][kind] = {"ratio": r,
                                             "met": r is not None and r >= TARGET_NO_PERSISTENT}
    return out


def missed_targets(result: Dict[str, object]) -> str:
    """A row's targets cell: ``ok``, ``MISS`` and what, or empty when it was not measured."""
    ratio, t = result.get("ratio", {}), result.get("targets") or {}
    if not ratio:
        return ""
    missed = [] if t["training_1x"]["met"] else ["f+b<1x"]
    two = t["no_persistent_2x"]
    if two["applies"]:
        missed += [f"{short}<2x" for short, kind in _PHASES if not two[kind]["met"]]
    return ("MISS " + ", ".join(missed)) if missed else "ok"


def targets_summary(results: List[Dict[str, object]]) -> Dict[str, object]:
    """How many measured rows met each target, and which missed."""
    measured = [r for r in results if r.get("ratio")]
    training = [r for r in measured if not r["targets"]["training_1x"]["met"]]
    two = [r for r in measured if r["targets"]["no_persistent_2x"]["applies"]]
    summary: Dict[str, object] = {
        "rule": TARGET_RULE, "rows_measured": len(measured), "rows_total": len(results),
        "training_1x": {"met": len(measured) - len(training), "of": len(measured),
                        "missed": [r["row"]["label"] for r in training]},
        "no_persistent_2x": {"of": len(two)}}
    for kind in ("forward", "forward_backward"):
        missed = [r for r in two if not r["targets"]["no_persistent_2x"][kind]["met"]]
        summary["no_persistent_2x"][kind] = {"met": len(two) - len(missed),
                                             "missed": [r["row"]["label"] for r in missed]}
    return summary


def summary_lines(summary: Dict[str, object]) -> List[str]:
    """The closing lines of a GPU run: each target, met on how many rows."""
    t1, t2 = summary["training_1x"], summary["no_persistent_2x"]
    lines = [f"target fwd+bwd >= {TARGET_TRAINING:g}x cuDNN: {t1['met']}/{t1['of']} rows met"
             + (f"; missed: {', '.join(t1['missed'])}" if t1["missed"] else "")]
    for kind, label in (("forward", "fwd"), ("forward_backward", "fwd+bwd")):
        k = t2[kind]
        lines.append(f"target {label} >= {TARGET_NO_PERSISTENT:g}x cuDNN at B <= "
                     f"{TARGET_NO_PERSISTENT_MAX_B} without a cuDNN persistent kernel: "
                     f"{k['met']}/{t2['of']} rows met"
                     + (f"; missed: {', '.join(k['missed'])}" if k["missed"] else ""))
    if summary["rows_measured"] < summary["rows_total"]:
        lines.append(f"{summary['rows_total'] - summary['rows_measured']} row(s) not measured "
                     "on both sides (errors): not counted above")
    return lines


# ---- RL suite: fastrnn.torch against torch.nn -----------------------------------------------

RL_TARGET_UPDATE = 10.0     # update rows, fwd+bwd: the reset path against the step loop
RL_TARGET_CELL = 1.5        # cell and loop rows at B <= RL_TARGET_CELL_MAX_B, fwd and fwd+bwd
RL_TARGET_CELL_MAX_B = 16
RL_TARGET_NOT_SLOWER = 1.0  # cell and loop rows at larger B
RL_TARGET_STREAM = 1.5      # stream rows, per call
RL_TARGET_RULE = (f"update: fwd+bwd ratio >= {RL_TARGET_UPDATE:g}x (the reset path against the "
                  f"torch.nn step loop); cell and loop: fwd and fwd+bwd ratio >= "
                  f"{RL_TARGET_CELL:g}x at B <= {RL_TARGET_CELL_MAX_B} and never slower "
                  f"(>= {RL_TARGET_NOT_SLOWER:g}x) at larger B; stream: ratio per call >= "
                  f"{RL_TARGET_STREAM:g}x. Printed, not asserted")


def rl_row_targets(row: RlRow, ratio: Dict[str, float]) -> List[Dict[str, object]]:
    """The targets of ``row`` (each a phase and the ratio it requires) and whether its ratios
    (torch.nn time / fastrnn.torch time) meet them."""
    if row.group == "update":
        wanted = [("forward_backward", RL_TARGET_UPDATE)]
    elif row.group == "stream":
        wanted = [("forward", RL_TARGET_STREAM)]
    else:
        need = RL_TARGET_CELL if row.config.B <= RL_TARGET_CELL_MAX_B else RL_TARGET_NOT_SLOWER
        wanted = [("forward", need), ("forward_backward", need)]
    out = []
    for kind, required in wanted:
        r = ratio.get(kind)
        out.append({"phase": kind, "required": required, "ratio": r,
                    "met": r is not None and r >= required})
    return out


def rl_target_text(result: Dict[str, object]) -> str:
    """A row's targets cell: ``fwd/f+b >= 1.5x ok``, ``... MISS fwd``; empty when the row was
    not measured on both sides."""
    targets = result.get("targets") or []
    if not result.get("ratio") or not targets:
        return ""
    short = {kind: label for label, kind in _PHASES}
    phases = "/".join(short[t["phase"]] for t in targets)
    missed = [short[t["phase"]] for t in targets if not t["met"]]
    return (f"{phases} >= {targets[0]['required']:g}x "
            + (f"MISS {','.join(missed)}" if missed else "ok"))


def rl_targets_summary(results: List[Dict[str, object]]) -> Dict[str, object]:
    """Per group: how many measured rows met all their targets, and which missed."""
    summary: Dict[str, object] = {"rule": RL_TARGET_RULE, "groups": {}}
    for r in results:
        if not r.get("ratio"):
            continue
        group = summary["groups"].setdefault(r["row"]["group"], {"met": 0, "of": 0,
                                                                 "missed": []})
        group["of"] += 1
        if all(t["met"] for t in r["targets"]):
            group["met"] += 1
        else:
            group["missed"].append(r["row"]["label"])
    summary["rows_measured"] = sum(g["of"] for g in summary["groups"].values())
    summary["rows_total"] = len(results)
    return summary


def rl_summary_lines(summary: Dict[str, object]) -> List[str]:
    """The closing lines of an RL run: per group, on how many rows the targets were met."""
    lines = [f"targets ({summary['rule']}):"]
    for group, g in summary["groups"].items():
        lines.append(f"  {group}: {g['met']}/{g['of']} rows met"
                     + (f"; missed: {', '.join(g['missed'])}" if g["missed"] else ""))
    if summary["rows_measured"] < summary["rows_total"]:
        lines.append(f"  {summary['rows_total'] - summary['rows_measured']} row(s) not measured "
                     "on both sides (errors): not counted above")
    return lines


# ---- CPU mode: the adapter pairs (a framework's layer against fastrnn's adapter for it) -------

JAX_TARGET_GEOMEAN = 3.0  # fwd+bwd: geometric mean of Flax time / fastrnn.jax time over the run
JAX_TARGET_ROW = 1.0      # every row, fwd and fwd+bwd: fastrnn.jax never slower than Flax
JAX_TARGET_RULE = (f"fastrnn.jax: geometric mean of jax / fastrnn.jax fwd+bwd >= "
                   f"{JAX_TARGET_GEOMEAN:g}x, and no row slower than Flax (every ratio, fwd and "
                   f"fwd+bwd, >= {JAX_TARGET_ROW:g}x). Printed, not asserted")
_ADAPTER_TARGETS = {"speedup_jax_adapter": JAX_TARGET_RULE}


def geometric_mean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def adapter_summary(results: List[Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Per adapter pair measured on at least one configuration (keyed as its ratio is in a
    result): the pair, how many configurations, the geometric mean of the ratio (the framework's
    time / the adapter's) per phase, the rows where the adapter was slower (ratio < 1), and, for
    the JAX pair, whether its target is met."""
    out: Dict[str, Dict[str, object]] = {}
    for key, pair in ADAPTER_PAIRS.items():
        rows = [r for r in results if r.get(key)]
        if not rows:
            continue
        entry: Dict[str, object] = {"pair": list(pair), "title": ADAPTER_TITLES[key],
                                    "configs": len(rows), "geomean": {}, "slower": {}}
        for kind in ("forward", "forward_backward"):
            entry["geomean"][kind] = geometric_mean([r[key][kind] for r in rows])
            entry["slower"][kind] = [r["config"]["label"] for r in rows if r[key][kind] < 1.0]
        if key in _ADAPTER_TARGETS:
            geo = entry["geomean"]["forward_backward"]
            slower = sorted({label for labels in entry["slower"].values() for label in labels})
            entry["target"] = {"rule": _ADAPTER_TARGETS[key],
                               "required_geomean": JAX_TARGET_GEOMEAN,
                               "met": geo >= JAX_TARGET_GEOMEAN and not slower}
        out[key] = entry
    return out


def adapter_summary_lines(summary: Dict[str, Dict[str, object]]) -> List[str]:
    """A line per adapter pair: the geometric means, the rows where the adapter was slower, and
    the target where the pair has one."""
    lines = []
    for entry in summary.values():
        adapter = entry["pair"][1]
        geo, slower = entry["geomean"], entry["slower"]
        line = (f"{entry['title']}, geometric mean over {entry['configs']} config(s): "
                f"fwd {geo['forward']:.2f}x, fwd+bwd {geo['forward_backward']:.2f}x")
        slow = [f"{label} ({phase})" for kind, phase in (("forward", "fwd"),
                                                         ("forward_backward", "fwd+bwd"))
                for label in slower[kind]]
        if slow:
            line += f"; {adapter} slower on: {', '.join(slow)}"
        target = entry.get("target")
        if target:
            line += (f"; target fwd+bwd >= {target['required_geomean']:g}x and no row slower: "
                     + ("met" if target["met"] else "MISS"))
        lines.append(line)
    return lines
