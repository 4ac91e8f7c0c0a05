"""Whether the numbers a run times are right, and what counts as a failed result.

CPU mode: each peer's forward output and input gradient against the NumPy reference in float64
on the same (upcast) weights, input and ``dy``, as the largest absolute difference
(:func:`peer_accuracy`). GPU mode: fastrnn.torch's and torch.nn's output, training output, input
gradient and ``dW_hh`` against each other and against torch.nn in float64, as relative max-norm
errors, flagged beyond a tolerance per dtype (:func:`row_accuracy`). RL suite: fastrnn.torch's
output and parameter gradients against torch.nn's on the same weights and data, as relative
max-norm errors, flagged beyond :data:`RL_TOLERANCE` (:func:`rl_accuracy`).

A result fails on an error or a non-finite output or gradient (:func:`peer_failed`,
:func:`row_failure`, :func:`rl_failure`); a flagged error beyond the tolerance is reported, not
failed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional

import numpy as np

from fastrnn import reference

from .peers import Inputs, Runner, build_module

# Relative max-norm error against torch.nn in float64 beyond which a row is flagged (not failed).
GPU_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
GPU_ACCURACY_CONVENTION = (
    "relative max-norm error max|a - b| / max|b| (a NaN or inf anywhere: NON-FINITE): fastrnn's "
    "forward output against torch.nn's, and both implementations' output y, training output, "
    "input gradient dx and dW_hh (layer 0) against torch.nn in float64 on the same (rounded) "
    "weights, input and dy")
# The outputs a GPU row compares (see run_gpu.check_outputs).
_ROW_OUTPUTS = ("y", "y_train", "dx", "dw_hh")


# ---- CPU: each peer against the float64 NumPy reference -------------------------------------

def reference_f64(inputs: Inputs) -> Dict[str, np.ndarray]:
    """Output and input gradient of the NumPy reference in float64 on the (upcast) same weights,
    input and ``dy``."""
    cfg64 = dataclasses.replace(inputs.config, dtype="float64")
    params64 = {k: v.astype(np.float64) for k, v in inputs.params.items()}
    module = build_module(reference, cfg64, params64).train()  # no dropout: output as in eval
    y = module(inputs.x.astype(np.float64))[0]
    return {"output": y, "grad_input": module.backward(inputs.dy.astype(np.float64))["input"]}


def difference(out: np.ndarray, ref: np.ndarray) -> Dict[str, object]:
    """max |out - ref| (NaN when ``out`` is not all finite), and relative to max(1, max|ref|)."""
    out = np.asarray(out, dtype=np.float64)
    finite = bool(np.isfinite(out).all())
    max_abs = float(np.abs(out - ref).max()) if finite else float("nan")
    scale = max(1.0, float(np.abs(ref).max()))
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale, "finite": finite}


def peer_accuracy(runner: Runner, ref: Dict[str, np.ndarray]) -> Dict[str, object]:
    """The output's differences at the top level, the input gradient's under ``grad_input``."""
    return {**difference(runner.output(), ref["output"]),
            "grad_input": difference(runner.input_gradient(), ref["grad_input"]),
            "against": "fastrnn.reference in float64, same weights, input and dy",
            "rel_scale": "max(1, max|ref|)"}


def peer_failed(entry: Dict[str, object]) -> bool:
    """A peer that raised, or produced a non-finite output or input gradient."""
    if "error" in entry:
        return True
    acc = entry.get("accuracy")
    return acc is not None and not (acc["finite"] and acc["grad_input"]["finite"])


# ---- GPU: fastrnn.torch and torch.nn against each other and torch.nn in float64 -------------

def relative_error(a, b) -> float:
    """max|a - b| / max|b| of two tensors, in float64; NaN when ``a`` is not all finite."""
    import torch
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        return float("nan")
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def row_accuracy(checks: Dict[str, Dict[str, object]], dtype: str) -> Dict[str, object]:
    """Errors of fastrnn against cuDNN and of both against the float64 reference, and the flags.

    ``checks`` maps "fastrnn", "cudnn" and "float64" (each where it ran) to their outputs."""
    acc: Dict[str, object] = {"tolerance": GPU_TOLERANCE[dtype], "finite": {}}
    for impl in ("fastrnn", "cudnn"):
        if impl in checks:
            acc["finite"][impl] = all(bool(checks[impl][n].isfinite().all())
                                      for n in _ROW_OUTPUTS)
    if "fastrnn" in checks and "cudnn" in checks:
        acc["fastrnn_vs_cudnn"] = _errors(checks["fastrnn"], checks["cudnn"])
    ref = checks.get("float64")
    if ref is not None:
        for impl in ("fastrnn", "cudnn"):
            if impl in checks:
                acc[f"{impl}_vs_f64"] = _errors(checks[impl], ref)
    acc["flags"] = _accuracy_flags(acc, dtype)
    return acc


def _errors(outputs: Dict[str, object], against: Dict[str, object]) -> Dict[str, float]:
    return {n: relative_error(outputs[n], against[n]) for n in _ROW_OUTPUTS}


def _accuracy_flags(acc: Dict[str, object], dtype: str):
    """A non-finite result on either side; fastrnn's error beyond the dtype's tolerance and
    clearly worse than torch.nn's on the same problem."""
    flags = []
    for impl, name in (("fastrnn", "fastrnn"), ("cudnn", "torch.nn")):
        if acc["finite"].get(impl) is False:
            flags.append(f"NON-FINITE {name} output or gradient")
    mine, theirs = acc.get("fastrnn_vs_f64"), acc.get("cudnn_vs_f64")
    if mine and acc["finite"].get("fastrnn"):
        worst = max(mine, key=lambda n: mine[n])
        if mine[worst] > GPU_TOLERANCE[dtype] and not (
                theirs and math.isfinite(theirs[worst]) and mine[worst] <= 2 * theirs[worst]):
            flags.append(f"fastrnn {worst} error {mine[worst]:.1e} > {GPU_TOLERANCE[dtype]:g}")
    return flags


