"""Accuracy of the kernels' vectorised gate activations (csrc/cpu/activations.h).

Measured against long double libm over the whole input range, in ulps of the result's dtype, for
every instruction-set variant compiled in (each runs in a subprocess with FASTRNN_ISA set, since
the variant is chosen once per process).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _core

MAX_ULP = 3.0  # measured worst: 2.8 ulp (sigmoid, float64); see activations.h

_MEASURE = r"""
import json, numpy as np
from fastrnn import _core
rng = np.random.default_rng(0)
out = {"isa": _core.active_isa()}
for dtype in (np.float32, np.float64):
    x = np.concatenate([np.linspace(-60, 60, 200001), 5 * rng.standard_normal(100000),
                        np.logspace(-30, 1.7, 50000), -np.logspace(-30, 1.7, 50000),
                        np.linspace(-800, 800, 20001)]).astype(dtype)
    xl = x.astype(np.longdouble)
    exact = {"tanh": np.tanh(xl), "sigmoid": 1 / (1 + np.exp(-xl))}
    for kind, want in exact.items():
        got = _core.activation(kind, x).astype(np.longdouble)
        # The kernels flush subnormals to zero (as the layers do): where the exact result is
        # under the smallest normal, the answer must lie in [0, tiny]; elsewhere count ulps.
        tiny = np.finfo(dtype).tiny
        flushed = np.abs(want) < tiny
        out[f"{np.dtype(dtype).name} {kind} flushed ok"] = bool(
            np.all((np.abs(got[flushed]) <= tiny) & (np.sign(got[flushed]) * np.sign(want[flushed]) >= 0)))
        ulp = np.spacing(np.abs(want.astype(dtype))).astype(np.longdouble)
        err = np.where(flushed, 0, np.abs(got - want) / ulp)
        worst = int(np.argmax(err))
        out[f"{np.dtype(dtype).name} {kind}"] = [float(err[worst]), float(x[worst])]
print(json.dumps(out))
"""


def measure(isa):
    env = dict(os.environ, FASTRNN_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _MEASURE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_activation_accuracy_over_the_whole_range(isa):
    if isa not in _core.compiled_isas():
        pytest.skip(f"{isa} is not compiled into this build ({_core.compiled_isas()})")
    result = measure(isa)
    ran = result.pop("isa")
    if ran != isa:
        pytest.skip(f"this CPU cannot run {isa}; it offers {fastrnn.build_info()['simd_active']}")
    for key in [k for k in result if k.endswith("flushed ok")]:
        assert result.pop(key), f"{isa} {key[:-3]}: a subnormal result was not flushed to [0, tiny]"
    for key, (ulps, x) in result.items():
        print(f"{isa} {key}: max {ulps:.2f} ulp at x = {x!r}")
        assert ulps <= MAX_ULP, f"{isa} {key}: {ulps:.2f} ulp at x = {x!r}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e3, -1e3], dtype)
    t = _core.activation("tanh", x)
    s = _core.activation("sigmoid", x)
    assert np.isnan(t[0]) and np.isnan(s[0])
    np.testing.assert_array_equal(t[1:], [1, -1, 0, -0.0, 1, -1])
    assert np.signbit(t[4]) and not np.signbit(t[3])
    np.testing.assert_array_equal(s[1:], [1, 0, 0.5, 0.5, 1, 0])


def test_activation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        _core.activation("relu", np.zeros(3))
    with pytest.raises(TypeError, match="x"):
        _core.activation("tanh", np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="x"):
        _core.activation("tanh", [1.0, 2.0])
