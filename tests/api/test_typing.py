"""Type information shipped with the package: ``fastrnn/_core.pyi`` and ``fastrnn/py.typed``.

- the stub declares exactly the names the extension has, with the binding's parameter names,
  order, defaults and (where pybind11 says more than ``object``) types;
- ``mypy.stubtest`` agrees with it;
- a user's program over the public NumPy API type-checks with ``mypy --strict`` against the
  *installed* package, and runs.

The mypy tests skip when mypy is absent, except where ``FASTRNN_REQUIRE_TORCH=1`` (CI, which
installs the ``test`` extra, mypy included): there a missing mypy is a failure, as a missing torch
is (see conftest.py).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastrnn
from fastrnn import _core

PACKAGE_DIR = Path(fastrnn.__file__).parent
STUB = PACKAGE_DIR / "_core.pyi"


# ---------------------------------------------------------------------------------------------
# The stub against the extension, without mypy
# ---------------------------------------------------------------------------------------------

def _stub_tree() -> ast.Module:
    assert STUB.is_file(), f"{STUB} is missing: the package must ship its extension's stub"
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _stub_functions() -> dict:
    """Public functions the stub defines, by name."""
    return {node.name: node for node in _stub_tree().body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def _stub_public_names() -> set:
    """Every public name the stub declares: functions, re-exports, variables, classes."""
    names = set()
    for node in _stub_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            # In a stub only `import a as a` / `from m import a as a` re-export a name.
            names.update(alias.asname for alias in node.names if alias.asname == alias.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {name for name in names if not name.startswith("_")}


def test_package_ships_py_typed_and_stub():
    assert (PACKAGE_DIR / "py.typed").is_file(), f"no PEP 561 marker py.typed in {PACKAGE_DIR}"
    assert STUB.is_file(), f"no {STUB.name} in {PACKAGE_DIR}"


# What the extension has only where it was built with them (the JAX handlers need jaxlib's
# headers at build time): the stub declares them, a build without them may lack them.
OPTIONAL_NAMES = {"JAX_FFI_API_VERSION", "JAX_FFI_BUILT_WITH_JAXLIB", "jax_ffi_targets"}


def _absent_optional_names() -> set:
    return {name for name in OPTIONAL_NAMES if not hasattr(_core, name)}


def test_stub_declares_exactly_the_runtime_names():
    runtime = {name for name in dir(_core) if not name.startswith("_")}
    stub = _stub_public_names() - _absent_optional_names()
    assert not runtime - stub, f"in fastrnn._core but not in {STUB.name}: {sorted(runtime - stub)}"
    assert not stub - runtime, f"in {STUB.name} but not in fastrnn._core: {sorted(stub - runtime)}"


def test_stub_exceptions_are_the_errors_module_classes():
    # The stub re-exports them from fastrnn.errors: true only if the module holds those objects.
    from fastrnn import errors
    assert _core.LengthsError is errors.LengthsError
    assert _core.DtypeError is errors.DtypeError


# pybind11 renders each C++ parameter type in the signature line of a function's docstring; this
# is what the stub must declare for it. None: any type (py::object parameters are arrays, or None,
# which the binding checks itself).
_PARAM_TYPES = {
    "bool": {"bool"},
    "str": {"str"},
    "typing.SupportsInt | typing.SupportsIndex": {"SupportsIndex"},  # an int, pybind11 3
    "int": {"SupportsIndex"},  # an int, pybind11 2
    "float": {"float"},
    "object": None,
}
# The same for return types: an exact match, or (for a bare tuple / array) the stub's prefix.
_EXACT_RETURNS = {"None", "bool", "int", "float", "str", "list[str]", "tuple[int, int]",
                  "tuple[int, int, int]"}
_RETURN_PREFIXES = {"tuple": "tuple[", "numpy.ndarray": "NDArray[", "dict": "dict["}


def _runtime_signature(name: str) -> ast.FunctionDef:
    """The signature pybind11 wrote at the top of ``_core.<name>.__doc__``, parsed as a def."""
    doc = getattr(_core, name).__doc__ or ""
    first = doc.lstrip().splitlines()[0] if doc.strip() else ""
    assert first.startswith(name + "("), f"_core.{name}: no pybind11 signature line in {doc!r}"
    # pybind11 2 writes List[...] / Tuple[...]; pybind11 3 the builtin generics.
    first = re.sub(r"\bList\[", "list[", re.sub(r"\bTuple\[", "tuple[", first))
    try:
        return ast.parse(f"def {first}: ...").body[0]
    except SyntaxError as e:
        raise AssertionError(f"_core.{name}: cannot parse pybind11's signature {first!r}") from e


def _unparse(node):
    return None if node is None else ast.unparse(node)


def _params(fn: ast.FunctionDef) -> list:
    a = fn.args
    assert a.vararg is None and a.kwarg is None, f"{fn.name}: *args/**kwargs are not expected"
    params = a.posonlyargs + a.args + a.kwonlyargs
    defaults = [None] * (len(a.posonlyargs + a.args) - len(a.defaults)) + list(a.defaults)
    defaults += a.kw_defaults
    return [(p.arg, p.annotation, d) for p, d in zip(params, defaults)]


@pytest.mark.parametrize("name", sorted(_stub_functions()))
def test_stub_signature_matches_binding(name):
    """Names, order, defaults and types of the parameters, and the return type.

    mypy.stubtest cannot check these: pybind11 functions carry no ``__text_signature__``, so it
    only sees that the names exist. The binding's docstring line has them."""
    if name in _absent_optional_names():
        pytest.skip(f"this build has no {name} (built without jaxlib's headers)")
    stub_fn, runtime_fn = _stub_functions()[name], _runtime_signature(name)
    stub_params, runtime_params = _params(stub_fn), _params(runtime_fn)
    assert [p[0] for p in stub_params] == [p[0] for p in runtime_params], (
        f"{name}: parameters {[p[0] for p in stub_params]} in the stub, "
        f"{[p[0] for p in runtime_params]} in the binding")
    for (pname, stub_type, stub_default), (_, runtime_type, runtime_default) in zip(
            stub_params, runtime_params):
        assert _unparse(stub_default) == _unparse(runtime_default), (
            f"{name}({pname}): default {_unparse(stub_default)} in the stub, "
            f"{_unparse(runtime_default)} in the binding")
        rt = _unparse(runtime_type)
        assert rt in _PARAM_TYPES, (f"{name}({pname}): pybind11 type {rt!r} is not known to this "
                                    f"test; add what the stub should declare to _PARAM_TYPES")
        allowed = _PARAM_TYPES[rt]
        assert allowed is None or _unparse(stub_type) in allowed, (
            f"{name}({pname}): {_unparse(stub_type)} in the stub, {rt} in the binding "
            f"(expected one of {sorted(allowed)})")
    stub_ret, rt_ret = _unparse(stub_fn.returns) or "", _unparse(runtime_fn.returns)
    if rt_ret in _EXACT_RETURNS:
        assert stub_ret == rt_ret, f"{name}: returns {stub_ret} in the stub, {rt_ret} at run time"
    else:
        assert rt_ret in _RETURN_PREFIXES, (f"{name}: pybind11 return type {rt_ret!r} is not "
                                            f"known to this test; add it to _EXACT_RETURNS or "
                                            f"_RETURN_PREFIXES")
        assert stub_ret.startswith(_RETURN_PREFIXES[rt_ret]), (
            f"{name}: returns {stub_ret} in the stub, {rt_ret} at run time")


