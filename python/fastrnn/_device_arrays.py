"""The NumPy-level API on GPU arrays: ``functional.layer_forward`` / ``layer_backward`` for any
arrays that expose ``__dlpack__`` on a CUDA device (torch tensors, CuPy arrays, ...).

Arguments are read through DLPack (no copy; the capsules stay referenced for as long as the
pointers are used), checked like the CPU path checks NumPy arrays (argument named, expected and
received said), and the results are allocated by the input's own library on its device and on
its current stream: torch tensors for torch, CuPy arrays for CuPy, otherwise fastrnn's own
``DeviceArray`` (hand it to any library's ``from_dlpack``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _cells, _validate
from . import cuda as _cuda_api
from .errors import DtypeError

_DL_CUDA, _DL_CUDA_MANAGED = 2, 13
_DL_DTYPES = {(2, 32): "float32", (2, 16): "float16", (4, 16): "bfloat16"}


def is_cuda_array(obj: Any) -> bool:
    """Whether ``obj`` is an array on a CUDA device that speaks DLPack (NumPy arrays are not)."""
    if obj is None or isinstance(obj, np.ndarray):
        return False
    device_of = getattr(obj, "__dlpack_device__", None)
    if device_of is None or not hasattr(obj, "__dlpack__"):
        return False
    try:
        device_type = int(device_of()[0])
    except Exception:  # noqa: BLE001  (an object that only looks like an array)
        return False
    return device_type in (_DL_CUDA, _DL_CUDA_MANAGED)


class _Library:
    """How to treat the input's library: its stream, its allocator, its host copies."""

    def __init__(self, x: Any) -> None:
        module = type(x).__module__.split(".")[0]
        self.kind = module if module in ("torch", "cupy") else "dlpack"
        self.device = int(x.__dlpack_device__()[1])
        if self.kind == "torch":
            import torch
            self.lib = torch
            self.stream = int(torch.cuda.current_stream(self.device).cuda_stream)
        elif self.kind == "cupy":
            import cupy  # type: ignore[import-not-found]
            self.lib = cupy
            with cupy.cuda.Device(self.device):
                self.stream = int(cupy.cuda.get_current_stream().ptr)
        else:
            self.lib = None
            self.stream = 0  # the legacy default stream, which orders against the others

    def prepare(self, obj: Any) -> Any:
        """A contiguous view or copy the kernels can read (torch: detached)."""
        if self.kind == "torch" and type(obj).__module__.startswith("torch"):
            return obj.detach().contiguous()
        if self.kind == "cupy" and type(obj).__module__.startswith("cupy"):
            return self.lib.ascontiguousarray(obj)
        return obj

    def capsule(self, obj: Any) -> Any:
        if self.kind == "dlpack":
            return obj.__dlpack__()
        # The consumer's stream: the producer orders its pending work before it.
        return obj.__dlpack__(stream=self.stream if self.stream else None)

    def empty(self, shape: Tuple[int, ...], dtype: str) -> Tuple[Any, int]:
        """A new C-contiguous array on the device and its address (poisoned in tests)."""
        if self.kind == "torch":
            torch = self.lib
            t = torch.empty(shape, dtype=getattr(torch, dtype), device=f"cuda:{self.device}")
            if _cuda_api.poisoning() and t.numel():
                t.view(torch.uint8).fill_(0xFF)
            return t, int(t.data_ptr())
        if self.kind == "cupy" and dtype != "bfloat16":  # CuPy has no bfloat16 type
            cupy = self.lib
            with cupy.cuda.Device(self.device):
                a = cupy.empty(shape, dtype=dtype)
                if _cuda_api.poisoning() and a.size:
                    a.view(cupy.uint8).fill(0xFF)
            return a, int(a.data.ptr)
        module = _cuda_api._require()
        arr = module.DeviceArray(list(shape), _DEVICE_ARRAY_CODES[dtype], self.device)
        if _cuda_api.poisoning() and arr.nbytes:
            module.fill_bytes(arr.data_ptr, 0xFF, arr.nbytes, self.device)
        return arr, int(arr.data_ptr)

    def upload_int64(self, values: np.ndarray) -> Tuple[Any, int]:
        return self._upload(np.ascontiguousarray(values, dtype=np.int64), "int64")

    def upload_uint8(self, values: np.ndarray) -> Tuple[Any, int]:
        return self._upload(np.ascontiguousarray(values, dtype=np.uint8), "uint8")

    def _upload(self, values: np.ndarray, dtype: str) -> Tuple[Any, int]:
        """A device copy of a contiguous host array, in the input's library, and its address."""
        if self.kind == "torch":
            t = self.lib.from_numpy(values).to(f"cuda:{self.device}")
            return t, int(t.data_ptr())
        if self.kind == "cupy":
            with self.lib.cuda.Device(self.device):
                a = self.lib.asarray(values)
            return a, int(a.data.ptr)
        module = _cuda_api._require()
        arr = module.DeviceArray(list(values.shape), _DEVICE_ARRAY_CODES[dtype], self.device)
        module.copy_from_host(arr.data_ptr, values.tobytes(), self.device)
        return arr, int(arr.data_ptr)

    def to_host(self, obj: Any, name: str) -> np.ndarray:
        if self.kind == "torch" and type(obj).__module__.startswith("torch"):
            return obj.detach().cpu().numpy()
        if self.kind == "cupy" and type(obj).__module__.startswith("cupy"):
            return self.lib.asnumpy(obj)
        raise TypeError(f"{name}: expected a NumPy array or a sequence of ints (host memory), "
                        f"got a device array of type {type(obj).__name__}")


