"""``python -m fastrnn.torch script.py args...``: run a PyTorch program unchanged on fastrnn.

``torch.nn.RNN/LSTM/GRU`` are fastrnn.torch's classes while it runs (:func:`fastrnn.torch.patch`);
``python -m fastrnn.torch -m package.module args...`` runs a module the same way.
"""
from __future__ import annotations

import os
import runpy
import sys

USAGE = "usage: python -m fastrnn.torch script.py [args...] | -m module [args...]"


def main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    import fastrnn.torch

    fastrnn.torch.patch()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as python script.py
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