def row_failure(r: Dict[str, object]) -> Optional[str]:
    """Why a GPU row counts as failed (an error on either side, or a non-finite result), or
    None."""
    if "error" in r:
        return r["error"]
    for name in ("fastrnn", "cudnn"):
        if "error" in r[name]:
            return f"{'torch.nn' if name == 'cudnn' else name}: {r[name]['error']}"
    flags = [f for f in (r.get("accuracy") or {}).get("flags", []) if f.startswith("NON-FINITE")]
    return "; ".join(flags) or None


# ---- RL suite: fastrnn.torch against torch.nn -----------------------------------------------

RL_TOLERANCE = 1e-4  # relative max-norm error of fastrnn.torch against torch.nn (float32 both)
RL_ACCURACY_CONVENTION = (
    "relative max-norm error max|a - b| / max|b| of fastrnn.torch's results against torch.nn's "
    "on the same weights and data: the forward output (every step: err y) and, where a row "
    f"has a backward, each parameter's gradient (the worst: err grad); flagged beyond "
    f"{RL_TOLERANCE:g}, failed only when non-finite")


def rl_accuracy(fast: Dict[str, object], ref: Dict[str, object]) -> Dict[str, object]:
    """fastrnn.torch's outputs ``fast`` against torch.nn's ``ref`` (the same keys: ``y``, and
    ``grad:NAME`` per parameter where the row has a backward): the error of y, the worst
    gradient's, whether fastrnn.torch's are finite, and the flags."""
    import torch
    grads = [n for n in ref if n.startswith("grad:")]
    acc: Dict[str, object] = {
        "tolerance": RL_TOLERANCE,
        "finite": all(bool(torch.isfinite(v).all()) for v in fast.values()),
        "y": relative_error(fast["y"], ref["y"])}
    if grads:
        errors = {n[len("grad:"):]: relative_error(fast[n], ref[n]) for n in grads}
        worst = max(errors, key=lambda n: errors[n] if math.isfinite(errors[n]) else math.inf)
        acc.update(grad=errors[worst], grad_worst=worst)
    flags = [] if acc["finite"] else ["NON-FINITE fastrnn.torch output or gradient"]
    flags += [f"err {k} {acc[k]:.1e} > {RL_TOLERANCE:g}" for k in ("y", "grad")
              if k in acc and math.isfinite(acc[k]) and acc[k] > RL_TOLERANCE]
    acc["flags"] = flags
    return acc


def rl_failure(r: Dict[str, object]) -> Optional[str]:
    """Why an RL row counts as failed (an error on either side, or a non-finite result of
    fastrnn.torch), or None."""
    if "error" in r:
        return r["error"]
    for name, entry in r["sides"].items():
        if "error" in entry:
            return f"{name}: {entry['error']}"
    flags = [f for f in (r.get("accuracy") or {}).get("flags", []) if f.startswith("NON-FINITE")]
    return "; ".join(flags) or None
