#!/usr/bin/env python3
"""Measure candidate CPU BLAS libraries for fastrnn's GEMM shapes.

Standalone: needs only numpy plus whichever candidate wheels are installed in the
running interpreter's environment (all from PyPI):

    python3 -m venv /tmp/blasvenv
    /tmp/blasvenv/bin/pip install numpy scipy-openblas32 mkl onednn
    /tmp/blasvenv/bin/python bench/blas_choice.py --runs 2 --json /tmp/blas.json

Candidates (each loaded with ctypes; a missing one is skipped):
  * openblas : scipy-openblas32, libscipy_openblas.so, scipy_cblas_{s,d}gemm
  * mkl      : Intel MKL (`mkl` wheel), libmkl_rt.so.{2,3}, cblas_{s,d}gemm
  * onednn   : oneDNN (`onednn` wheel), libdnnl.so, dnnl_sgemm (float32 only)

Every (library, threads, variant) setting runs in its own subprocess so that the
thread-count / kernel environment variables are in place before the library loads.
1-thread settings are additionally pinned to one core with `taskset -c 0` (oneDNN's
PyPI build threads through SYCL/TBB, which has no thread-count variable but respects
the affinity mask).

Shapes are the ones fastrnn's CPU layer issues (csrc/cpu/layer_impl.h), row-major:
  rec     : per-step recurrent  C[B,GH] = h[B,H] . W_hh[GH,H]^T   (trans_b)
  inproj  : input projection    C[T*B,GH] = X[T*B,I] . W_ih[GH,I]^T (trans_b)
  wgrad   : weight gradient     C[GH,I] = dG[T*B,GH]^T . X[T*B,I]  (trans_a)
Times are medians over timed batches after warm-up; GFLOP/s = 2*M*N*K / t.
"""
import argparse
import ctypes
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (name, M, N, K, trans_a, trans_b)
SHAPES = [
    ("rec B=1 H=256 (4H)", 1, 1024, 256, False, True),
    ("rec B=1 H=512 (4H)", 1, 2048, 512, False, True),
    ("rec B=16 H=512 (4H)", 16, 2048, 512, False, True),
    ("rec B=64 H=512 (4H)", 64, 2048, 512, False, True),
    ("rec B=64 H=1024 (4H)", 64, 4096, 1024, False, True),
    ("rec B=32 H=1024 (3H)", 32, 3072, 1024, False, True),
    ("inproj 1600x2048x512", 1600, 2048, 512, False, True),
    ("wgrad 2048x512x1600 A^T", 2048, 512, 1600, True, False),
]

# B=1 alternative: y[GH] = W_hh[GH,H] . h[H] as a GEMV (what a kernel could call when B == 1)
GEMV_SHAPES = [("gemv B=1 H=256 (4H)", 1024, 256), ("gemv B=1 H=512 (4H)", 2048, 512)]

SITE = os.path.dirname(os.path.dirname(np.__file__))  # .../site-packages
PREFIX = sys.prefix


def find_libs():
    libs = {}
    try:
        import scipy_openblas32

        p = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
        if os.path.exists(p):
            libs["openblas"] = p
    except ImportError:
        pass
    for pat in ("libmkl_rt.so.2", "libmkl_rt.so.3", "libmkl_rt.so*"):
        hits = sorted(glob.glob(os.path.join(PREFIX, "lib", pat)))
        if hits:
            libs["mkl"] = hits[0]
            break
    hits = sorted(glob.glob(os.path.join(PREFIX, "lib", "libdnnl.so*")))
    if hits:
        libs["onednn"] = hits[0]
    return libs


# ----------------------------------------------------------------------------- worker
class DnnlVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


DNNL_ISA = {0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0x407: "avx2_vnni", 0xc07: "avx2_vnni_2",
            0x27: "avx512_core", 0x67: "avx512_core_vnni", 0xe7: "avx512_core_bf16",
            0x1ef: "avx10_1_512 (avx512_core_fp16)", 0xfef: "avx512_core_amx"}
