"""The command line, ``python -m fastrnn.bench``: its options, and the mode that runs them.

``--device cpu`` (the default) runs :class:`fastrnn.bench.run_cpu.CpuMode`, ``--device cuda``
:class:`fastrnn.bench.run_gpu.GpuMode`, and an RL suite (``--suite rl``, ``rl-smoke``)
:class:`fastrnn.bench.run_rl.RlMode`; :func:`fastrnn.bench.session.run_session` drives each.
Timing options left unset take the device's defaults, so the parser leaves them as None.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from fastrnn import cuda as fastrnn_cuda
from fastrnn._cells import MODES

from .ceilings import FLOOR_CONVENTION, GEMM_N, GPU_GEMM_N
from .configs import (DTYPES, FLOP_CONVENTION, GPU_DEFAULT_DTYPES, GPU_DTYPES, GPU_SUITES,
                      RL_SUITES, SUITES, parse_cells, parse_config, parse_names)
from .peers import PEERS
from .run_cpu import CpuMode
from .run_gpu import GpuMode
from .run_rl import RlMode
from .session import run_session
from .timing import CPU_SETTINGS, GPU_SETTINGS

# --algo lists the default first.
_ALGO_CHOICES = ("auto",) + tuple(a for a in fastrnn_cuda.ALGOS if a != "auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.bench",
        description="Time fastrnn against its peers (forward, forward+backward), per cell.",
        epilog=FLOP_CONVENTION + ". " + FLOOR_CONVENTION + ". Peers: " + ", ".join(PEERS) + ".")
    _add_selection_options(p)
    _add_timing_options(p)
    _add_gpu_options(p)
    p.add_argument("--json", metavar="PATH", help="also write all numbers to this JSON file")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write a Markdown table of the results (for bench/RESULTS.md)")
    p.add_argument("--plot", metavar="PATH",
                   help="also plot the speed-ups against the batch size to this PNG file "
                        "(needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    return p


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """The device, and what runs on it."""
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu (default): the C++ core against its CPU peers; cuda: fastrnn.torch "
                        "modules against torch.nn on the GPU (cuDNN), float32 and bfloat16 (needs "
                        "a GPU, torch with CUDA and fastrnn's CUDA backend)")
    p.add_argument("--suite", choices=sorted(SUITES) + sorted(RL_SUITES) + sorted(GPU_SUITES),
                   help="configurations to run (default: quick, under a minute on 2 cores; "
                        "full: the CPU rows of docs/design.md §5, takes long; smoke: tiny sizes; "
                        "rl: fastrnn.torch against torch.nn on recurrent-RL workloads -- policy "
                        "updates with state resets, single-step cells, streaming inference -- "
                        "on the CPU (needs torch; rl-smoke: tiny sizes); "
                        "with --device cuda: gpu (its default), the GPU rows of docs/design.md "
                        "§5 plus batch 1-8 latency and packed-input rows, or gpu-quick, "
                        "a few of them)")
    p.add_argument("--config", action="append", metavar="SPEC", type=_arg(parse_config),
                   help="run this configuration instead of a suite (repeatable), e.g. "
                        "'lstm:T=50,B=16,H=256' or 'gru:T=3,B=2,I=4,H=5,layers=2,bidirectional=1'")
    p.add_argument("--cells", type=_arg(parse_cells), metavar="LIST",
                   help=f"only these cells, comma-separated: {', '.join(MODES)} "
                        "(rnn = both vanilla cells)")
    p.add_argument("--dtype", choices=DTYPES, help="override the configurations' dtype")
    p.add_argument("--peers", type=_arg(_parse_peers), metavar="LIST",
                   help="comma-separated peers to run (default, whatever the suite: all "
                        f"available of {', '.join(PEERS)}; the torch ones need torch, the jax "
                        "ones jax and flax)")


def _add_timing_options(p: argparse.ArgumentParser) -> None:
    """How long each measurement runs; each default depends on the device."""
    cpu, gpu = CPU_SETTINGS, GPU_SETTINGS
    p.add_argument("--repeats", type=int,
                   help=f"most timed runs per measurement (default {cpu.repeats}; "
                        f"{gpu.repeats} with --device cuda)")
    p.add_argument("--min-repeats", type=int,
                   help=f"fewest timed runs per measurement (default {cpu.min_repeats}; "
                        f"{gpu.min_repeats} with --device cuda)")
    p.add_argument("--warmup", type=int,
                   help=f"untimed warm-up runs per measurement, at least 1 (default {cpu.warmup}; "
                        f"{gpu.warmup} with --device cuda)")
    p.add_argument("--warmup-s", type=float,
                   help=f"least seconds of warm-up per measurement (default {cpu.warmup_s}; "
                        f"{gpu.warmup_s} with --device cuda)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed runs per measurement once --min-repeats are done "
                        f"(default {cpu.budget}; {gpu.budget} with --device cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and dy")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the accuracy check against the float64 reference")
    p.add_argument("--gemm-n", type=int, metavar="N",
                   help="size of the square GEMM that measures the GFLOP/s ceiling "
                        f"(default {GEMM_N}; {GPU_GEMM_N} with --device cuda)")


def _add_gpu_options(p: argparse.ArgumentParser) -> None:
    others = ", ".join(d for d in GPU_DTYPES if d not in GPU_DEFAULT_DTYPES)
    p.add_argument("--dtypes", type=_arg(_parse_dtypes), metavar="LIST",
                   help="--device cuda only: dtypes to run each row in, comma-separated "
                        f"(default {','.join(GPU_DEFAULT_DTYPES)}; also {others})")
    p.add_argument("--algo", choices=_ALGO_CHOICES,
                   help="--device cuda only: the algo of the fastrnn.torch modules "
                        "(default auto)")


def _arg(parse):
    """``parse`` as an argparse type: its ValueError becomes the option's error message."""
    def wrapped(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    wrapped.__name__ = parse.__name__
    return wrapped


def _parse_peers(text: str) -> List[str]:
    return parse_names(text, "--peers", PEERS)


def _parse_dtypes(text: str) -> List[str]:
    return parse_names(text, "--dtypes", GPU_DTYPES)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suite in RL_SUITES:
        mode = RlMode()  # it refuses --device cuda
    else:
        mode = GpuMode() if args.device == "cuda" else CpuMode()
    return run_session(mode, args, parser, argv)