# ---------------------------------------------------------------------------------------------
# mypy: stubtest, and a user's program checked against the installed package
# ---------------------------------------------------------------------------------------------

def _require_mypy() -> None:
    if importlib.util.find_spec("mypy") is not None:
        return
    if os.environ.get("FASTRNN_REQUIRE_TORCH") == "1":
        pytest.fail("mypy is not installed: it is in the test extra (pip install '.[test]'), and "
                    "FASTRNN_REQUIRE_TORCH=1 makes a missing test dependency a failure")
    pytest.skip("mypy is not installed (pip install '.[test]')")


def _run(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``args`` under this interpreter, from ``cwd`` (not the source tree: the installed fastrnn
    is the one found), with no MYPYPATH that could point mypy at a source tree instead."""
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    print(proc.stdout + proc.stderr)
    return proc


def _mypy_config(tmp_path: Path) -> Path:
    # An explicit, empty configuration: no mypy.ini / pyproject.toml of any parent directory.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    return config


def test_mypy_stubtest(tmp_path):
    _require_mypy()
    config = _mypy_config(tmp_path)
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("".join(f"fastrnn._core.{n}\n" for n in sorted(_absent_optional_names())))
    proc = _run(["-m", "mypy.stubtest", "--mypy-config-file", str(config), "--allowlist",
                 str(allowlist), "fastrnn._core"], tmp_path)
    assert proc.returncode == 0, f"stubtest found differences:\n{proc.stdout}{proc.stderr}"


# What a careful user writes: fastrnn's public NumPy API, fully annotated. assert_type pins the
# types the annotations promise; the lines under "if TYPE_CHECKING" misuse the API and carry
# `# type: ignore[code]`: with --strict (warn_unused_ignores) each must meet exactly that error,
# which shows the checker sees real types there (an Any would let every line through). The
# _core line shows the extension's stub is the one in use.
USER_PROGRAM = '''
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

import fastrnn
from fastrnn import functional

if TYPE_CHECKING:
    from typing_extensions import assert_type

    from fastrnn import _core
else:
    def assert_type(value, typ):
        return value

FloatArray = NDArray[np.floating[Any]]


def modules() -> float:
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)

    lstm = fastrnn.LSTM(4, 8, num_layers=2, bidirectional=True, proj_size=6, seed=0)
    y, (h_n, c_n) = lstm(x)
    assert_type(y, FloatArray)
    assert_type(c_n, FloatArray)
    y, (h_n, c_n) = lstm(x, (h_n, c_n), lengths=[5, 3, 1])
    grads = lstm.backward(np.ones_like(y), dh_n=np.ones_like(h_n), dc_n=None)
    assert_type(grads, Dict[str, FloatArray])
    assert grads["input"].shape == x.shape and h_n.shape == (4, 3, 6)

    gru = fastrnn.GRU(4, 8, batch_first=True, dtype=np.float64, seed=1).eval()
    assert_type(gru, fastrnn.GRU)
    y2, h2 = gru(x.astype(np.float64).transpose(1, 0, 2), lengths=np.array([5, 3, 1]))
    assert_type(h2, FloatArray)
    assert y2.dtype == np.float64 and not gru.training

    rnn = fastrnn.RNN(4, 8, nonlinearity="relu", dropout=0.0)
    rnn.load_state_dict(rnn.state_dict())
    rnn.params["weight_hh_l0"] = rnn.params["weight_hh_l0"] * np.float32(0.5)
    y3, h3 = rnn(x, np.zeros((1, 3, 8), np.float32))
    rnn_grads = rnn.backward(np.ones_like(y3), np.ones_like(h3))
    hidden: int = rnn.hidden_size
    return float(grads["input"].sum() + rnn_grads["weight_ih_l0"].sum()) + hidden


def layers() -> Tuple[float, Optional[functional.LayerState]]:
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 2, 3, 4
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    c0 = np.zeros((B, H), np.float32)
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32)

    y, h_n, c_n, state = functional.layer_forward("lstm", x, h0, c0, w_ih, w_hh, None, None,
                                                  lengths=np.array([6, 2]), reverse=True)
    assert_type(y, NDArray[np.float32])
    assert_type(c_n, Optional[NDArray[np.float32]])
    assert_type(state, functional.LayerState)
    grads = functional.layer_backward(state, np.ones_like(y), dh_n=np.ones_like(h_n))
    assert_type(grads, functional.LayerGradients)
    dw_ih: FloatArray = grads["weight_ih"]
    assert grads["bias_ih"] is None and grads["c0"] is not None and dw_ih.shape == w_ih.shape

    *_, no_state = functional.layer_forward("lstm", x, h0, c0, w_ih, w_hh, None, None,
                                            training=False)
    assert_type(no_state, Optional[functional.LayerState])
    return float(dw_ih.sum()), no_state


def runtime() -> None:
    info = fastrnn.build_info()
    assert_type(info, Dict[str, Any])
    threads: int = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    fastrnn.set_deterministic(fastrnn.get_deterministic())
    sizes: Dict[str, int] = fastrnn.workspace_bytes("gru", 10, 4, 8, 16)
    version: str = fastrnn.__version__
    try:
        fastrnn.GRU(4, 8)(np.zeros((2, 1, 4), np.float64))
    except fastrnn.DtypeError as e:
        print(f"fastrnn {version}: {info['simd_active']}, {sizes['reserve']} B reserve; {e}")


if TYPE_CHECKING:
    fastrnn.LSTM("4", 8)  # type: ignore[arg-type]
    fastrnn.set_num_threads(2.5)  # type: ignore[arg-type]
    fastrnn.LSTM(4, 8).backward([1.0])  # type: ignore[arg-type]
    h_only: FloatArray = fastrnn.LSTM(4, 8)(np.zeros((2, 1, 4)))[1]  # type: ignore[assignment]
    fastrnn.GRU(4, 8)(np.zeros((2, 1, 4)))[0].no_such_attribute  # type: ignore[attr-defined]
    functional.layer_backward(None, np.zeros(3))  # type: ignore[arg-type]
    _core.reserve_size("lstm", 1, 1, 1, 1)  # type: ignore[arg-type]


if __name__ == "__main__":
    modules()
    layers()
    runtime()
'''


def _write_user_program(tmp_path: Path) -> Path:
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM).lstrip())
    return program


def test_user_program_type_checks_strict(tmp_path):
    """mypy --strict, the strictest common setting: the program itself must be fully annotated,
    and disallow_untyped_calls / warn_return_any fail on any public function that is
    unannotated or returns Any. That it resolves ``fastrnn`` at all shows py.typed is found:
    without it mypy reports the package as installed but untyped."""
    _require_mypy()
    program = _write_user_program(tmp_path)
    config = _mypy_config(tmp_path)
    proc = _run(["-m", "mypy", "--strict", "--config-file", str(config),
                 "--cache-dir", str(tmp_path / ".mypy_cache"), str(program)], tmp_path)
    assert proc.returncode == 0, f"mypy --strict on a user program:\n{proc.stdout}{proc.stderr}"


def test_user_program_runs(tmp_path):
    """The same program runs: the annotations describe what the calls really take and give."""
    program = _write_user_program(tmp_path)
    proc = _run([str(program)], tmp_path, timeout=300)
    assert proc.returncode == 0, f"the user program failed:\n{proc.stdout}{proc.stderr}"
