"""fastrnn.torch's place in the process: one thread pool for torch and fastrnn, and TorchDynamo.

:func:`install` is what importing ``fastrnn.torch`` does to the process (the package's
``__init__`` calls it, once): fastrnn's parallel work moves onto torch's OpenMP pool, and
TorchDynamo is allowed to trace ``torch.nn.RNN/LSTM/GRU`` instances (which fastrnn.torch's
modules are). :func:`follow_torch_threads` keeps the thread counts in step, per layer call.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
from typing import Optional

import torch

from .. import _core


def install() -> None:
    """The import-time set-up of ``fastrnn.torch`` (idempotent)."""
    _share_torch_thread_pool()
    _allow_dynamo_to_trace_rnn_modules()


# ---- one thread pool for torch and fastrnn -------------------------------------------------------

_threads_lock = threading.Lock()


def follow_torch_threads() -> None:
    """Use as many threads as torch does (the pool is shared, see _share_torch_thread_pool).

    The count is process-wide in OpenBLAS but per thread in torch: change torch's thread count
    only while no fastrnn call runs in another thread."""
    n = torch.get_num_threads()
    if n != _core.get_num_threads():
        with _threads_lock:
            _core.set_num_threads(n)


def _torch_openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime that runs torch's CPU parallelism, if one is loaded (Linux)."""
    if not torch.backends.openmp.is_available():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5
                     and len(line.split(None, 5)) == 6}
    except OSError:
        return None
    runtimes = sorted(p for p in paths
                      if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))
                      and ".so" in os.path.basename(p) and os.path.exists(p))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    own = [p for p in runtimes if os.path.abspath(p).startswith(torch_dir + os.sep)]
    if own:
        return own[0]
    return runtimes[0] if len(runtimes) == 1 else None


def _share_torch_thread_pool() -> None:
    """Run fastrnn's parallel work on torch's OpenMP pool: two pools on the same cores slow each
    other down (each one's idle workers spin while the other works), one shared pool does not.
    Set FASTRNN_SHARE_TORCH_THREADS=0 to keep fastrnn's own threads."""
    if os.environ.get("FASTRNN_SHARE_TORCH_THREADS", "1") == "0":
        return
    path = _torch_openmp_runtime()
    if path is not None:
        _core.run_threads_on_openmp(path)


# ---- TorchDynamo: let it trace modules that are instances of torch.nn.RNN/LSTM/GRU --------------

class _AllowRnnOnDynamoImport(importlib.abc.MetaPathFinder):
    """Sets ``torch._dynamo.config.allow_rnn`` when TorchDynamo's config is first imported, so that
    importing fastrnn.torch does not pay TorchDynamo's import time (about 1.5 s) up front."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch._dynamo.config":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below then uses the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:  # noqa: BLE001 - let the normal import report it
            return None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_allow(module):
            exec_module(module)
            module.allow_rnn = True

        spec.loader.exec_module = exec_then_allow
        return spec


def _allow_dynamo_to_trace_rnn_modules() -> None:
    """TorchDynamo refuses to trace any torch.nn.RNN/LSTM/GRU instance unless ``allow_rnn`` is
    set: set it now if TorchDynamo is loaded, else when it is."""
    config = sys.modules.get("torch._dynamo.config")
    if config is not None:
        config.allow_rnn = True
    elif not any(isinstance(f, _AllowRnnOnDynamoImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AllowRnnOnDynamoImport())
