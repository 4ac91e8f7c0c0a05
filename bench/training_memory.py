"""Training memory of one layer: fastrnn.torch.X against torch.nn.X.

For each configuration and implementation, a fresh Python process builds the layer and its input,
runs one tiny training step (libraries, thread pools and parameter gradients then exist), and
records its peak resident memory; then it runs forward + backward on the configuration and records
the peak again. The growth is what that training step needed at its peak: outputs, the gradient
fed to backward, saved state and scratch. Outputs and gradients are the same size for both
implementations, so the difference between them is the difference in saved state and scratch.

fastrnn's own sizes (elements of its reserve and of the largest scratch of one call, from
fastrnn._core) are printed beside the measurement.

    python bench/training_memory.py [--markdown PATH]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = [  # (cell, T, B, H), input size I = H: rows of the docs/design.md §5 CPU suite
    ("lstm", 150, 1, 256), ("lstm", 150, 16, 256), ("lstm", 150, 64, 256),
    ("lstm", 25, 64, 1024), ("gru", 187, 1, 512), ("gru", 187, 32, 512),
    ("rnn_tanh", 50, 64, 1024),
]
IMPLEMENTATIONS = ("torch.nn", "fastrnn.torch")

CHILD = r"""
import json, resource, sys
import torch
impl, cell, T, B, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
from fastrnn import _cells
cls = _cells.cell(cell).torch_class
if impl == "fastrnn.torch":
    import fastrnn.torch as namespace
else:
    namespace = torch.nn
torch.manual_seed(0)
layer = getattr(namespace, cls)(H, H)
x = torch.randn(T, B, H)
y, _ = layer(torch.randn(2, 1, H))  # warm-up: every library and gradient buffer in place
y.sum().backward()
del y
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
y, _ = layer(x)
y.backward(torch.ones_like(y))
print(json.dumps({"before": before, "after": peak()}))
"""


def measure(impl: str, cell: str, T: int, B: int, H: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, impl, cell, str(T), str(B), str(H)],
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    return m["after"] - m["before"]


def fastrnn_sizes(cell: str, T: int, B: int, H: int) -> dict:
    from fastrnn import _cells, _core
    code = _cells.cell(cell).code
    reserve = _core.reserve_size(code, T, B, H, H)
    fwd_train, _, backward = _core.workspace_sizes(code, T, B, H, H)
    return {"reserve_bytes": 4 * reserve, "scratch_bytes": 4 * max(fwd_train, backward)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--repeats", type=int, default=3, help="processes per measurement (median)")
    args = p.parse_args(argv)
    header = ("| config | torch.nn peak growth MB | fastrnn.torch peak growth MB | ratio | "
              "fastrnn reserve MB | fastrnn largest scratch MB |")
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for cell, T, B, H in CONFIGS:
        growth = {}
        for impl in IMPLEMENTATIONS:
            runs = sorted(measure(impl, cell, T, B, H) for _ in range(args.repeats))
            growth[impl] = runs[len(runs) // 2]
        sizes = fastrnn_sizes(cell, T, B, H)
        mb = lambda v: f"{v / 2**20:.1f}"  # noqa: E731
        ratio = growth["fastrnn.torch"] / growth["torch.nn"] if growth["torch.nn"] else float("nan")
        lines.append(f"| {cell} T={T} B={B} I={H} H={H} | {mb(growth['torch.nn'])} | "
                     f"{mb(growth['fastrnn.torch'])} | {ratio:.2f} | "
                     f"{mb(sizes['reserve_bytes'])} | {mb(sizes['scratch_bytes'])} |")
        print(lines[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