DNNL_RT = {1: "SEQ", 2: "OMP", 4: "TBB", 8: "THREADPOOL", 256: "OCL", 512: "SYCL"}


class Lib:
    def __init__(self, kind, path):
        self.kind = kind
        self.dll = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        self.info = {"path": path}
        self.gemv = {}
        d = self.dll
        if kind == "openblas":
            self.fn = {"f32": d.scipy_cblas_sgemm, "f64": d.scipy_cblas_dgemm}
            self.gemv = {"f32": d.scipy_cblas_sgemv, "f64": d.scipy_cblas_dgemv}
            d.scipy_openblas_get_corename.restype = ctypes.c_char_p
            d.scipy_openblas_get_config.restype = ctypes.c_char_p
            self.info["corename"] = d.scipy_openblas_get_corename().decode()
            self.info["config"] = d.scipy_openblas_get_config().decode()
            self.info["num_threads"] = d.scipy_openblas_get_num_threads()
        elif kind == "mkl":
            self.fn = {"f32": d.cblas_sgemm, "f64": d.cblas_dgemm}
            self.gemv = {"f32": d.cblas_sgemv, "f64": d.cblas_dgemv}
            buf = ctypes.create_string_buffer(512)
            d.mkl_get_version_string(buf, 512)
            self.info["version"] = buf.value.decode().strip()
            d.mkl_get_max_threads.restype = ctypes.c_int
            self.info["num_threads"] = d.mkl_get_max_threads()
        elif kind == "onednn":
            self.fn = {"f32": d.dnnl_sgemm}
            d.dnnl_version.restype = ctypes.POINTER(DnnlVersion)
            v = d.dnnl_version().contents
            self.info["version"] = f"{v.major}.{v.minor}.{v.patch}"
            self.info["cpu_runtime"] = DNNL_RT.get(v.cpu_runtime, hex(v.cpu_runtime))
            isa = d.dnnl_get_effective_cpu_isa()
            self.info["isa"] = DNNL_ISA.get(isa, hex(isa))
        for dt, f in self.fn.items():
            f.restype = ctypes.c_int if kind == "onednn" else None
            ct = ctypes.c_float if dt == "f32" else ctypes.c_double
            if kind == "onednn":
                i64 = ctypes.c_int64
                f.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, ct, ctypes.c_void_p,
                              i64, ctypes.c_void_p, i64, ct, ctypes.c_void_p, i64]
            else:
                i = ctypes.c_int
                f.argtypes = [i, i, i, i, i, i, ct, ctypes.c_void_p, i, ctypes.c_void_p, i, ct,
                              ctypes.c_void_p, i]
        for dt, f in self.gemv.items():
            ct = ctypes.c_float if dt == "f32" else ctypes.c_double
            i = ctypes.c_int
            f.restype = None
            f.argtypes = [i, i, i, i, ct, ctypes.c_void_p, i, ctypes.c_void_p, i, ct,
                          ctypes.c_void_p, i]

    def args(self, dt, ta, tb, M, N, K, A, lda, B, ldb, C, ldc):
        ct = ctypes.c_float if dt == "f32" else ctypes.c_double
        pa, pb, pc = (ctypes.c_void_p(x.ctypes.data) for x in (A, B, C))
        if self.kind == "onednn":
            i64 = ctypes.c_int64
            return (ctypes.c_char(b"T" if ta else b"N"), ctypes.c_char(b"T" if tb else b"N"),
                    i64(M), i64(N), i64(K), ct(1.0), pa, i64(lda), pb, i64(ldb), ct(0.0), pc,
                    i64(ldc))
        i = ctypes.c_int
        return (i(ROW_MAJOR), i(TRANS if ta else NO_TRANS), i(TRANS if tb else NO_TRANS), i(M),
                i(N), i(K), ct(1.0), pa, i(lda), pb, i(ldb), ct(0.0), pc, i(ldc))


