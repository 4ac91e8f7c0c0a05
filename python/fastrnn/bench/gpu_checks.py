"""What the GPU mode checks of a row before timing it: which implementation each side really ran,
and the outputs its accuracy check compares.

A fastrnn.torch module hands a call it does not support to torch.nn (with a FallbackWarning);
timing that as fastrnn would be wrong, so a row whose fastrnn.torch module warned, or whose
autograd graph holds torch's own recurrent kernels, is an error (:func:`fastrnn_outputs`). For
torch.nn the check records whether cuDNN ran (:func:`torch_outputs`). Both return the outputs of
one inference forward and one training forward and backward (:func:`check_outputs`).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

from fastrnn._cells import CELLS

from .configs import GpuRow

# Autograd nodes of torch's own recurrent kernels: cuDNN's, and the fused cells of its native
# CUDA path (in a fastrnn.torch module's graph they mean it ran torch.nn's implementation).
TORCH_RNN_NODES = ("CudnnRnn", "MiopenRnn", "ThnnFused")


def output_tensor(out):
    """The tensor of a module's output (a PackedSequence's data)."""
    return out.data if hasattr(out, "batch_sizes") else out


def check_outputs(module, x, leaf, dy) -> Dict[str, object]:
    """One inference forward (y), one training forward (y_train) and its backward (dx, dW_hh of
    layer 0), detached copies; ``graph``: the names of the autograd nodes near the output."""
    import torch
    with torch.no_grad():
        y = output_tensor(module(x)[0]).clone()
    module.zero_grad(set_to_none=True)
    leaf.grad = None
    out = output_tensor(module(x)[0])
    graph = autograd_node_names(out)
    out.backward(dy)
    return {"y": y, "y_train": out.detach().clone(), "dx": leaf.grad.detach().clone(),
            "dw_hh": module.weight_hh_l0.grad.detach().clone(), "graph": graph}


def autograd_node_names(tensor, limit: int = 64) -> set:
    """Names of the first ``limit`` autograd nodes behind ``tensor`` (CudnnRnnBackward0 where
    cuDNN ran the layer; fastrnn's own function where fastrnn did)."""
    names, seen, stack = set(), set(), [tensor.grad_fn]
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def fastrnn_outputs(module, ftorch, x, leaf, dy) -> Dict[str, object]:
    """:func:`check_outputs` of a fastrnn.torch module; RuntimeError when it ran torch.nn's
    implementation instead of fastrnn's kernels."""
    outputs: Dict[str, object] = {}
    fell_back = _fallback_warnings(ftorch, lambda: outputs.update(
        check_outputs(module, x, leaf, dy)))
    torch_nodes = sorted(n for n in outputs["graph"] if any(k in n for k in TORCH_RNN_NODES))
    if torch_nodes:
        fell_back.append("torch's autograd nodes " + ", ".join(torch_nodes))
    if fell_back:
        raise RuntimeError("fastrnn.torch ran torch.nn's implementation, not fastrnn's "
                           "kernels: " + "; ".join(fell_back))
    return outputs


def torch_outputs(module, x, leaf, dy) -> Tuple[Dict[str, object], str]:
    """:func:`check_outputs` of a torch.nn module, and the path it took: ``cudnn`` or not."""
    outputs = check_outputs(module, x, leaf, dy)
    cudnn = any("CudnnRnn" in n for n in outputs["graph"])
    return outputs, "cudnn" if cudnn else "native (not cuDNN)"


def _fallback_warnings(ftorch, fn) -> List[str]:
    """The FallbackWarnings of fastrnn.torch while ``fn`` runs (its warn-once memory cleared
    first, so every row is checked): what makes a module run torch.nn instead of fastrnn."""
    warned, lock = getattr(ftorch, "_warned", None), getattr(ftorch, "_warned_lock", None)
    if warned is not None and lock is not None:
        with lock:
            warned.clear()
    category = getattr(ftorch, "FallbackWarning", RuntimeWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, category)]


def plan_algo(row: GpuRow, algo: str, device_index: int, training: bool) -> Tuple[str, str]:
    """The algo fastrnn's CUDA backend picks for layer 0 of the row (fastrnn.cuda.plan), and
    why it is unknown when plan fails ("" otherwise)."""
    from fastrnn import cuda as fastrnn_cuda
    cfg = row.config
    try:
        code = fastrnn_cuda.plan(CELLS[cfg.cell].code, fastrnn_cuda.DTYPE_CODES[row.dtype],
                                 cfg.T, cfg.B, cfg.I, cfg.H, 0, algo, device_index,
                                 training).algo
    except Exception as exc:
        return "unknown", f"{type(exc).__name__}: {exc}"
    names = {code: name for name, code in fastrnn_cuda.ALGO_CODES.items()}
    return names.get(int(code), str(code)), ""
