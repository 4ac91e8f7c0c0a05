"""fastrnn for JAX: recurrent layers as XLA custom calls into fastrnn's C++ core, with their own
gradients (:func:`layer`), and Flax NNX modules with torch.nn's arguments (:mod:`fastrnn.jax.nn`).

Needs ``jax`` and a fastrnn built with jaxlib's FFI headers (``pip install "fastrnn[jax]"``);
see docs/jax.md.
"""
from __future__ import annotations

from ._ffi import HandlersMissing
from ._layer import layer

__all__ = ["layer", "HandlersMissing"]