def time_call(f, args, target_s):
    """Median seconds per call over timed batches (after warm-up)."""
    # warm-up: at least 3 calls and ~50 ms
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < 0.05:
        f(*args)
        n += 1
    per = (time.perf_counter() - t0) / n
    inner = max(1, int(2e-3 / per))  # batch >= ~2 ms so timer/loop noise is small
    samples = []
    t_start = time.perf_counter()
    while len(samples) < 7 or (time.perf_counter() - t_start < target_s and len(samples) < 200):
        t = time.perf_counter_ns()
        for _ in range(inner):
            f(*args)
        samples.append((time.perf_counter_ns() - t) / inner * 1e-9)
    return statistics.median(samples), len(samples), inner


def worker(kind, path, target_s, dtypes):
    lib = Lib(kind, path)
    rng = np.random.default_rng(0)
    out = {"info": lib.info, "results": []}
    for dt in dtypes:
        if dt not in lib.fn:
            continue
        npdt = np.float32 if dt == "f32" else np.float64
        f = lib.fn[dt]
        # call overhead: M=0 returns at once (ctypes + library entry)
        A = np.zeros((4, 4), npdt)
        ov, _, _ = time_call(f, lib.args(dt, False, True, 0, 4, 4, A, 4, A, 4, A, 4), 0.05)
        out["results"].append({"dtype": dt, "shape": "call overhead (M=0)", "t": ov})
        for name, M, N, K, ta, tb in SHAPES:
            A = rng.standard_normal((K, M) if ta else (M, K)).astype(npdt)
            B = rng.standard_normal((N, K) if tb else (K, N)).astype(npdt)
            C = np.zeros((M, N), npdt)
            args = lib.args(dt, ta, tb, M, N, K, A, A.shape[1], B, B.shape[1], C, N)
            f(*args)
            # spot-check entries without going through numpy's own BLAS
            Am = A.T if ta else A
            Bm = B.T if tb else B
            for _ in range(8):
                i, j = rng.integers(M), rng.integers(N)
                ref = float(np.sum(Am[i, :].astype(np.float64) * Bm[:, j].astype(np.float64)))
                tol = (2e-3 if dt == "f32" else 1e-9) * np.sqrt(K)
                if abs(C[i, j] - ref) > tol:
                    raise SystemExit(f"{kind} {dt} {name}: wrong result C[{i},{j}]={C[i, j]} "
                                     f"ref={ref}")
            t, nsamp, inner = time_call(f, args, target_s)
            out["results"].append({"dtype": dt, "shape": name, "M": M, "N": N, "K": K, "t": t,
                                   "gflops": 2.0 * M * N * K / t / 1e9, "batches": nsamp,
                                   "calls_per_batch": inner})
        if dt in lib.gemv:
            g = lib.gemv[dt]
            ct = ctypes.c_float if dt == "f32" else ctypes.c_double
            i = ctypes.c_int
            for name, GH, H in GEMV_SHAPES:
                W = rng.standard_normal((GH, H)).astype(npdt)
                x = rng.standard_normal(H).astype(npdt)
                y = np.zeros(GH, npdt)
                args = (i(ROW_MAJOR), i(NO_TRANS), i(GH), i(H), ct(1.0),
                        ctypes.c_void_p(W.ctypes.data), i(H), ctypes.c_void_p(x.ctypes.data),
                        i(1), ct(0.0), ctypes.c_void_p(y.ctypes.data), i(1))
                g(*args)
                for _ in range(8):
                    r = rng.integers(GH)
                    ref = float(np.sum(W[r].astype(np.float64) * x.astype(np.float64)))
                    if abs(y[r] - ref) > (2e-3 if dt == "f32" else 1e-9) * np.sqrt(H):
                        raise SystemExit(f"{kind} {dt} {name}: wrong result")
                t, nsamp, inner = time_call(g, args, target_s)
                out["results"].append({"dtype": dt, "shape": name, "M": 1, "N": GH, "K": H,
                                       "t": t, "gflops": 2.0 * GH * H / t / 1e9,
                                       "batches": nsamp, "calls_per_batch": inner})
    print("JSON:" + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- driver
def settings(libs, threads):
    """(label, kind, nthreads, env-overrides)"""
    s = []
    for nt in threads:
        if "openblas" in libs:
            s.append(("openblas default-core", "openblas", nt, {"OPENBLAS_CORETYPE": None}))
            s.append(("openblas CORETYPE=Haswell", "openblas", nt,
                      {"OPENBLAS_CORETYPE": "Haswell"}))
        if "mkl" in libs:
            s.append(("mkl", "mkl", nt, {}))
        if "onednn" in libs:
            s.append(("onednn", "onednn", nt, {}))
    return s


def child_env(nt, extra):
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        env[k] = str(nt)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("MKL_VERBOSE", None)
    env.pop("ONEDNN_VERBOSE", None)
    libdir = os.path.join(PREFIX, "lib")  # MKL's libiomp5 and oneDNN's TBB/SYCL/compiler libs
    env["LD_LIBRARY_PATH"] = libdir + (":" + env["LD_LIBRARY_PATH"]
                                       if env.get("LD_LIBRARY_PATH") else "")
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def cpu_jiffies():
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])  # busy, total (user..steal)


