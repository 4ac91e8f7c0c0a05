"""What the fastrnn.torch tests share: a torch.nn module and its fastrnn.torch twin."""
import torch
import fastrnn.torch as ft


def module_pair(cell, dtype, **kwargs):
    """(torch.nn module, fastrnn.torch module) with the torch module's random weights in both."""
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell[4:]
    name = "RNN" if cell.startswith("rnn") else cell.upper()
    theirs = getattr(torch.nn, name)(dtype=dtype, **kwargs)
    ours = getattr(ft, name)(dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours
