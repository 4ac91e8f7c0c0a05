"""Drop-in replacements for ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU`` (and the
single-step cells ``RNNCell``, ``LSTMCell``, ``GRUCell``) on the fastrnn core.

    import fastrnn.torch
    lstm = fastrnn.torch.LSTM(32, 64, num_layers=2, bidirectional=True)   # torch.nn.LSTM's arguments
    y, (h_n, c_n) = lstm(x)                                               # torch.nn.LSTM's results
    cell = fastrnn.torch.GRUCell(32, 64)                                  # torch.nn.GRUCell's
    h = cell(x_t, h)                                                      # one step
    model = fastrnn.torch.convert(model)     # swap every torch.nn RNN/LSTM/GRU (and cell) inside

The classes subclass torch.nn's (``isinstance(m, torch.nn.LSTM)`` holds), keep its parameters under
the same names, and return what it returns for every input form (padded, batch_first, unbatched,
``PackedSequence``, with or without ``hx``). Each layer and direction runs forward and BPTT backward
in the C++ core; stacking, bidirection and inter-layer dropout (torch's RNG, so the masks are
torch's) are torch operations around it. A cell's step is a layer of one step: one core call
forward and one backward, with everything below (autograd, torch.func, torch.compile, pickling,
fallbacks) as for the layers.

Data movement: tensors reach the core as NumPy views of their storage and results come back the same
way (no copies of inputs, weights or results). The copies that remain are layout changes the core
needs: a ``batch_first`` input is made time-major once per layer (the output goes back as a
transposed view, as torch returns it); a ``PackedSequence`` is padded on the way in and packed on
the way out; a bidirectional layer's two outputs are concatenated; and in backward the gradient
of such a transposed, concatenated or packed output is made contiguous per direction.

CUDA tensors (float32, float16, bfloat16) run on fastrnn's CUDA backend (``fastrnn.cuda``) the same
way: the kernels read the tensors' storage and write outputs torch allocates, on torch's current
stream, with float32 products in TF32 only where torch allows it; the modules take one keyword
beyond torch.nn's, ``algo`` ("auto", "standard" or "persistent", the CUDA algorithm).

``torch.func`` transforms (vmap, grad, vjp, jacrev, jvp, jacfwd; per-sample gradients, ensembles
of stacked weights), batched incoming gradients (``is_grads_batched``), forward-mode AD and double
backward (``create_graph=True``) run on the kernels too. ``torch.save(model)`` pickles the modules
as their torch.nn classes, so checkpoints load with ``torch.load``'s defaults and without fastrnn;
:func:`patch` (or ``python -m fastrnn.torch script.py``) runs unmodified programs on fastrnn.

Where the core cannot run a call -- tensors on a device or with a dtype this build has no kernels for,
autocast, ``torch.jit.trace`` and ONNX export (so that the recorded graph holds torch's portable
operators) -- the module runs ``torch.nn``'s own implementation instead and warns once, saying
why. Calls torch.nn refuses go to torch.nn too, so they raise exactly its errors; empty inputs
(B = 0) give its empty results.
What torch.nn does not check, the module checks itself and refuses with a RuntimeError naming
it: parameters whose shapes no longer fit the module (replaced, or its attributes changed after
construction), and a ``PackedSequence`` whose batch sizes are not non-increasing and
non-negative, do not add up to its data's rows, or whose indices are no permutation (torch's
unpacking writes out of bounds, and its LSTM kernel reads past states and data it never
checks on packed input).

``torch.compile``: the layer kernels are registered as the custom operators
``fastrnn::layer_forward`` and ``fastrnn::layer_backward`` with shape functions, so compiled models
keep them as single nodes (``fullgraph=True`` works). TorchDynamo refuses to trace any
``torch.nn.RNN/LSTM/GRU`` instance unless ``torch._dynamo.config.allow_rnn`` is set; importing this
package sets it (when TorchDynamo is first imported), which also lets TorchDynamo trace torch.nn's own
recurrent modules.

The package, by job: ``modules`` (the modules and ``convert``), ``cells`` (the single-step
cells), ``_ops`` (one layer and direction on the kernels: the bridges to the core and the CUDA
backend, the custom operators, autograd), ``_batching`` (the operators' vmap rules), ``_tangent``
(forward mode, and the double backward built on it), ``_fallback`` (torch.nn's implementation
where the kernels cannot run, ``FallbackWarning``), ``_packed`` (PackedSequence to padded and
back, its checks), ``_patch`` (patch/unpatch, pickling as torch.nn) and ``_runtime`` (what
importing the package does to the process: the shared thread pool, the TorchDynamo hook).
"""
from __future__ import annotations

try:
    import torch  # noqa: F401  (PyTorch: imports are absolute, this package does not shadow it)
except ImportError as exc:  # torch is an optional dependency of fastrnn
    raise ImportError("fastrnn.torch needs PyTorch: pip install 'fastrnn[torch]' (or any torch "
                      ">= 2.4)") from exc

from .. import _core  # noqa: F401  (tests reach the core as fastrnn.torch._core)
from . import _runtime
from ._fallback import FallbackWarning, _warned, _warned_lock  # noqa: F401
# The bridges to the kernels. ``_ops`` calls them through this package, so that tests can replace
# them here (spies; the CUDA functions on CPU tensors over the CUDA emulator).
from ._ops import _core_backward, _core_forward, _cuda_backward, _cuda_forward  # noqa: F401
from ._patch import is_patched, patch, unpatch
from .cells import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN, convert

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "patch", "unpatch",
           "is_patched", "FallbackWarning"]

# Importing fastrnn.torch changes the process, here and nowhere else: fastrnn's parallel work
# moves onto torch's OpenMP pool (two pools on the same cores slow each other down), and
# TorchDynamo may trace torch.nn.RNN/LSTM/GRU instances (the modules above are such instances;
# it refuses them otherwise).
_runtime.install()
