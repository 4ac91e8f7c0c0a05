"""Checks of the benchmark harness (fastrnn.bench) on tiny problems.

A benchmark is a program, not a test: nothing here asserts on speed, only that the harness runs,
counts FLOPs by the stated convention and writes well-formed, finite, positive numbers.
"""
import json
import math
import shlex
import subprocess
import sys
import time

import pytest

from fastrnn import _core, bench

# The torch peer joins whenever torch is importable (it is in the test extra).
AVAILABLE = {name for name, peer in bench.PEERS.items() if peer.unavailable() is None}

FAST = ["--repeats", "3", "--min-repeats", "2", "--warmup", "1", "--warmup-s", "0", "--budget", "0",
        "--gemm-n", "128"]


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_measurement(m, flops, floor_s):
    assert set(m) >= {"times_s", "n", "warmup", "median_s", "min_s", "q1_s", "q3_s", "spread",
                      "gflops", "gflops_best", "floor_fraction"}
    assert m["q1_s"] <= m["median_s"] <= m["q3_s"] and m["spread"] >= 0
    assert m["n"] == len(m["times_s"]) >= 2
    assert m["warmup"] >= 1
    assert all(_positive_finite(t) for t in m["times_s"])
    assert m["min_s"] == min(m["times_s"])
    assert min(m["times_s"]) <= m["median_s"] <= max(m["times_s"])
    assert _positive_finite(m["gflops"])
    assert m["gflops"] == pytest.approx(flops / m["median_s"] / 1e9)
    assert _positive_finite(m["floor_fraction"])
    assert m["floor_fraction"] == pytest.approx(floor_s / m["median_s"])