def busy_fraction(dt=0.5):
    b0, t0 = cpu_jiffies()
    time.sleep(dt)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


def wait_idle(max_wait, thresh=0.10):
    """The machine is shared: wait (bounded) until other processes use < thresh of all CPUs."""
    t0 = time.time()
    while True:
        f = busy_fraction()
        if f < thresh or time.time() - t0 > max_wait:
            return f, time.time() - t0


def run_child(kind, path, nt, extra, target_s, dtypes):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--lib", path,
           "--target", str(target_s), "--dtypes", ",".join(dtypes)]
    if nt == 1:
        cmd = ["taskset", "-c", "0"] + cmd
    b0, t0 = cpu_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, env=child_env(nt, extra), capture_output=True, text=True,
                       timeout=600)
    b1, t1 = cpu_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    hz = os.sysconf("SC_CLK_TCK")
    ours = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * hz
    # CPU used by *other* processes while this setting ran, as a fraction of all CPUs
    other = max(0.0, (b1 - b0) - ours) / max(1, t1 - t0)
    for line in p.stdout.splitlines():
        if line.startswith("JSON:"):
            res = json.loads(line[5:])
            res["other_load"] = other
            return res, p.stdout
    raise RuntimeError(f"{kind} failed (rc={p.returncode}):\n{p.stdout}\n{p.stderr}")


def probes(libs):
    """Which ISA each library picks (MKL_VERBOSE / ONEDNN_VERBOSE)."""
    notes = {}
    code = ("import ctypes,numpy as np,sys;sys.path.insert(0,%r);import blas_choice as b;"
            "l=b.Lib(%r,%r);A=np.ones((64,64),np.float32);"
            "l.fn['f32'](*l.args('f32',False,True,64,64,64,A,64,A,64,A,64))")
    here = os.path.dirname(os.path.abspath(__file__))
    if "mkl" in libs:
        p = subprocess.run([sys.executable, "-c", code % (here, "mkl", libs["mkl"])],
                           env=child_env(1, {"MKL_VERBOSE": "1"}), capture_output=True, text=True)
        notes["mkl MKL_VERBOSE=1"] = [l for l in p.stdout.splitlines() if l.startswith("MKL_VERBOSE")][:3]
    if "onednn" in libs:
        p = subprocess.run([sys.executable, "-c", code % (here, "onednn", libs["onednn"])],
                           env=child_env(1, {"ONEDNN_VERBOSE": "all"}), capture_output=True,
                           text=True)
        notes["onednn ONEDNN_VERBOSE=all"] = [l for l in p.stdout.splitlines() if l.startswith("onednn_verbose")][:8]
    return notes