# fastrnn._cuda.DeviceArray dtype codes
_DEVICE_ARRAY_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int64": 3, "uint8": 4}


@dataclass
class DeviceArg:
    """One argument as the kernels see it."""
    obj: Any          # the (contiguous) array itself
    capsule: Any      # its DLPack capsule, kept alive while `ptr` is in use
    ptr: int
    shape: Tuple[int, ...]
    dtype: str


def _check_strides(name: str, shape, strides) -> None:
    if strides is None:
        return
    expected, step = [], 1
    for size in reversed(shape):
        expected.append(step)
        step *= size
    expected.reverse()
    if any(s != e for s, e, n in zip(strides, expected, shape) if n > 1):
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {tuple(strides)} "
                         f"(elements) for shape {tuple(shape)}")


def _describe(lib: _Library, obj: Any, name: str) -> DeviceArg:
    if not is_cuda_array(obj):
        raise TypeError(f"{name}: expected an array on the CUDA device of x (through "
                        f"__dlpack__), got {type(obj).__name__}"
                        + ("" if not isinstance(obj, np.ndarray) else " (host memory)"))
    device = int(obj.__dlpack_device__()[1])
    if device != lib.device:
        raise ValueError(f"{name}: expected an array on cuda:{lib.device} (the device of x), got "
                         f"cuda:{device}")
    obj = lib.prepare(obj)
    capsule = lib.capsule(obj)
    ptr, shape, strides, (code, bits, lanes), _ = _cuda_api._require().describe_dlpack(capsule)
    dtype = _DL_DTYPES.get((code, bits)) if lanes == 1 else None
    if dtype is None:
        raise DtypeError(f"{name}: expected dtype float32, float16 or bfloat16, got DLPack type "
                         f"code {code} with {bits} bits x {lanes} lanes")
    _check_strides(name, shape, strides)
    return DeviceArg(obj, capsule, int(ptr), tuple(int(n) for n in shape), dtype)


_DL_BOOL = 6  # DLPack's kDLBool: one byte, 0 or 1


def _resets(lib: _Library, value: Any, T: int, B: int) -> Tuple[Any, int]:
    """``resets`` (a bool array (T, B), in host or device memory) as (keep-alive, address) of
    T * B bytes 0/1 on the device of x, or (None, 0) when absent. A device bool array is used in
    place (a bool is one byte, 0 or 1); a host array is checked and uploaded."""
    if value is None:
        return None, 0
    if not is_cuda_array(value):
        checked = _validate.resets(value, T, B)  # the CPU path's checks and messages
        assert checked is not None
        return lib.upload_uint8(checked.view(np.uint8))
    expected = (T, B)
    device = int(value.__dlpack_device__()[1])
    if device != lib.device:
        raise ValueError(f"resets: expected an array on cuda:{lib.device} (the device of x), "
                         f"got cuda:{device}")
    obj = lib.prepare(value)
    capsule = lib.capsule(obj)
    ptr, shape, strides, (code, bits, lanes), _ = _cuda_api._require().describe_dlpack(capsule)
    if (code, bits, lanes) != (_DL_BOOL, 8, 1):
        raise DtypeError(f"resets: expected dtype bool, got DLPack type code {code} with {bits} "
                         f"bits x {lanes} lanes")
    shape = tuple(int(n) for n in shape)
    if shape != expected:
        raise ValueError(f"resets: expected shape (T, B) = {expected}, got {shape}")
    _check_strides("resets", shape, strides)
    return (obj, capsule), int(ptr)


@dataclass
class CudaLayerState:
    """What a training-mode forward on the GPU keeps for backward (opaque to callers)."""
    mode: str
    cell: int
    dtype: int
    shape: Tuple[int, int, int, int, int]     # T, B, I, H, P
    reverse: bool
    algo: str
    args: Dict[str, Optional[DeviceArg]]
    lengths: Any                               # device int64 (B,) or None
    lengths_ptr: int
    reserve: Any
    reserve_ptr: int
    keep: List[Any] = field(default_factory=list)
    resets: Any = None                         # device bytes (T, B), 0/1, or None
    resets_ptr: int = 0


def _allow_tf32(lib: _Library) -> bool:
    """torch's setting when the arrays are torch's; TF32 stays off otherwise."""
    if lib.kind != "torch":
        return False
    return _cuda_api.torch_allows_tf32()


