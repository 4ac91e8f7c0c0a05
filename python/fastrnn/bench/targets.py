"""The GPU mode's targets: how fast fastrnn.torch must be against cuDNN, per row and per run.

Training (forward+backward) must be at least as fast as cuDNN on every row; where cuDNN has no
persistent kernel (GRU, float32 or packed input -- torch only picks cuDNN's persistent algorithm
for unpacked float16) at batch <= 16, forward and forward+backward must each be twice as fast.
"""
from __future__ import annotations

from typing import Dict, List

from .configs import GpuRow

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