def fmt_t(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--lib")
    ap.add_argument("--runs", type=int, default=2, help="repeat the whole sweep (noise check)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--target", type=float, default=0.3, help="seconds of timing per shape")
    ap.add_argument("--dtypes", default="f32,f64")
    ap.add_argument("--only", default="", help="comma list of libraries to run")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--attempts", type=int, default=3,
                    help="re-run a setting (keep the least disturbed) while other load > --max-load")
    ap.add_argument("--max-load", type=float, default=0.10)
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="max seconds to wait for the (shared) machine to go idle per setting")
    a = ap.parse_args()
    dtypes = a.dtypes.split(",")
    if a.worker:
        worker(a.worker, a.lib, a.target, dtypes)
        return
    libs = find_libs()
    if a.only:
        libs = {k: v for k, v in libs.items() if k in a.only.split(",")}
    print("libraries:", json.dumps(libs, indent=1), flush=True)
    notes = probes(libs)
    for k, v in notes.items():
        print(f"[{k}]")
        for l in v:
            print("   ", l)
    threads = [int(x) for x in a.threads.split(",")]
    runs = []
    t_all = time.time()
    for r in range(a.runs):
        for label, kind, nt, extra in settings(libs, threads):
            best = None
            for attempt in range(a.attempts):
                pre, waited = wait_idle(a.wait_idle)
                t0 = time.time()
                res, _ = run_child(kind, libs[kind], nt, extra, a.target, dtypes)
                res.update(run=r, label=label, threads=nt, pre_load=pre, waited=waited,
                           attempt=attempt)
                if best is None or res["other_load"] < best["other_load"]:
                    best = res
                if res["other_load"] <= a.max_load:
                    break
                print(f"  (other processes used {res['other_load']:.0%} of the CPUs during "
                      f"{label} thr={nt}; retrying)", flush=True)
            res = best
            runs.append(res)
            print(f"run {r} {label:28s} thr={nt} {time.time() - t0:5.1f}s  "
                  f"waited {waited:4.1f}s, other-process load before {pre:.0%} during "
                  f"{res['other_load']:.0%} (attempt {res['attempt']})  info={res['info']}", flush=True)
    print(f"total sweep time {time.time() - t_all:.0f}s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"libs": libs, "notes": notes, "runs": runs}, fh, indent=1)

    # table: per (dtype, shape) rows, per (label, threads) columns; median over runs
    cols = []
    for r in runs:
        key = (r["label"], r["threads"])
        if key not in cols:
            cols.append(key)
    by = {}
    for r in runs:
        for x in r["results"]:
            by.setdefault((x["dtype"], x["shape"], r["label"], r["threads"]), []).append(x)
    for dt in dtypes:
        for nt in threads:
            cs = [c for c in cols if c[1] == nt]
            print(f"\n### {dt}, {nt} thread(s): median time / GFLOP/s (run-to-run spread)\n")
            print("| shape | " + " | ".join(c[0] for c in cs) + " |")
            print("|---|" + "---|" * len(cs))
            shapes = (["call overhead (M=0)"] + [s[0] for s in SHAPES] +
                      [s[0] for s in GEMV_SHAPES])
            for sh in shapes:
                cells = []
                for c in cs:
                    xs = by.get((dt, sh, c[0], c[1]))
                    if not xs:
                        cells.append("n/a")
                        continue
                    ts = [x["t"] for x in xs]
                    t = statistics.median(ts)
                    spread = (max(ts) - min(ts)) / t * 100 if len(ts) > 1 else 0
                    if "gflops" in xs[0]:
                        g = 2.0 * xs[0]["M"] * xs[0]["N"] * xs[0]["K"] / t / 1e9
                        cells.append(f"{fmt_t(t)} / {g:.0f} (±{spread / 2:.0f}%)")
                    else:
                        cells.append(f"{fmt_t(t)}")
                print(f"| {sh} | " + " | ".join(cells) + " |")
            loads = []
            for c in cs:
                ls = [r["other_load"] for r in runs if (r["label"], r["threads"]) == c]
                loads.append("max " + f"{max(ls):.0%}" if ls else "n/a")
            print("| other-process CPU load during run | " + " | ".join(loads) + " |")


if __name__ == "__main__":
    main()
