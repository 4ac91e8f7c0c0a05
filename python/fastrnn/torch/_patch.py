"""Running unmodified programs on fastrnn: :func:`patch` / :func:`unpatch` and how the modules pickle.

``patch()`` makes ``torch.nn.RNN/LSTM/GRU`` and ``torch.nn.RNNCell/LSTMCell/GRUCell`` (the names
in ``torch.nn`` and ``torch.nn.modules``) fastrnn.torch's classes, process-wide, so that a program
that builds ``nn.LSTM`` gets fastrnn's; modules unpickled meanwhile (``torch.load`` of a whole
model) become fastrnn's too.
``python -m fastrnn.torch script.py args...`` runs a script that way (``__main__``).

Checkpoints: a fastrnn.torch module pickles as its torch.nn class (:func:`torch_reduce`), so a
model saved with ``torch.save(model)`` is the checkpoint torch.nn would have written: it loads
with ``torch.load``'s defaults (``weights_only=True`` with the same allow-list a torch.nn model
needs, e.g. ``torch.serialization.add_safe_globals([torch.nn.LSTM, ...])``) and where fastrnn is
not installed. Registering fastrnn's classes as safe globals instead would help only readers that
have fastrnn. The price: a model reloaded without ``patch()`` runs torch.nn's modules until
``fastrnn.torch.convert`` is applied to it.
"""
from __future__ import annotations

import copy
import threading

import torch

from .. import cuda as _cuda_api

_lock = threading.Lock()
_saved: dict = {}  # (namespace, name) -> the original object, while patched
_ABSENT = object()  # _saved's value for a class attribute that patch() added (unpatch deletes it)


def _twins() -> dict:
    from .modules import _TWINS
    return _TWINS


def _namespaces():
    return (torch.nn, torch.nn.modules)


def _bases() -> tuple:
    """The torch.nn base classes whose ``__setstate__`` patch() hooks: every class of the twin
    map derives from one of them (RNNCellBase has no ``__setstate__`` of its own: Module's)."""
    return (torch.nn.modules.rnn.RNNBase, torch.nn.modules.rnn.RNNCellBase)


def patch() -> None:
    """Make ``torch.nn.RNN``, ``torch.nn.LSTM``, ``torch.nn.GRU`` and the single-step cells
    ``torch.nn.RNNCell``, ``torch.nn.LSTMCell``, ``torch.nn.GRUCell`` fastrnn.torch's classes
    for the whole process (idempotent; :func:`unpatch` undoes it); modules of these classes
    unpickled meanwhile (``torch.load``) become fastrnn's too. Modules built before keep their
    class; :func:`fastrnn.torch.convert` turns them."""
    with _lock:
        if _saved:
            return
        for original, twin in _twins().items():
            for namespace in _namespaces():
                name = original.__name__
                _saved[(namespace, name)] = getattr(namespace, name)
                setattr(namespace, name, twin)
        for base in _bases():
            _saved[(base, "__setstate__")] = base.__dict__.get("__setstate__", _ABSENT)
            base.__setstate__ = _setstate_as_twin


def unpatch() -> None:
    """Undo :func:`patch` (no effect when not patched). Modules made meanwhile stay fastrnn's."""
    with _lock:
        for (namespace, name), original in _saved.items():
            if original is _ABSENT:
                delattr(namespace, name)
            else:
                setattr(namespace, name, original)
        _saved.clear()


def is_patched() -> bool:
    return bool(_saved)


def _setstate_as_twin(self, state) -> None:
    """RNNBase's and RNNCellBase's __setstate__ while patched: unpickled torch.nn modules become
    fastrnn's."""
    base = next(b for b in _bases() if isinstance(self, b))
    original = _saved.get((base, "__setstate__"))
    if original is None or original is _ABSENT:
        original = torch.nn.Module.__setstate__
    original(self, state)
    twin = _twins().get(type(self))
    if twin is not None:
        self.__class__ = twin


# ---- pickling as the torch.nn class; copies keep the class --------------------------------------

class TwinMixin:
    """What every fastrnn.torch twin of a torch.nn class adds to it, mixed in before the torch.nn
    class: the ``algo`` keyword (also a plain attribute, absent from modules made by ``convert``,
    which run ``"auto"``: the CUDA algorithm, see ``fastrnn.cuda``; the CPU core has one), pickling
    as the torch.nn class (so that checkpoints load with torch.load's defaults and without
    fastrnn), and copies that keep fastrnn's class."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algo = _cuda_api.check_algo(algo)

    def __reduce_ex__(self, protocol):
        return torch_reduce(self, protocol)

    def __copy__(self):
        return same_class_copy(self)

    def __deepcopy__(self, memo):
        return same_class_copy(self, memo)


def torch_reduce(module, protocol: int):
    """``module.__reduce_ex__``: rebuilt as its torch.nn class (see the module docstring).

    The pickle calls the torch.nn class on placeholder sizes, then restores the module's state
    (``__setstate__`` replaces every attribute): the class is the only global it names, which
    the allow-list of a torch.nn model already holds. (``__newobj__``, the default, must name the
    object's own class.)"""
    torch_class = next((original for original, twin in _twins().items()
                        if type(module) is twin), None)
    if torch_class is None:  # a subclass of a twin (parametrized): left as it is
        return object.__reduce_ex__(module, protocol)
    return torch_class, _PLACEHOLDER_SIZES, module.__getstate__()


_PLACEHOLDER_SIZES = (1, 1)  # input_size, hidden_size: the smallest module to overwrite


def same_class_copy(module, memo=None):
    """``__copy__`` / ``__deepcopy__``: copies keep fastrnn's class (pickling does not)."""
    cls = type(module)
    new = cls.__new__(cls)
    state = module.__getstate__()
    if memo is None:
        state = dict(state)
    else:
        memo[id(module)] = new
        state = copy.deepcopy(state, memo)
    new.__setstate__(state)
    return new