def layer_forward(mode: str, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *, weight_hr,
                  lengths, reverse: bool, training: bool, algo: str, resets=None):
    lib = _Library(x)
    names = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    values = (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    args: Dict[str, Optional[DeviceArg]] = {
        n: None if v is None else _describe(lib, v, n) for n, v in zip(names, values)}
    ax = args["x"]
    assert ax is not None
    sizes = _validate.layer_arrays(mode, *args.values(), float_dtypes=_cuda_api.DTYPES,
                                   nonempty=True)
    T, B, I, H, P = sizes
    R, dtype = sizes.R, ax.dtype
    cell, dcode = _cells.cell(mode).code, _cuda_api.dtype_code(dtype)

    lengths_dev, lengths_ptr = None, 0
    if lengths is not None:
        host = lengths if not is_cuda_array(lengths) else lib.to_host(lengths, "lengths")
        checked = _validate.lengths(host, B, T)
        lengths_dev, lengths_ptr = lib.upload_int64(checked)
    resets_dev, resets_ptr = _resets(lib, resets, T, B)

    plan = _cuda_api.plan(cell, dcode, T, B, I, H, P, algo, lib.device, training)
    y, y_ptr = lib.empty((T, B, R), dtype)
    h_n, h_n_ptr = lib.empty((B, R), dtype)
    c_n, c_n_ptr = lib.empty((B, H), dtype) if _cells.has_cell_state(mode) else (None, 0)
    reserve, reserve_ptr = lib.empty((plan.reserve_bytes,), "uint8") if training else (None, 0)
    workspace, workspace_ptr = lib.empty((plan.forward_scratch,), "uint8")
    ptrs = {"x": ax.ptr, "lengths": lengths_ptr, "resets": resets_ptr, "y": y_ptr,
            "h_n": h_n_ptr, "c_n": c_n_ptr, "reserve": reserve_ptr, "workspace": workspace_ptr}
    for key, n in (("h0", "h0"), ("c0", "c0"), ("w_ih", "weight_ih"), ("w_hh", "weight_hh"),
                   ("b_ih", "bias_ih"), ("b_hh", "bias_hh"), ("w_hr", "weight_hr")):
        a = args[n]
        ptrs[key] = a.ptr if a is not None else 0
    _cuda_api.forward(cell, dcode, (T, B, I, H, P), bool(reverse), plan, _allow_tf32(lib),
                      lib.device, lib.stream, ptrs)
    del workspace  # back to its allocator once queued work is done (stream-ordered)
    state = None
    if training:
        state = CudaLayerState(mode, cell, dcode, (T, B, I, H, P), bool(reverse), algo, args,
                               lengths_dev, lengths_ptr, reserve, reserve_ptr, [lib],
                               resets_dev, resets_ptr)
    return y, h_n, c_n, state


def layer_backward(state: CudaLayerState, dy, dh_n=None, dc_n=None) -> Dict[str, Any]:
    lib: _Library = state.keep[0]
    T, B, I, H, P = state.shape
    R = P if P else H
    dtype = _cuda_api.DTYPES[state.dtype]
    grads_in = {name: None if value is None else _describe(lib, value, name)
                for name, value in (("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n))}
    _validate.final_state_grads(state.mode, _validate.LayerSizes(*state.shape),
                                *grads_in.values(), dtype=dtype)
    plan = _cuda_api.plan(state.cell, state.dtype, T, B, I, H, P, state.algo, lib.device, True)
    args = state.args
    out: Dict[str, Any] = {}
    ptrs: Dict[str, int] = {}
    shapes = {"dx": (T, B, I), "dh0": (B, R), "dc0": (B, H) if _cells.has_cell_state(state.mode) else None,
              "dw_ih": args["weight_ih"].shape, "dw_hh": args["weight_hh"].shape,  # type: ignore[union-attr]
              "db_ih": args["bias_ih"].shape if args["bias_ih"] is not None else None,
              "db_hh": args["bias_hh"].shape if args["bias_hh"] is not None else None,
              "dw_hr": args["weight_hr"].shape if args["weight_hr"] is not None else None}
    for name, shape in shapes.items():
        if shape is None:
            out[name], ptrs[name] = None, 0
        else:
            out[name], ptrs[name] = lib.empty(tuple(shape), dtype)
    workspace, workspace_ptr = lib.empty((plan.backward_scratch,), "uint8")
    for key, n in (("x", "x"), ("h0", "h0"), ("c0", "c0"), ("w_ih", "weight_ih"),
                   ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"),
                   ("w_hr", "weight_hr")):
        a = args[n]
        ptrs[key] = a.ptr if a is not None else 0
    ptrs.update(lengths=state.lengths_ptr, resets=state.resets_ptr, reserve=state.reserve_ptr,
                workspace=workspace_ptr)
    for name in ("dy", "dh_n", "dc_n"):
        a = grads_in[name]
        ptrs[name] = a.ptr if a is not None else 0
    _cuda_api.backward(state.cell, state.dtype, state.shape, state.reverse, plan,
                       _allow_tf32(lib), lib.device, lib.stream, ptrs)
    del workspace
    return {"input": out["dx"], "h0": out["dh0"], "c0": out["dc0"], "weight_ih": out["dw_ih"],
            "weight_hh": out["dw_hh"], "bias_ih": out["db_ih"], "bias_hh": out["db_hh"],
            "weight_hr": out["dw_hr"]}
