"""Micro-benchmark of fastrnn against its peers: ``python -m fastrnn.bench``.

For every configuration of a suite and every peer (``fastrnn``: the C++ core; ``numpy``: the NumPy
reference, ``fastrnn.reference``; ``torch``: ``torch.nn.RNN/LSTM/GRU``; ``fastrnn.torch``: their
drop-in replacements -- these two when torch is importable; ``jax``: Flax's scanned cells,
``flax.nnx.RNN`` over ``OptimizedLSTMCell``/``GRUCell``/``SimpleCell``; ``fastrnn.jax``:
``fastrnn.jax.layer`` -- these two when jax and flax are, both under ``jax.jit``,
:mod:`~fastrnn.bench.jax_peers`) it measures

- forward: the module in eval mode (inference: nothing is saved for backward); for the JAX
  peers, the jitted function;
- forward+backward: a training-mode forward followed by ``.backward(dy)``; for the JAX peers,
  the jitted ``jax.vjp`` of the function applied to ``dy``,

and prints the median (and keeps the minimum) wall time, GFLOP/s, the fraction of the machine's
floor reached, how many times faster fastrnn is than each peer (and torch.nn than fastrnn.torch,
Flax than fastrnn.jax, with the geometric means of these two ratios at the end), and the
accuracy of each peer's forward output and input gradient against the float64 NumPy reference.
``--json PATH`` also writes every number (each timed run included) with the machine and build it
came from, ``--markdown PATH`` a Markdown table for ``bench/RESULTS.md``, ``--plot PATH`` a PNG
of the speed-ups against the batch size (needs matplotlib).

Needs nothing but NumPy. Times are wall clock (``time.perf_counter``) of the Python module call,
what a user pays, with the garbage collector paused; each measurement warms up first, then
repeats until it has ``--repeats`` runs or has spent ``--budget`` seconds (but at least
``--min-repeats`` runs), so slow peers get fewer repeats and a suite's run time stays bounded.

FLOP convention (docs/design.md section 4): forward ``2*G*H*(I+H)*B*T`` per layer and direction
(G = 1 vanilla, 4 LSTM, 3 GRU; I the layer's input size); forward+backward counts 3x forward.
GFLOP/s = FLOPs / median time.

Bytes convention (the least memory traffic, docs/design.md section 4): every step re-reads the
recurrent weights ``W_hh`` (G*H*H elements), so forward reads ``T*|W_hh| + |W_ih| + |x| + |y|``
elements per layer and direction (``|W_ih| = G*H*I``, ``|x| = T*B*I``, ``|y| = T*B*H``; biases
and states left out); forward+backward moves twice that (backward re-reads ``W_hh`` every step
too, and moves a gradient as large as each of ``x``, ``y`` and ``W_ih``) plus the gate
activations the forward saved, ``T*B*G*H``.

Floor: ``max(FLOPs / GEMM ceiling, bytes / read bandwidth)``, with both ceilings measured at
start-up with the thread count in use: the GFLOP/s of a large square GEMM in the configuration's
dtype, and the GB/s of reading, again and again, a buffer the size of one ``W_hh`` (rounded to a
power of two), since weights that fit in a cache are re-read from it. A measurement's floor
fraction is floor / median time: 1 means at the floor, above 1 means the floor is wrong.

``--device cuda`` times ``fastrnn.torch`` modules against ``torch.nn`` (cuDNN) with the same
weights on one GPU instead, each row in float32 (TF32 off for both) and bfloat16: suites ``gpu``
(docs/design.md section 5 GPU rows, batch 1-8 latency rows, packed-input rows) and
``gpu-quick``; CUDA-event times; floors from the HBM bandwidth and GEMM peaks measured at
start-up; accuracy against torch.nn in float64; a Markdown table and the issue's targets
(``TARGET_RULE``). Without a usable GPU it exits with code 2 and one line why.

``--suite rl`` (CPU, needs torch) times ``fastrnn.torch`` against ``torch.nn`` on the workloads of
recurrent reinforcement learning (``RL_GROUPS``): a policy update through the layer module with
``resets=`` against torch.nn's step loop with ``(1 - episode_start)`` masks, single steps and
100-step loops of the cells, and 200 streaming calls of T = 1; the two sides' runs alternate
(``measure_alternating``); each row prints the ratio, fastrnn.torch's floor fraction, the errors
against torch.nn and its targets (``RL_TARGET_RULE``, printed, never asserted). ``rl-smoke`` runs
the same rows at tiny sizes. Without torch it exits with code 2 and one line why.

Modules, by job (both devices share each job's one implementation; where the devices differ, a
strategy says how):

- :mod:`~fastrnn.bench.configs`: :class:`Config`, :class:`GpuRow`, :class:`RlRow`, the suites,
  the FLOP and byte counts, the options that pick them;
- :mod:`~fastrnn.bench.peers`: the CPU mode's peers (:data:`PEERS`) and the layers and cells
  every mode builds; :mod:`~fastrnn.bench.jax_peers`: the two JAX peers;
  :mod:`~fastrnn.bench.rl_workloads`: the RL suite's two sides of a row;
- :mod:`~fastrnn.bench.timing`: :func:`measure` and :func:`measure_alternating`, on a wall clock
  or CUDA events;
- :mod:`~fastrnn.bench.ceilings`: the ceilings each device measures and the floor (roofline)
  they put under a piece of work;
- :mod:`~fastrnn.bench.machine`: the machine and build a run describes;
- :mod:`~fastrnn.bench.accuracy`, :mod:`~fastrnn.bench.gpu_checks`,
  :mod:`~fastrnn.bench.targets`: what is checked of a result, the targets, the adapter pairs'
  geometric means;
- :mod:`~fastrnn.bench.formatting`, :mod:`~fastrnn.bench.report_text`,
  :mod:`~fastrnn.bench.report_markdown`, :mod:`~fastrnn.bench.report_json`,
  :mod:`~fastrnn.bench.plot`: the reports;
- :mod:`~fastrnn.bench.run_cpu`, :mod:`~fastrnn.bench.run_gpu`, :mod:`~fastrnn.bench.run_rl`:
  what each device (and the RL suite, a CPU mode) runs per item, as a
  :class:`~fastrnn.bench.session.Mode`; :mod:`~fastrnn.bench.session`: the one run loop;
- :mod:`~fastrnn.bench.cli`: the options and :func:`main`.
"""
from __future__ import annotations

