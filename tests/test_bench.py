"""Checks of the benchmark harness (fastrnn.bench) on tiny problems.

A benchmark is a program, not a test: nothing here asserts on speed, only that the harness runs,
counts FLOPs by the stated convention and writes well-formed, finite, positive numbers.
"""
import json
import math
import subprocess
import sys

import pytest

from fastrnn import bench

# The torch peer joins whenever torch is importable (it is in the test extra).
AVAILABLE = {name for name, peer in bench.PEERS.items() if peer.unavailable() is None}

FAST = ["--repeats", "3", "--min-repeats", "2", "--warmup", "1", "--warmup-s", "0", "--budget", "0"]


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_measurement(m, flops):
    assert set(m) >= {"times_s", "n", "warmup", "median_s", "min_s", "q1_s", "q3_s", "spread",
                      "gflops", "gflops_best"}
    assert m["q1_s"] <= m["median_s"] <= m["q3_s"] and m["spread"] >= 0
    assert m["n"] == len(m["times_s"]) >= 2
    assert m["warmup"] >= 1
    assert all(_positive_finite(t) for t in m["times_s"])
    assert m["min_s"] == min(m["times_s"])
    assert min(m["times_s"]) <= m["median_s"] <= max(m["times_s"])
    assert _positive_finite(m["gflops"])
    assert m["gflops"] == pytest.approx(flops / m["median_s"] / 1e9)


def test_main_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    specs = ["lstm:T=3,B=2,I=4,H=5", "gru:T=2,B=1,H=3,layers=2,bidirectional=1",
             "rnn_relu:T=3,B=2,I=4,H=5,dtype=float64"]
    argv = FAST + ["--json", str(path)]
    for spec in specs:
        argv += ["--config", spec]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "fwd+bwd ms" in printed and "lstm T=3 B=2 I=4 H=5" in printed

    doc = json.loads(path.read_text())
    assert doc["schema"] == bench.JSON_SCHEMA
    assert doc["suite"] == "custom"
    meta = doc["meta"]
    assert meta["fastrnn_version"] and meta["build_info"]["blas"]
    assert meta["threads"]["cpu_count"] >= 1
    assert _positive_finite(meta["wall_s"])
    assert len(doc["results"]) == len(specs)

    for result, spec in zip(doc["results"], specs):
        cfg = bench.parse_config(spec)
        assert result["config"]["label"] == cfg.label
        assert result["flops"] == {"forward": cfg.forward_flops(),
                                   "forward_backward": 3 * cfg.forward_flops()}
        assert set(result["peers"]) == AVAILABLE >= {"fastrnn", "numpy"}
        for entry in result["peers"].values():
            assert "error" not in entry
            _check_measurement(entry["forward"], result["flops"]["forward"])
            _check_measurement(entry["forward_backward"], result["flops"]["forward_backward"])
            acc = entry["accuracy"]
            assert acc["finite"] and 0 <= acc["max_abs_diff"] < 1e-4
        assert set(result["speedup"]) == AVAILABLE - {"fastrnn"}
        for peer in AVAILABLE - {"fastrnn"}:
            assert all(_positive_finite(v) for v in result["speedup"][peer].values())


def test_flop_convention():
    # 2*G*H*(I+H)*B*T per layer and direction; layer 2 of a bidirectional stack sees I = 2H.
    cfg = bench.Config("lstm", T=7, B=3, I=4, H=5)
    assert cfg.forward_flops() == 2 * 4 * 5 * (4 + 5) * 3 * 7
    assert cfg.forward_backward_flops() == 3 * cfg.forward_flops()
    stacked = bench.Config("gru", T=2, B=1, I=4, H=5, layers=2, bidirectional=True)
    assert stacked.forward_flops() == 2 * (2 * 3 * 5 * (4 + 5) * 2) + 2 * (2 * 3 * 5 * (10 + 5) * 2)
    assert bench.Config("rnn_tanh", 1, 1, 1, 1).forward_flops() == 2 * 1 * 1 * 2


def test_suites_and_filters():
    assert [c.cell for c in bench.SUITES["quick"]] == ["rnn_tanh", "rnn_relu", "lstm", "gru"]
    full = {(c.cell, c.H, c.B, c.T) for c in bench.SUITES["full"]}
    assert ("lstm", 256, 64, 150) in full and ("gru", 1024, 32, 187) in full
    assert ("rnn_relu", 1024, 16, 50) in full and len(full) == 17
    args = bench.build_parser().parse_args(["--cells", "lstm,rnn", "--dtype", "float64"])
    configs = bench.select_configs(args)
    assert {c.cell for c in configs} == {"lstm", "rnn_tanh", "rnn_relu"}
    assert all(c.dtype == "float64" for c in configs)


def test_parse_config():
    cfg = bench.parse_config("lstm:T=3,B=2,H=5,layers=2,bidirectional=true")
    assert cfg == bench.Config("lstm", 3, 2, 5, 5, layers=2, bidirectional=True)
    for bad in ["lstm:T=3,B=2", "cnn:T=1,B=1,H=1", "lstm:T=0,B=1,H=1", "lstm:T=1,B=1,H=1,x=2",
                "lstm:T=1,B=1,H=1,dtype=float16"]:
        with pytest.raises(ValueError):
            bench.parse_config(bad)


def test_module_entry_point(tmp_path):
    path = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "fastrnn.bench", "--suite", "smoke",
                           "--peers", "fastrnn", "--json", str(path)] + FAST,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    assert len(doc["results"]) == len(bench.SUITES["smoke"])
    assert all(set(r["peers"]) == {"fastrnn"} and r["speedup"] == {} for r in doc["results"])


def test_torch_peer_runs_the_same_problem(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "t.json"
    assert bench.main(FAST + ["--peers", "torch,fastrnn,fastrnn.torch", "--json", str(path),
                              "--config", "lstm:T=4,B=3,I=5,H=6,layers=2,bidirectional=1",
                              "--config", "rnn_tanh:T=2,B=1,I=2,H=3,dtype=float64"]) == 0
    doc = json.loads(path.read_text())
    for result in doc["results"]:
        for name in ("torch", "fastrnn.torch"):
            entry = result["peers"][name]
            assert "error" not in entry, entry
            # same weights and input as fastrnn: the outputs agree with the float64 reference
            assert entry["accuracy"]["finite"] and entry["accuracy"]["max_abs_diff"] < 1e-5
            _check_measurement(entry["forward_backward"], result["flops"]["forward_backward"])
        ratio = result["speedup_torch_adapter"]
        peers = result["peers"]
        for kind in ("forward", "forward_backward"):
            assert ratio[kind] == pytest.approx(peers["torch"][kind]["median_s"]
                                                / peers["fastrnn.torch"][kind]["median_s"])


def test_bench_runs_without_torch():
    """The quick benchmark needs nothing but NumPy: hide torch and run a tiny suite."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from fastrnn import bench\n"
            "raise SystemExit(bench.main(" + repr(FAST + ["--config", "gru:T=2,B=1,I=2,H=3"]) + "))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "peer torch skipped" in proc.stderr
