"""Every instruction-set variant of the pointwise kernels passes the core-vs-reference suite.

The variant is chosen once per process, so each runs tests/test_core_vs_reference.py in a
subprocess with FASTRNN_ISA set (the in-process run of the suite covers the CPU's best one).
"""
import os
import pathlib
import subprocess
import sys

import pytest

from fastrnn import _core

SUITE = pathlib.Path(__file__).with_name("test_core_vs_reference.py")


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_core_vs_reference_under_each_isa(isa):
    if isa not in _core.compiled_isas():
        pytest.skip(f"{isa} is not compiled into this build ({_core.compiled_isas()})")
    if isa == _core.active_isa():
        pytest.skip(f"{isa} is this process's variant: the suite itself runs it in-process")
    env = dict(os.environ, FASTRNN_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "from fastrnn import _core; print(_core.active_isa())"],
                           env=env, capture_output=True, text=True, check=True)
    if probe.stdout.strip() != isa:
        pytest.skip(f"this CPU cannot run {isa} (it runs {probe.stdout.strip()})")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(SUITE)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=SUITE.parent)
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