from .accuracy import GPU_TOLERANCE, RL_TOLERANCE, peer_failed, rl_failure, row_failure
from .ceilings import (FLOOR_CONVENTION, GEMM_N, GPU_GEMM_N, READ_MIN_BYTES, CpuCeilings,
                       GpuCeilings, Roofline, floor_times, read_probe_bytes)
from .cli import build_parser, main
from .configs import (BYTES_CONVENTION, CELL_ALIASES, DTYPES, FLOP_CONVENTION, GPU_DTYPES,
                      GPU_SUITES, RL_GROUPS, RL_SUITES, SUITES, Config, GpuRow, RlRow,
                      packed_lengths, parse_cells, parse_config, select_configs, select_gpu_rows,
                      select_rl_rows, work_counts)
from .machine import collect_meta, gpu_unavailable_reason
from .peers import ADAPTER_PAIRS, PEERS, Inputs, Peer, Runner, make_inputs
from .report_json import (GPU_JSON_SCHEMA, JSON_SCHEMA, RL_JSON_SCHEMA, cpu_document,
                          gpu_document, json_safe, rl_document, write_json)
from .report_markdown import cudnn_table, peer_table, rl_table
from .run_cpu import CpuMode, run_config
from .run_gpu import GpuMode, run_gpu_row
from .run_rl import RlMode, run_rl_row
from .session import run_session
from .targets import (JAX_TARGET_RULE, RL_TARGET_RULE, TARGET_RULE, adapter_summary,
                      rl_targets_summary, targets_summary)
from .timing import (CPU_SETTINGS, GPU_SETTINGS, CudaEventClock, Settings, WallClock, add_rates,
                     measure, measure_alternating, per_call, summary)

__all__ = [
    "main", "build_parser", "run_session", "CpuMode", "GpuMode", "RlMode",
    "Config", "GpuRow", "RlRow", "SUITES", "GPU_SUITES", "RL_SUITES", "RL_GROUPS", "DTYPES",
    "GPU_DTYPES", "CELL_ALIASES",
    "parse_config", "parse_cells", "select_configs", "select_gpu_rows", "select_rl_rows",
    "packed_lengths", "work_counts", "FLOP_CONVENTION", "BYTES_CONVENTION",
    "PEERS", "ADAPTER_PAIRS", "Peer", "Runner", "Inputs", "make_inputs",
    "Settings", "CPU_SETTINGS", "GPU_SETTINGS", "measure", "measure_alternating", "per_call",
    "summary", "add_rates", "WallClock", "CudaEventClock",
    "Roofline", "CpuCeilings", "GpuCeilings", "floor_times", "read_probe_bytes", "READ_MIN_BYTES",
    "GEMM_N", "GPU_GEMM_N", "FLOOR_CONVENTION",
    "collect_meta", "gpu_unavailable_reason",
    "peer_failed", "row_failure", "rl_failure", "GPU_TOLERANCE", "RL_TOLERANCE", "TARGET_RULE",
    "RL_TARGET_RULE", "JAX_TARGET_RULE", "targets_summary", "rl_targets_summary",
    "adapter_summary",
    "run_config", "run_gpu_row", "run_rl_row",
    "peer_table", "cudnn_table", "rl_table", "JSON_SCHEMA", "GPU_JSON_SCHEMA", "RL_JSON_SCHEMA",
    "cpu_document", "gpu_document", "rl_document", "write_json", "json_safe",
]
