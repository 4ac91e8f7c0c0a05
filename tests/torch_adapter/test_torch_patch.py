"""Unmodified programs and checkpoints: fastrnn.torch.patch/unpatch, ``python -m fastrnn.torch``,
pickling as the torch.nn class (loads with torch.load's defaults, and without fastrnn), copies."""
import copy
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
import fastrnn.torch as ft  # noqa: E402
from torch_helpers import module_pair  # noqa: E402

PROGRAM = os.path.join(os.path.dirname(__file__), "programs", "train_and_reload.py")
HIDE_FASTRNN = "import sys; sys.modules['fastrnn'] = None  # as if not installed\n"


@pytest.fixture
def unpatched():
    yield
    ft.unpatch()


def test_patch_swaps_the_classes_and_unpatch_restores_them(unpatched):
    originals = (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)
    ft.patch()
    ft.patch()  # idempotent
    assert ft.is_patched()
    assert (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU) == (ft.RNN, ft.LSTM, ft.GRU)
    assert torch.nn.modules.LSTM is ft.LSTM
    assert torch.nn.modules.rnn.LSTM is originals[1]  # what pickles name stays torch's
    m = torch.nn.GRU(3, 4)
    assert type(m) is ft.GRU and isinstance(m, originals[2])
    ft.unpatch()
    assert (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU) == originals
    assert not ft.is_patched()
    assert type(torch.nn.LSTM(3, 4)) is originals[1]
    assert type(m) is ft.GRU  # made while patched: stays fastrnn's


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_a_pickled_module_is_the_torch_nn_module(cell):
    theirs, ours = module_pair(cell, torch.float32, input_size=3, hidden_size=4, num_layers=2)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    assert b"fastrnn" not in buffer.getvalue()
    buffer.seek(0)
    torch.serialization.add_safe_globals([type(theirs)])
    loaded = torch.load(buffer)  # torch.load's defaults: weights_only=True
    assert type(loaded) is type(theirs)
    x = torch.randn(5, 2, 3)
    assert_close(loaded(x)[0].detach().numpy(), ours(x)[0].detach().numpy(), np.float32,
                 "reloaded")
    assert pickle.loads(pickle.dumps(ours)).__class__ is type(theirs)
    assert loaded.state_dict().keys() == ours.state_dict().keys()


def test_copies_keep_the_fastrnn_class():
    _, ours = module_pair("lstm", torch.float32, input_size=3, hidden_size=4, proj_size=2)
    deep, shallow = copy.deepcopy(ours), copy.copy(ours)
    assert type(deep) is ft.LSTM and type(shallow) is ft.LSTM
    assert deep.weight_hh_l0 is not ours.weight_hh_l0
    assert shallow.weight_hh_l0 is ours.weight_hh_l0
    x = torch.randn(4, 2, 3)
    assert torch.equal(deep(x)[0], ours(x)[0])


def test_unpickled_while_patched_becomes_fastrnn(unpatched):
    theirs, _ = module_pair("gru", torch.float32, input_size=3, hidden_size=4)
    blob = pickle.dumps(theirs)
    ft.patch()
    assert type(pickle.loads(blob)) is ft.GRU
    ft.unpatch()
    assert type(pickle.loads(blob)) is torch.nn.GRU


def run(args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_unmodified_script_runs_on_fastrnn_and_its_checkpoint_loads_anywhere(tmp_path):
    checkpoint = str(tmp_path / "model.pt")
    plain = json.loads(run([PROGRAM, checkpoint], tmp_path).splitlines()[-1])
    assert plain["trained"] == ["torch.nn.modules.rnn"] * 2
    patched = json.loads(run(["-m", "fastrnn.torch", PROGRAM, checkpoint], tmp_path)
                         .splitlines()[-1])
    assert patched["trained"] == ["fastrnn.torch.modules"] * 2
    assert patched["reloaded"] == ["fastrnn.torch.modules"] * 2
    assert abs(patched["reloaded_loss"] - patched["loss"]) < 1e-6
    assert abs(patched["loss"] - plain["loss"]) < 1e-4  # the same training, other kernels
    # the checkpoint written under fastrnn loads where fastrnn is not installed
    # (the model class was the script's __main__.Tagger, as for any torch.save of a script's)
    load = (HIDE_FASTRNN + "import __main__, torch, train_and_reload as p\n"
            "p.Tagger.__module__ = \"__main__\"; __main__.Tagger = p.Tagger\n"
            "torch.serialization.add_safe_globals([p.Tagger, torch.nn.Embedding, "
            "torch.nn.modules.rnn.LSTM, torch.nn.modules.rnn.GRU, torch.nn.Linear])\n"
            f"m = torch.load({checkpoint!r})\n"
            "print(type(m.lstm).__module__, type(m.gru).__module__)\n")
    out = run(["-c", load], os.path.dirname(PROGRAM))
    assert out.split() == ["torch.nn.modules.rnn"] * 2


def test_the_runner_without_a_script_prints_its_usage():
    result = subprocess.run([sys.executable, "-m", "fastrnn.torch"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "usage: python -m fastrnn.torch" in result.stderr