def test_main_writes_json_and_markdown(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    md_path = tmp_path / "md" / "results.md"
    specs = ["lstm:T=3,B=2,I=4,H=5", "gru:T=2,B=1,H=3,layers=2,bidirectional=1",
             "rnn_relu:T=3,B=2,I=4,H=5,dtype=float64"]
    argv = FAST + ["--json", str(path), "--markdown", str(md_path)]
    for spec in specs:
        argv += ["--config", spec]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "fwd+bwd ms" in printed and "lstm T=3 B=2 I=4 H=5" in printed
    assert "flr%" in printed and "GFLOP/s" in printed and "read bandwidth" in printed

    doc = json.loads(path.read_text())
    assert doc["schema"] == bench.JSON_SCHEMA
    assert doc["suite"] == "custom"
    meta = doc["meta"]
    assert meta["fastrnn_version"] and meta["build_info"]["blas"]
    assert meta["threads"]["cpu_count"] >= 1
    assert _positive_finite(meta["wall_s"])
    assert meta["argv"] == argv
    ceilings = meta["ceilings"]
    assert ceilings["threads"] >= 1
    assert set(ceilings["gemm"]) == {"float32", "float64"}  # a float64 config ran
    assert all(_positive_finite(m["gflops"]) and m["method"] for m in ceilings["gemm"].values())
    assert ceilings["read"] and all(_positive_finite(m["gbs"]) and m["method"]
                                    for m in ceilings["read"].values())
    assert len(doc["results"]) == len(specs)

    for result, spec in zip(doc["results"], specs):
        cfg = bench.parse_config(spec)
        assert result["config"]["label"] == cfg.label
        assert result["flops"] == {"forward": cfg.forward_flops(),
                                   "forward_backward": 3 * cfg.forward_flops()}
        floor = result["floor"]
        assert floor["forward"]["bytes"] == cfg.forward_bytes()
        assert floor["forward_backward"]["bytes"] == cfg.forward_backward_bytes()
        assert str(bench.read_probe_bytes(cfg.whh_bytes())) in ceilings["read"]
        assert set(result["peers"]) == AVAILABLE >= {"fastrnn", "numpy"}
        for entry in result["peers"].values():
            assert "error" not in entry
            for kind in ("forward", "forward_backward"):
                _check_measurement(entry[kind], result["flops"][kind], floor[kind]["floor_s"])
            acc = entry["accuracy"]
            assert acc["finite"] and 0 <= acc["max_abs_diff"] < 1e-4
            assert acc["grad_input"]["finite"] and 0 <= acc["grad_input"]["max_abs_diff"] < 1e-4
        assert set(result["speedup"]) == AVAILABLE - {"fastrnn"}
        for peer in AVAILABLE - {"fastrnn"}:
            assert all(_positive_finite(v) for v in result["speedup"][peer].values())

    md = md_path.read_text()
    assert f"`{shlex.join(['python', '-m', 'fastrnn.bench', *argv])}`" in md  # the exact command
    assert "GEMM ceiling" in md and meta["cpu_model"] in md and "threads" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["config", "fwd ms", "fwd+bwd ms"]
    assert {"floor fwd", "floor fwd+bwd", "max abs err y", "max abs err dx"} <= set(header)
    assert {f"vs {p} fwd+bwd" for p in AVAILABLE - {"fastrnn"}} <= set(header)
    assert len(table) == 2 + len(specs)  # header, alignment, one row per configuration
    for line, result in zip(table[2:], doc["results"]):
        row = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        assert row["config"] == result["config"]["label"]
        fastrnn = result["peers"]["fastrnn"]
        assert float(row["fwd ms"]) == pytest.approx(fastrnn["forward"]["median_s"] * 1e3,
                                                     rel=0.01)
        assert row["floor fwd"].endswith("%") and float(row["max abs err dx"]) < 1e-4
        for peer in AVAILABLE - {"fastrnn"}:
            assert row[f"vs {peer} fwd"] == f"{result['speedup'][peer]['forward']:.2f}x"


def test_floor_by_hand():
    """The floor of lstm T=3 B=2 I=4 H=5 worked out from the stated conventions."""
    cfg = bench.parse_config("lstm:T=3,B=2,I=4,H=5")
    # forward: T*|W_hh| + |W_ih| + |x| + |y| = 3*4*5*5 + 4*5*4 + 3*2*4 + 3*2*5 elements of 4 bytes
    fwd_bytes = (300 + 80 + 24 + 30) * 4
    fb_bytes = 2 * fwd_bytes + 3 * 2 * 4 * 5 * 4  # + the saved gates T*B*G*H
    assert cfg.whh_bytes() == 4 * 5 * 5 * 4
    assert (cfg.forward_bytes(), cfg.forward_backward_bytes()) == (fwd_bytes, fb_bytes)
    probe = bench.read_probe_bytes(cfg.whh_bytes())
    ceilings = bench.CpuCeilings(threads=1, gemm={"float32": {"gflops": 100.0}},
                              read={probe: {"gbs": 75.0}})
    floor = bench.floor_times(cfg, ceilings)
    fwd_flops = 2 * 4 * 5 * (4 + 5) * 2 * 3  # 2160
    # forward: bytes 1736 / 75 GB/s = 23.1 ns > 2160 FLOP / 100 GFLOP/s = 21.6 ns: memory-bound
    assert floor["forward"]["floor_s"] == pytest.approx(1736 / 75e9)
    assert floor["forward"]["compute_s"] == pytest.approx(fwd_flops / 100e9)
    assert floor["forward"]["bound"] == "memory"
    # forward+backward: 3952 B / 75 GB/s = 52.7 ns < 6480 FLOP / 100 GFLOP/s = 64.8 ns
    assert floor["forward_backward"]["floor_s"] == pytest.approx(3 * fwd_flops / 100e9)
    assert floor["forward_backward"]["memory_s"] == pytest.approx(3952 / 75e9)
    assert floor["forward_backward"]["bound"] == "compute"


def test_read_probe_sizes():
    # nearest power of two, at least READ_MIN_BYTES: 3 MiB (GRU H=512) shares 4 MiB's measurement
    assert bench.read_probe_bytes(400) == bench.READ_MIN_BYTES
    assert bench.read_probe_bytes(1 << 20) == 1 << 20
    assert bench.read_probe_bytes(3 << 20) == 4 << 20
    assert bench.read_probe_bytes(5 << 20) == 4 << 20
    assert bench.Config("gru", 1, 1, 512, 512).whh_bytes() == 3 << 20


def test_ceilings_measured_by_the_core():
    configs = [bench.parse_config("lstm:T=3,B=2,I=4,H=5"),
               bench.parse_config("gru:T=1,B=1,H=256,dtype=float64")]
    measured = bench.CpuCeilings.measure(configs, gemm_n=64)
    assert set(measured.gemm) == {"float32", "float64"}
    assert set(measured.read) == {bench.read_probe_bytes(c.whh_bytes()) for c in configs}
    assert all("_core" in m["method"] and _positive_finite(m["gflops"])
               for m in measured.gemm.values())
    assert all("_core" in m["method"] and _positive_finite(m["gbs"])
               for m in measured.read.values())


def test_core_probes_reject_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        _core.measure_gemm_gflops("float16", 64, 1)
    with pytest.raises(ValueError, match="n: expected"):
        _core.measure_gemm_gflops("float32", 0, 1)
    with pytest.raises(ValueError, match="nbytes"):
        _core.measure_read_gbs(10, 1)
    with pytest.raises(ValueError, match="reps"):
        _core.measure_read_gbs(1 << 16, 0)


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


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "speedup.png"
    assert bench.main(FAST + ["--peers", "fastrnn,numpy", "--plot", str(path),
                              "--config", "lstm:T=3,B=1,I=4,H=5",
                              "--config", "lstm:T=3,B=4,I=4,H=5"]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_first(tmp_path):
    """No matplotlib: exit 2 naming the fix, before any measurement."""
    path = tmp_path / "p.png"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from fastrnn import bench\n"
            "raise SystemExit(bench.main(" + repr(FAST + ["--suite", "smoke", "--plot", str(path)])
            + "))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install matplotlib" in proc.stderr
    assert proc.stdout == "" and not path.exists()


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
            _check_measurement(entry["forward_backward"], result["flops"]["forward_backward"],
                               result["floor"]["forward_backward"]["floor_s"])
            assert entry["accuracy"]["grad_input"]["max_abs_diff"] < 1e-5
        ratio = result["speedup_torch_adapter"]
        peers = result["peers"]
        for kind in ("forward", "forward_backward"):
            assert ratio[kind] == pytest.approx(peers["torch"][kind]["median_s"]
                                                / peers["fastrnn.torch"][kind]["median_s"])


def test_bench_runs_without_torch():
    """The quick benchmark needs nothing but NumPy: hide torch, jax and flax and run a tiny
    suite."""
    code = ("import sys\n"
            "for name in ('torch', 'jax', 'flax'): sys.modules[name] = None\n"
            "from fastrnn import bench\n"
            "raise SystemExit(bench.main(" + repr(FAST + ["--config", "gru:T=2,B=1,I=2,H=3"]) + "))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for peer in ("torch", "fastrnn.torch", "jax", "fastrnn.jax"):
        assert f"peer {peer} skipped" in proc.stderr
    assert "pip install jax flax" in proc.stderr
    assert "  fastrnn  " in proc.stdout and "  numpy  " in proc.stdout


def _jax_peers_or_skip():
    """Skip where the JAX peers cannot run (no jax or flax, or fastrnn built without its XLA
    handlers) -- unless FASTRNN_REQUIRE_JAX=1, where that fails instead (tests/conftest.py)."""
    import os
    why = bench.PEERS["jax"].unavailable() or bench.PEERS["fastrnn.jax"].unavailable()
    if why is not None:
        if os.environ.get("FASTRNN_REQUIRE_JAX") == "1":
            pytest.fail(f"FASTRNN_REQUIRE_JAX=1 but the JAX peers cannot run: {why}")
        pytest.skip(why)


def test_jax_peers_run_the_same_problem(tmp_path, capsys):
    """Flax's scanned cells (jax) and fastrnn.jax.layer (fastrnn.jax) on every cell, stacked,
    bidirectional and in float64: the same outputs and input gradients as the reference, the
    ratio line and column, and the geometric means with the target."""
    _jax_peers_or_skip()
    path, md_path = tmp_path / "j.json", tmp_path / "j.md"
    specs = ["lstm:T=4,B=3,I=5,H=6,layers=2,bidirectional=1", "gru:T=3,B=2,I=4,H=5",
             "rnn_tanh:T=3,B=2,I=4,H=5", "rnn_relu:T=2,B=1,I=2,H=3,dtype=float64"]
    argv = FAST + ["--peers", "fastrnn,jax,fastrnn.jax", "--json", str(path),
                   "--markdown", str(md_path)]
    for spec in specs:
        argv += ["--config", spec]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert "Flax" in doc["meta"]["peers"]["jax"] and "fastrnn.jax" in doc["meta"]["peers"]
    for result in doc["results"]:
        f64 = result["config"]["dtype"] == "float64"
        for name in ("jax", "fastrnn.jax"):
            entry = result["peers"][name]
            assert "error" not in entry, entry
            # the same weights, input and dy as fastrnn: both agree with the float64 reference
            bound = 1e-12 if f64 else 1e-5
            assert entry["accuracy"]["finite"] and entry["accuracy"]["max_abs_diff"] < bound
            assert entry["accuracy"]["grad_input"]["max_abs_diff"] < bound
            for kind in ("forward", "forward_backward"):
                _check_measurement(entry[kind], result["flops"][kind],
                                   result["floor"][kind]["floor_s"])
        ratio, peers = result["speedup_jax_adapter"], result["peers"]
        for kind in ("forward", "forward_backward"):
            assert ratio[kind] == pytest.approx(peers["jax"][kind]["median_s"]
                                                / peers["fastrnn.jax"][kind]["median_s"])
    for cell in ("OptimizedLSTMCell", "GRUCell", "SimpleCell"):
        assert f"Flax nnx.RNN({cell}) time / fastrnn.jax's: fwd " in out

    summary = doc["adapters"]["speedup_jax_adapter"]
    assert summary["pair"] == ["jax", "fastrnn.jax"] and summary["configs"] == len(specs)
    for kind in ("forward", "forward_backward"):
        ratios = [r["speedup_jax_adapter"][kind] for r in doc["results"]]
        assert summary["geomean"][kind] == pytest.approx(
            math.exp(sum(map(math.log, ratios)) / len(ratios)))
    assert summary["target"]["met"] == (summary["geomean"]["forward_backward"] >= 3
                                        and min(min(r["speedup_jax_adapter"].values())
                                                for r in doc["results"]) >= 1)
    line = next(ln for ln in out.splitlines() if ln.startswith("jax / fastrnn.jax, geometric"))
    assert f"over {len(specs)} config(s): fwd " in line and "target fwd+bwd >= 3x" in line

    md = md_path.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert {"jax / fastrnn.jax fwd", "jax / fastrnn.jax fwd+bwd", "vs jax fwd+bwd"} <= set(header)
    row = dict(zip(header, (c.strip() for c in table[2].strip("|").split("|"))))
    assert row["jax / fastrnn.jax fwd+bwd"] == (
        f"{doc['results'][0]['speedup_jax_adapter']['forward_backward']:.2f}x")
    assert f"- {line}" in md


def test_adapter_summary_geometric_means_and_the_jax_target():
    def result(label, jax_ratio, torch_ratio=None):
        r = {"config": {"label": label}, "speedup_jax_adapter": jax_ratio}
        if torch_ratio:
            r["speedup_torch_adapter"] = torch_ratio
        return r

    results = [result("a", {"forward": 2.0, "forward_backward": 4.0},
                      {"forward": 1.5, "forward_backward": 1.5}),
               result("b", {"forward": 8.0, "forward_backward": 2.5})]
    summary = bench.adapter_summary(results)
    jax = summary["speedup_jax_adapter"]
    assert jax["geomean"] == {"forward": pytest.approx(4.0),
                              "forward_backward": pytest.approx(math.sqrt(10))}
    assert jax["slower"] == {"forward": [], "forward_backward": []} and jax["target"]["met"]
    assert summary["speedup_torch_adapter"]["configs"] == 1
    assert "target" not in summary["speedup_torch_adapter"]
    # a row slower than Flax misses the target whatever the mean
    results.append(result("c", {"forward": 0.9, "forward_backward": 30.0}))
    jax = bench.adapter_summary(results)["speedup_jax_adapter"]
    assert jax["slower"]["forward"] == ["c"] and not jax["target"]["met"]
    assert bench.adapter_summary([result("d", None)]) == {}


# ---- GPU mode (--device cuda): what runs without a GPU ---------------------------------------

def test_help_lists_device():
    proc = subprocess.run([sys.executable, "-m", "fastrnn.bench", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--device {cpu,cuda}" in proc.stdout
    assert "gpu-quick" in proc.stdout and "--dtypes" in proc.stdout and "--algo" in proc.stdout


@pytest.mark.skipif(bench.gpu_unavailable_reason() is None,
                    reason="a GPU is usable here, so --device cuda runs")
def test_device_cuda_without_gpu_exits_2():
    """No GPU: one line on stderr saying why, exit code 2, nothing measured."""
    proc = subprocess.run([sys.executable, "-m", "fastrnn.bench", "--device", "cuda"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m fastrnn.bench: error: --device cuda: no usable GPU here")
    assert bench.gpu_unavailable_reason() in lines[0]


def test_gpu_and_cpu_options_stay_apart(capsys):
    for argv in (["--suite", "gpu"], ["--algo", "standard"], ["--dtypes", "bfloat16"],
                 ["--device", "cuda", "--peers", "torch"],
                 ["--device", "cuda", "--dtype", "float32"],
                 ["--device", "cuda", "--dtypes", "float64"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2, argv
    capsys.readouterr()


def test_gpu_suites_list_without_gpu(capsys):
    full = bench.GPU_SUITES["gpu"]
    shapes = {(r.config.cell, r.config.H, r.config.B, r.config.T, r.packed) for r in full}
    assert len(full) == len(shapes) == 17 + 9 + 16 + 4
    assert {("lstm", 4096, 128, 50, False), ("gru", 1024, 32, 187, False),
            ("gru", 1024, 8, 100, False), ("lstm", 512, 16, 100, True)} <= shapes
    assert all(r.config.I == r.config.H and r.dtype == "float32" for r in full)
    assert 4 <= len(bench.GPU_SUITES["gpu-quick"]) <= 6
    assert bench.main(["--device", "cuda", "--suite", "gpu-quick", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(bench.GPU_SUITES["gpu-quick"])  # float32 and bfloat16 of each
    assert [line.split()[5] for line in lines[:2]] == ["float32", "bfloat16"]
    assert bench.main(["--device", "cuda", "--list", "--cells", "gru", "--dtypes", "float16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("gru ") and " float16" in line for line in lines)


def test_gpu_counts_and_floor():
    cfg = bench.parse_config("lstm:T=3,B=2,I=4,H=5")
    counts = bench.work_counts(cfg)  # Config's own counts in float32
    assert counts["forward"] == {"flops": cfg.forward_flops(), "bytes": cfg.forward_bytes()}
    assert counts["forward_backward"] == {"flops": 3 * cfg.forward_flops(),
                                          "bytes": cfg.forward_backward_bytes()}
    half = bench.work_counts(cfg, dtype="bfloat16")
    assert half["forward"]["bytes"] * 2 == cfg.forward_bytes()
    # packed, 4 of the 6 steps of work: 2*G*H*(I+H)*4 FLOPs; T*|W_hh| + |W_ih| + 4*(I+H) elements
    packed = bench.work_counts(cfg, rows=4)
    assert packed["forward"] == {"flops": 2 * 4 * 5 * 9 * 4, "bytes": (300 + 80 + 36) * 4}
    assert packed["forward_backward"]["bytes"] == 2 * 416 * 4 + 4 * 4 * 5 * 4
    ceilings = bench.GpuCeilings(hbm={"gbs": 100.0}, gemm={"float32": {"tflops": 1e-3}})
    floor = ceilings.floor_times(counts, "float32")
    assert floor == bench.floor_times(cfg, ceilings, "float32")
    assert floor["forward"]["floor_s"] == pytest.approx(max(2160 / 1e9, 1736 / 100e9))
    assert floor["forward"]["bound"] == "compute"
    lengths = bench.packed_lengths(100, 16, seed=3)
    assert lengths == bench.packed_lengths(100, 16, seed=3) and lengths[0] == 100
    assert len(set(lengths)) > 1 and all(25 <= n <= 100 for n in lengths)


class _HostEvent:
    """torch.cuda.Event's timing interface on the host clock (the GPU mode's harness on a CPU)."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_gpu_row_harness_on_the_cpu(tmp_path, monkeypatch):
    """run_gpu_row with device='cpu' and host-clock events: both modules are checked against
    float64 and timed, the table and JSON come out; a call fastrnn.torch hands to torch.nn
    (bfloat16 on the CPU) is caught as an error, not timed as fastrnn."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    settings = bench.Settings(repeats=3, min_repeats=2, warmup=1, warmup_s=0, budget=0)
    ceilings = bench.GpuCeilings(hbm={"gbs": 10.0},
                                 gemm={dt: {"tflops": 0.01} for dt in bench.GPU_DTYPES})
    rows = [bench.GpuRow(bench.parse_config("lstm:T=5,B=3,I=4,H=6")),
            bench.GpuRow(bench.parse_config("gru:T=6,B=4,I=3,H=5"), packed=True),
            bench.GpuRow(bench.parse_config("rnn_tanh:T=4,B=2,I=3,H=4,layers=2,bidirectional=1")),
            bench.GpuRow(bench.parse_config("lstm:T=3,B=2,I=4,H=5"), dtype="bfloat16")]
    results = [bench.json_safe(bench.run_gpu_row(r, settings, ceilings, device="cpu"))
               for r in rows]
    for r in results[:3]:
        assert bench.row_failure(r) is None, r
        assert r["torch_nn_path"] == "native (not cuDNN)"  # no cuDNN on the CPU
        for name in ("fastrnn", "cudnn"):
            for kind in ("forward", "forward_backward"):
                m = r[name][kind]
                assert m["n"] >= 2 and _positive_finite(m["median_s"])
                assert m["floor_fraction"] == pytest.approx(r["floor"][kind]["floor_s"]
                                                            / m["median_s"])
        assert r["ratio"]["forward"] == pytest.approx(r["cudnn"]["forward"]["median_s"]
                                                      / r["fastrnn"]["forward"]["median_s"])
        acc = r["accuracy"]
        assert acc["flags"] == [] and acc["finite"] == {"fastrnn": True, "cudnn": True}
        for errs in (acc["fastrnn_vs_cudnn"], acc["fastrnn_vs_f64"], acc["cudnn_vs_f64"]):
            assert set(errs) == {"y", "y_train", "dx", "dw_hh"}
            assert all(0 <= e < 1e-5 for e in errs.values()), errs
        assert r["tf32"] == {"matmul": False, "cudnn": False}
    packed = results[1]
    assert packed["rows"] == sum(packed["lengths"]) < 6 * 4
    assert packed["floor"]["forward"]["flops"] == 2 * 3 * 5 * (3 + 5) * packed["rows"]
    assert packed["targets"]["no_persistent_2x"]["applies"]
    fallback = results[3]
    assert "fastrnn.torch ran torch.nn's implementation" in fallback["fastrnn"]["error"]
    assert "forward" in fallback["cudnn"] and fallback["ratio"] == {}
    assert "fastrnn.torch ran torch.nn" in bench.row_failure(fallback)

    table = bench.cudnn_table(results)
    assert len(table) == 2 + len(rows)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert {"algo", "fastrnn fwd ms", "cuDNN fwd ms", "fwd ratio", "f+b ratio", "floor% f+b",
            "err y vs cuDNN"} <= set(header)
    cells = dict(zip(header, (c.strip() for c in table[2].strip("|").split("|"))))
    assert cells["fwd ratio"] == f"{results[0]['ratio']['forward']:.2f}x"
    summary = bench.targets_summary(results)
    assert summary["rows_measured"] == 3 and summary["rows_total"] == 4
    meta = {"ceilings": ceilings.to_dict(), "device": {"name": "cpu"}}
    path = tmp_path / "gpu.json"
    bench.write_json(str(path), bench.gpu_document(meta, settings, "custom", results,
                                                   complete=True))
    doc = json.loads(path.read_text())
    assert doc["mode"] == "cuda" and doc["complete"] and len(doc["results"]) == len(rows)
    assert doc["meta"]["ceilings"] == ceilings.to_dict() and len(doc["failed"]) == 1


# ---- the pieces both modes share ------------------------------------------------------------

class _FakeTime:
    """time.perf_counter of the timing module, advanced by the calls under measurement."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_measure_on_the_wall_clock_stops_by_budget(monkeypatch):
    """A 0.4 s call: one warm-up run is enough (it used budget/4), then runs until the budget of
    1 s is spent; the garbage collector is off inside the runs and back on after."""
    import gc

    fake = _FakeTime()
    monkeypatch.setattr(bench.timing, "time", fake)
    gc_states = []

    def call():
        gc_states.append(gc.isenabled())
        fake.now += 0.4

    settings = bench.Settings(repeats=50, min_repeats=2, warmup=2, warmup_s=0.2, budget=1.0)
    m = bench.measure([call], settings)
    assert m["warmup"] == 1
    assert m["n"] == 3 and m["times_s"] == pytest.approx([0.4] * 3)
    assert m["median_s"] == pytest.approx(0.4) and m["spread"] == pytest.approx(0, abs=1e-9)
    assert gc_states == [False] * 4 and gc.isenabled()
    # repeats caps the runs, min_repeats outlasts a zero budget
    assert bench.measure([call], bench.Settings(repeats=2, min_repeats=1, warmup=1, warmup_s=0,
                                                budget=100))["n"] == 2
    assert bench.measure([call], bench.Settings(repeats=9, min_repeats=4, warmup=1, warmup_s=0,
                                                budget=0))["n"] == 4


class _RecordingClock:
    """A device clock that records what measure asks of it; run k takes durations[k] seconds
    (its marks are milliseconds, as CUDA events give)."""

    def __init__(self, log, durations):
        self.log, self.durations = log, list(durations)

    def wait(self):
        self.log.append("wait")

    def time_call(self, call):
        self.log.append("start")
        call()
        self.log.append("stop")
        return 1e3 * self.durations.pop(0)

    def seconds(self, mark):
        return mark / 1e3


def test_measure_rotates_inputs_and_prepares_each_run():
    """Runs take the calls in turn, each after prepare(i) of the same input set; the clock
    waits after each warm-up run and once at the end; its marks become the times."""
    log = []
    calls = [lambda: log.append("call0"), lambda: log.append("call1")]
    clock = _RecordingClock(log, [0.005, 0.001, 0.004, 0.002, 0.003])
    settings = bench.Settings(repeats=5, min_repeats=2, warmup=3, warmup_s=0, budget=1e9)
    m = bench.measure(calls, settings, clock, prepare=lambda i: log.append(f"prep{i}"))
    warm = ["prep0", "call0", "wait", "prep1", "call1", "wait", "prep0", "call0", "wait"]
    timed = [step for k in (1, 0, 1, 0, 1) for step in (f"prep{k}", "start", f"call{k}", "stop")]
    assert log == warm + timed + ["wait"]
    assert m["warmup"] == 3 and m["n"] == 5
    assert m["times_s"] == pytest.approx([0.005, 0.001, 0.004, 0.002, 0.003])
    assert (m["median_s"], m["min_s"], m["q1_s"], m["q3_s"]) == pytest.approx(
        (0.003, 0.001, 0.002, 0.004))
    assert m["spread"] == pytest.approx(2 / 3)


def test_cuda_event_clock_starts_each_run_on_an_idle_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            log.append("record")
            self.at = len(log)

        def elapsed_time(self, end):
            return 1e3 * (end.at - self.at)  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: log.append("sync"))
    clock = bench.CudaEventClock()
    mark = clock.time_call(lambda: log.append("call"))
    assert log == ["sync", "record", "call", "record"]
    assert clock.seconds(mark) == 2.0
    clock.wait()
    assert log[-1] == "sync"


def test_add_rates_per_device():
    m = {"median_s": 2.0, "min_s": 1.0}
    assert bench.add_rates(dict(m), 4e9, 0.5) == {**m, "gflops": 2.0, "gflops_best": 4.0,
                                                  "floor_fraction": 0.25}
    assert bench.add_rates(dict(m), 4e12, 1.0, unit="tflops") == {**m, "tflops": 2.0,
                                                                  "floor_fraction": 0.5}


def test_one_floor_rule_for_both_devices():
    """The CPU's and the GPU's ceilings put the same floor under the same work at the same
    rates; each records the rates under its own names."""
    cfg = bench.parse_config("gru:T=4,B=2,I=3,H=5")
    probe = bench.read_probe_bytes(cfg.whh_bytes())
    cpu = bench.CpuCeilings(threads=1, gemm={"float32": {"gflops": 2.0}},
                            read={probe: {"gbs": 3.0}})
    gpu = bench.GpuCeilings(hbm={"gbs": 3.0}, gemm={"float32": {"tflops": 2e-3}})
    on_cpu, on_gpu = bench.floor_times(cfg, cpu), bench.floor_times(cfg, gpu, "float32")
    for phase, counts in bench.work_counts(cfg).items():
        a, b = on_cpu[phase], on_gpu[phase]
        for key in ("flops", "bytes", "bound"):
            assert a[key] == b[key]
        for key in ("compute_s", "memory_s", "floor_s"):
            assert a[key] == pytest.approx(b[key])
        assert (a["flops"], a["bytes"]) == (counts["flops"], counts["bytes"])
        assert a["floor_s"] == max(counts["flops"] / 2e9, counts["bytes"] / 3e9)
        assert (a["gemm_gflops"], a["read_gbs"]) == (2.0, 3.0)
        assert (b["gemm_tflops"], b["hbm_gbs"]) == (2e-3, 3.0)


def test_cells_dtypes_and_algos_come_from_the_package():
    from fastrnn import _cells, cuda

    assert set(bench.GPU_DTYPES) == set(cuda.DTYPES) and bench.GPU_DTYPES[:2] == ("float32",
                                                                                  "bfloat16")
    vanilla = tuple(m for m in _cells.MODES if _cells.CELLS[m].nonlinearity)
    assert bench.CELL_ALIASES == {"rnn": vanilla, "vanilla": vanilla}
    algo = next(a for a in bench.build_parser()._actions if a.dest == "algo")
    assert set(algo.choices) == set(cuda.ALGOS) and algo.choices[0] == "auto"


def test_gpu_mode_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    """The GPU mode through the shared run loop, without a GPU: host-clock events, fake
    ceilings and device description, rows run on the CPU. The bfloat16 row, which fastrnn.torch
    hands to torch.nn on the CPU, fails the run (exit 1) after every file is written."""
    torch = pytest.importorskip("torch")
    from fastrnn.bench import run_gpu

    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(run_gpu, "gpu_unavailable_reason", lambda: None)
    device = {"index": 0, "name": "host", "capability": "0.0", "multiprocessors": 1,
              "memory_bytes": 1 << 30, "l2_bytes": None}
    monkeypatch.setattr(run_gpu, "collect_meta", lambda argv, kind: {
        "fastrnn_version": "x", "build_info": {"cuda": False}, "device": device,
        "torch_version": torch.__version__, "torch_cuda": None, "cudnn_version": None,
        "date_utc": "now", "argv": list(argv)})
    ceilings = bench.GpuCeilings(hbm={"gbs": 10.0, "method": "fake"},
                                 gemm={dt: {"tflops": 0.01, "n": 64} for dt in bench.GPU_DTYPES})
    monkeypatch.setattr(bench.GpuCeilings, "measure", classmethod(lambda cls, *a: ceilings))
    real_run_gpu_row = run_gpu.run_gpu_row
    monkeypatch.setattr(run_gpu, "run_gpu_row",
                        lambda *a, **k: real_run_gpu_row(*a, device="cpu", **k))
    path, md_path = tmp_path / "gpu.json", tmp_path / "gpu.md"
    argv = FAST + ["--device", "cuda", "--config", "lstm:T=3,B=2,I=4,H=5",
                   "--dtypes", "float32,bfloat16", "--json", str(path), "--markdown", str(md_path)]
    assert bench.main(argv) == 1
    out, err = capsys.readouterr()
    assert "GPU benchmark against torch.nn (cuDNN)" in out and "HBM      : 10 GB/s" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and "2 row(s) in" in out
    assert "[1/2] lstm T=3 B=2 I=4 H=5 float32" in err and "FAILED (error, or non-finite" in err
    doc = json.loads(path.read_text())
    assert doc["complete"] and doc["meta"]["ceilings"] == ceilings.to_dict()
    assert [r["row"]["dtype"] for r in doc["results"]] == ["float32", "bfloat16"]
    assert doc["results"][0]["ratio"] and len(doc["failed"]) == 1
    assert doc["meta"]["wall_s"] > 0 and "torch_max_memory_bytes" in doc["meta"]
    md = md_path.read_text()
    assert md.startswith("### fastrnn x on host, suite 'custom'") and "- targets: " in md
    assert [line for line in md.splitlines() if line.startswith("|")] == table


# ---- the RL suite (--suite rl): fastrnn.torch against torch.nn ------------------------------

def test_rl_suite_rows(capsys):
    """The rows of docs/benchmarks.md, listed without torch's help; --cells filters them."""
    rows = bench.RL_SUITES["rl"]
    by_group = {g: [r for r in rows if r.group == g] for g in bench.RL_GROUPS}
    assert {(r.config.cell, r.config.T, r.config.B, r.config.I, r.config.H, r.reset_p)
            for r in by_group["update"]} == {(c, 128, b, 64, h, 0.02) for c in ("lstm", "gru")
                                             for b in (8, 64) for h in (64, 256)}
    for group, calls in (("cell", 1), ("loop", 100)):
        assert {(r.config.cell, r.config.B, r.config.H, r.calls) for r in by_group[group]} == {
            (c, b, h, calls) for c in ("lstm", "gru", "rnn_tanh") for b in (1, 16, 256)
            for h in (128, 512)}
        assert all(r.config.I == r.config.H and r.config.T == 1 for r in by_group[group])
    assert {(r.config.cell, r.config.layers, r.config.B, r.config.H, r.calls)
            for r in by_group["stream"]} == {(c, 2, 1, h, 200) for c in ("lstm", "gru")
                                             for h in (200, 650)}
    assert len(rows) == 8 + 2 * 18 + 4 == len({r.label for r in rows})
    assert not any(r in bench.SUITES["full"] + bench.SUITES["quick"] for r in rows)
    assert [r.torch_class for r in rows[8:14:2]] == ["LSTMCell"] * 3
    assert rows[9].label == "loop LSTMCell x100 B=1 H=128"
    # a loop's work is its steps' work; a stream's time (and work) is per call
    loop, stream = rows[9], by_group["stream"][0]
    assert loop.work_counts()["forward"]["flops"] == 100 * loop.config.forward_flops()
    assert loop.work_counts()["forward_backward"]["flops"] == 300 * loop.config.forward_flops()
    assert stream.phases == ("forward",) and set(stream.work_counts()) == {"forward"}
    assert stream.work_counts()["forward"]["bytes"] == stream.config.forward_bytes()
    for bad in [dict(group="batch", config=bench.Config("lstm", 1, 1, 2, 2)),
                dict(group="cell", config=bench.Config("lstm", 2, 1, 2, 2)),
                dict(group="loop", config=bench.Config("lstm", 1, 1, 2, 2)),  # calls=1
                dict(group="stream", config=bench.Config("gru", 3, 1, 2, 2), calls=4),
                dict(group="update", config=bench.Config("gru", 3, 1, 2, 2), calls=4)]:
        with pytest.raises(ValueError):
            bench.RlRow(**bad)

    assert bench.main(["--suite", "rl", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [r.group for r in rows]
    assert "per call" in lines[-1] and "MFLOP" in lines[0]
    assert bench.main(["--suite", "rl", "--list", "--cells", "gru"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 + 12 + 2 and all(" GRU" in line for line in lines)


def test_rl_options_stay_apart(capsys):
    for argv in (["--device", "cuda"], ["--config", "lstm:T=2,B=1,H=3"], ["--peers", "torch"],
                 ["--dtype", "float64"], ["--algo", "standard"], ["--plot", "x.png"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--suite", "rl-smoke"] + argv)
        assert exc.value.code == 2, argv
    assert "not with --suite rl-smoke" in capsys.readouterr().err


def test_rl_without_torch_exits_2():
    """No torch: one line naming the fix, exit 2, nothing measured; --list still works."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from fastrnn import bench\n"
            "assert bench.main(['--suite', 'rl', '--list']) == 0\n"
            "raise SystemExit(bench.main(" + repr(FAST + ["--suite", "rl-smoke"]) + "))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == len(bench.RL_SUITES["rl"])  # the --list only
    assert proc.stderr.strip().splitlines() == [
        "python -m fastrnn.bench: error: --suite rl-smoke times fastrnn.torch against torch.nn "
        "and needs torch: torch is not installed (pip install torch)"]


def test_rl_smoke_writes_json_and_markdown(tmp_path, capsys):
    """The RL harness on tiny rows of every group: both sides agree (the reset path computes
    what the (1 - episode_start) step loop computes), every number is well-formed, the table,
    the JSON and the Markdown have a row per row."""
    pytest.importorskip("torch")
    path, md_path = tmp_path / "rl.json", tmp_path / "rl.md"
    argv = FAST + ["--suite", "rl-smoke", "--json", str(path), "--markdown", str(md_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = bench.RL_SUITES["rl-smoke"]
    assert "RL benchmark: suite 'rl-smoke'" in out and "\ntargets   : " in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split()[:3] == ["row", "fastrnn", "ms"] and set(table[1]) <= {"-", " "}
    assert [line[:44].rstrip() for line in table[2:2 + len(rows)]] == [r.label for r in rows]
    assert all("x " in line and ">=" in line for line in table[2:2 + len(rows)])
    assert f"{len(rows)} row(s) in" in out and "  update: " in out and "  stream: " in out

    doc = json.loads(path.read_text())
    assert (doc["schema"], doc["mode"], doc["suite"]) == (bench.RL_JSON_SCHEMA, "rl", "rl-smoke")
    assert doc["complete"] and doc["failed"] == [] and doc["meta"]["argv"] == argv
    assert set(doc["conventions"]) >= {"flops", "bytes", "floor", "groups", "ratio", "accuracy",
                                       "targets", "timing", "measured"}
    assert set(doc["meta"]["peers"]) == {"fastrnn.torch", "torch.nn"}
    assert len(doc["results"]) == len(rows)
    for r, row in zip(doc["results"], rows):
        assert r["row"] == row.to_dict()
        assert set(r["floor"]) == set(r["ratio"]) == set(row.phases)
        for kind in row.phases:
            assert r["floor"][kind]["flops"] == row.work_counts()[kind]["flops"]
            for side in ("fastrnn.torch", "torch.nn"):
                m = r["sides"][side][kind]
                _check_measurement(m, r["floor"][kind]["flops"], r["floor"][kind]["floor_s"])
                assert m.get("calls_per_run", 1) == (row.calls if row.group == "stream" else 1)
            sides = r["sides"]
            assert r["ratio"][kind] == pytest.approx(sides["torch.nn"][kind]["median_s"]
                                                     / sides["fastrnn.torch"][kind]["median_s"])
        acc = r["accuracy"]
        assert acc["finite"] and acc["flags"] == [] and 0 <= acc["y"] < 1e-5
        assert ("grad" in acc) == (row.group != "stream")
        assert acc.get("grad", 0) < 1e-5
        assert all(set(t) == {"phase", "required", "ratio", "met"} for t in r["targets"])
        assert {t["phase"] for t in r["targets"]} == (
            {"forward_backward"} if row.group == "update" else set(row.phases))
    summary = doc["targets"]
    assert summary["rows_measured"] == summary["rows_total"] == len(rows)
    assert set(summary["groups"]) == set(bench.RL_GROUPS)

    md = md_path.read_text()
    assert f"`{shlex.join(['python', '-m', 'fastrnn.bench', *argv])}`" in md
    assert "- update: " in md and "- targets: " in md and doc["meta"]["cpu_model"] in md
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["row", "group", "fastrnn.torch fwd ms", "torch.nn fwd ms", "fwd ratio"]
    assert len(lines) == 2 + len(rows)
    first = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert first["f+b ratio"] == f"{doc['results'][0]['ratio']['forward_backward']:.2f}x"


def test_rl_episode_starts_are_fixed_and_drawn_at_p():
    torch = pytest.importorskip("torch")
    from fastrnn.bench import rl_workloads

    row = next(r for r in bench.RL_SUITES["rl"] if r.group == "update" and r.config.B == 64)
    starts = rl_workloads._data(row, seed=0)["episode_starts"]
    assert starts.dtype == torch.bool and starts.shape == (128, 64)
    assert 0.01 < starts.float().mean().item() < 0.03  # p = 0.02 of 8192 draws
    assert torch.equal(starts, rl_workloads._data(row, seed=0)["episode_starts"])
    assert not torch.equal(starts, rl_workloads._data(row, seed=1)["episode_starts"])


def test_measure_alternating_takes_turns():
    """Each side warms up in turn, then the timed runs alternate; a side stops at repeats while
    the other goes on; each side's times are its own."""
    log = []
    sides = [[lambda: log.append("a")], [lambda: log.append("b")]]
    clock = _RecordingClock(log, [0.001, 0.010, 0.002, 0.020, 0.003, 0.030])
    settings = bench.Settings(repeats=3, min_repeats=3, warmup=1, warmup_s=0, budget=1e9)
    a, b = bench.measure_alternating(sides, settings, clock,
                                     prepares=[None, lambda i: log.append("prep")])
    assert log == (["a", "wait", "prep", "b", "wait"]
                   + ["start", "a", "stop", "prep", "start", "b", "stop"] * 3 + ["wait"])
    assert a["times_s"] == pytest.approx([0.001, 0.002, 0.003])
    assert b["times_s"] == pytest.approx([0.010, 0.020, 0.030])
    assert bench.per_call(b, 10)["median_s"] == pytest.approx(0.002)
    assert bench.per_call(b, 10)["calls_per_run"] == 10


def test_xla_threads_note(monkeypatch):
    """The JAX peers' note when XLA's pool (one thread per usable CPU) and fastrnn's threads
    differ; no jax needed."""
    from fastrnn.bench import jax_peers
    monkeypatch.setattr(jax_peers, "xla_threads", lambda: 4)
    monkeypatch.setattr(jax_peers.fastrnn, "get_num_threads", lambda: 4)
    assert jax_peers.xla_threads_note() is None
    monkeypatch.setattr(jax_peers.fastrnn, "get_num_threads", lambda: 1)
    note = jax_peers.xla_threads_note()
    assert "4 threads" in note and "fastrnn uses 1" in note and "taskset" in note
