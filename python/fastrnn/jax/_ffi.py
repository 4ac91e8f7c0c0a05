"""The XLA custom calls of one layer: registration of fastrnn's FFI handlers with JAX, and the
raw forward and backward calls (no autodiff, no batching rules: :mod:`fastrnn.jax._layer` adds
those).

The handlers (``csrc/bindings/jax_ffi.cpp``) live in ``fastrnn._core``, so the CPU core serving
NumPy and torch serves JAX too: one thread team, one scratch cache, one ``set_num_threads``.
Every buffer is always passed; an absent optional one is a zero-size placeholder (:data:`ABSENT`
builds it), and so is an unused result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _cells, _core

FORWARD = "fastrnn_layer_forward"
BACKWARD = "fastrnn_layer_backward"


class HandlersMissing(ImportError):
    """fastrnn was built without the XLA FFI handlers (no jaxlib at build time)."""


def _register() -> None:
    if not hasattr(_core, "jax_ffi_targets"):
        raise HandlersMissing(
            "fastrnn.jax: this build of fastrnn has no XLA FFI handlers: jaxlib was not found "
            "when it was built. Reinstall it with jaxlib available to the build (pip install "
            "'fastrnn[jax]' from a source tree builds them; see docs/jax.md).")
    for name, capsule in _core.jax_ffi_targets().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")


_register()
_cuda_registered = False


def register_cuda_targets() -> None:
    """The CUDA backend's handlers, registered for platform "CUDA" where JAX has a GPU and
    fastrnn's CUDA backend was built with them. Called at the first trace of a layer rather than
    at import: asking JAX for its devices initialises its backends, which must wait until the
    program has configured JAX; and loading the CUDA backend loads cuBLAS."""
    global _cuda_registered
    if _cuda_registered:
        return
    _cuda_registered = True
    if not any(d.platform in ("gpu", "cuda") for d in jax.devices()):
        return
    from .. import cuda
    module = cuda._load()
    if module is not None and hasattr(module, "jax_ffi_targets"):
        for name, capsule in module.jax_ffi_targets().items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


def on_cpu() -> bool:
    """Whether layers run on the CPU (JAX's default backend): the vmap rules fold problems into
    the batch only there (the CUDA handlers have no gate gradients and another reserve layout)."""
    return jax.default_backend() == "cpu"


@dataclass(frozen=True)
class Layout:
    """The static facts of one layer call: what XLA compiles it for (hashable: a cache key)."""

    cell: int          # the core's cell code (fastrnn._cells)
    T: int
    B: int
    I: int
    H: int
    P: int             # projection size, 0 = none
    dtype: np.dtype
    has_bias: bool
    reverse: bool

    @property
    def spec(self) -> _cells.CellSpec:
        return _cells.CELLS_BY_CODE[self.cell]

    @property
    def R(self) -> int:
        return self.P or self.H

    @property
    def GH(self) -> int:
        return self.spec.gates * self.H

    def reserve_size(self) -> int:
        per_slot, per_step = _core.reserve_widths(self.cell, self.H, self.P)
        return (self.T + 1) * self.B * per_slot + self.T * self.B * per_step

    def with_batch(self, B: int) -> "Layout":
        return Layout(self.cell, self.T, B, self.I, self.H, self.P, self.dtype, self.has_bias,
                      self.reverse)


def absent(dtype=jnp.float32) -> jax.Array:
    """The zero-size placeholder of an absent buffer."""
    return jnp.zeros((0,), dtype)


def _shape(layout: Layout, shape: Tuple[int, ...], present: bool,
           dtype=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape if present else (0,), dtype or layout.dtype)


def forward(layout: Layout, training: bool, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
            resets):
    """(y, h_n, c_n, reserve); c_n and reserve are zero-size when absent."""
    L = layout
    lstm = L.spec.has_cell_state
    results = (_shape(L, (L.T, L.B, L.R), True), _shape(L, (L.B, L.R), True),
               _shape(L, (L.B, L.H), lstm), _shape(L, (L.reserve_size(),), training))
    return tuple(jax.ffi.ffi_call(FORWARD, results)(  # a list before jax 0.6
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets,
        cell=np.int64(L.cell), reverse=np.int64(L.reverse), training=np.int64(training)))


def backward(layout: Layout, gate_grads: bool, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
             resets, reserve, dy, dh_n, dc_n):
    """(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dgates, dgates_h, dh_proj); absent and
    unused ones are zero-size. With ``gate_grads`` the weight gradients are replaced by their
    factors (the pre-activation gradients, ``BackwardArgs::dgates`` in csrc/fastrnn/fastrnn.h)."""
    L = layout
    lstm = L.spec.has_cell_state
    w, g = not gate_grads, gate_grads
    results = (
        _shape(L, (L.T, L.B, L.I), True), _shape(L, (L.B, L.R), True),
        _shape(L, (L.B, L.H), lstm),
        _shape(L, (L.GH, L.I), w), _shape(L, (L.GH, L.R), w),
        _shape(L, (L.GH,), w and L.has_bias), _shape(L, (L.GH,), w and L.has_bias),
        _shape(L, (L.P, L.H), w and L.P > 0),
        _shape(L, (L.T, L.B, L.GH), g),
        _shape(L, (L.T, L.B, L.H), g and L.cell == _cells.CELLS["gru"].code),
        _shape(L, (L.T, L.B, L.R), g and L.P > 0))
    return tuple(jax.ffi.ffi_call(BACKWARD, results)(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets, reserve, dy, dh_n, dc_n,
        cell=np.int64(L.cell), reverse=np.int64(L.reverse), gate_grads=np.int64(gate_grads)))


def present(a: Optional[jax.Array]) -> bool:
    return a is not None and a.size > 0
