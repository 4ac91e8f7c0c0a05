"""fastrnn.torch against torch.nn under torch.func and higher-order autograd (CPU).

    python bench/torch_transforms.py [--repeats 7] [--threads 2] [--markdown]

Four computations, each run on fastrnn.torch and on torch.nn in the same process, alternating,
median of ``--repeats`` timed runs after one warm-up (float32, LSTM, T=50, I=H=256):

- per-sample gradients: ``vmap(grad(loss))`` over 64 samples of one sequence each; torch.nn
  also as a Python loop over the samples (its vmap has no batching rule for the LSTM and runs
  torch's slow fallback), the faster of the two is the peer;
- an ensemble of 8 LSTMs (``stack_module_state`` + ``functional_call``), forward+backward, batch
  32; torch.nn cannot vmap over its weights ("Batching rule not implemented for aten::lstm"), so
  its peer is a loop over the 8 members;
- (for reference) one LSTM's plain forward+backward, batch 32: the ratio of the kernels alone;
- a Hessian-vector product of a 1-layer LSTM's loss with respect to ``weight_hh``, batch 32
  (``grad`` of ``grad . v``, create_graph=True);
- ``torch.func.jvp`` of the LSTM's output for a tangent on the input, batch 32; torch.nn's oneDNN
  LSTM has no forward-mode AD, so torch.nn runs with oneDNN disabled (its only way).

Prints one line per row: the two medians and torch.nn / fastrnn (>1: fastrnn faster).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from torch.func import functional_call, grad, jvp, stack_module_state, vmap

import fastrnn
import fastrnn.torch as ft

T, H = 50, 256


def _lstm(cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(H, H, **kwargs)


def per_sample_gradients(cls):
    m = _lstm(cls)
    params = {k: v.detach() for k, v in m.named_parameters()}
    samples = torch.randn(64, T, H)

    def loss(p, x):
        return functional_call(m, p, (x.unsqueeze(1),))[0].pow(2).mean()

    if cls is ft.LSTM:
        return lambda: vmap(grad(loss), in_dims=(None, 0))(params, samples)

    def loop():
        return [grad(loss)(params, x) for x in samples]
    return loop


def per_sample_gradients_vmap_torch():
    m = _lstm(torch.nn.LSTM)
    params = {k: v.detach() for k, v in m.named_parameters()}
    samples = torch.randn(64, T, H)

    def loss(p, x):
        return functional_call(m, p, (x.unsqueeze(1),))[0].pow(2).mean()
    return lambda: vmap(grad(loss), in_dims=(None, 0))(params, samples)


def ensemble(cls):
    members = [_lstm(cls, seed=n) for n in range(8)]
    x = torch.randn(T, 32, H)
    if cls is ft.LSTM:
        params, buffers = stack_module_state(members)
        base = members[0]

        def loss(p, b):
            return functional_call(base, (p, b), (x,))[0].pow(2).mean()
        return lambda: vmap(grad(loss))(params, buffers)

    def loop():
        return [torch.autograd.grad(m(x)[0].pow(2).mean(), list(m.parameters()))
                for m in members]
    return loop


def plain_step(cls):
    """One layer's forward+backward, no transform: what the ensemble's members each run."""
    m = _lstm(cls)
    x = torch.randn(T, 32, H)
    return lambda: torch.autograd.grad(m(x)[0].pow(2).mean(), list(m.parameters()))


def hessian_vector_product(cls):
    m = _lstm(cls)
    x = torch.randn(T, 32, H)
    v = torch.randn_like(m.weight_hh_l0)

    def hvp():
        g, = torch.autograd.grad(m(x)[0].pow(2).mean(), m.weight_hh_l0, create_graph=True)
        return torch.autograd.grad(g, m.weight_hh_l0, v)
    return hvp


def forward_jvp(cls):
    m = _lstm(cls)
    x = torch.randn(T, 32, H)
    t = torch.randn_like(x)
    return lambda: jvp(lambda x: m(x)[0], (x,), (t,))


ROWS = [
    ("per-sample gradients, 64 samples (B=1 each)", per_sample_gradients),
    ("ensemble of 8 LSTMs, forward+backward, B=32", ensemble),
    ("(reference) one LSTM, forward+backward, B=32", plain_step),
    ("Hessian-vector product (weight_hh), B=32", hessian_vector_product),
    ("jvp (input tangent), B=32", forward_jvp),
]


def _no_onednn(row):
    """torch.nn's jvp: only without oneDNN (its LSTM kernel has no forward-mode AD)."""
    if row is forward_jvp:
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"fastrnn {fastrnn.__version__}, {args.threads} threads, float32, LSTM T={T} I=H={H}")
    if args.markdown:
        print("| computation | fastrnn.torch ms | torch.nn ms | torch.nn / fastrnn |")
        print("| --- | ---: | ---: | ---: |")
    for name, row in ROWS:
        ours = row(ft.LSTM)
        theirs = row(torch.nn.LSTM)
        peers = [("torch.nn", theirs)]
        if row is per_sample_gradients:
            peers.append(("torch.nn vmap", per_sample_gradients_vmap_torch()))
        with _no_onednn(row):
            for fn in [ours] + [f for _, f in peers]:
                fn()  # warm-up
            t_ours, t_peers = [], {label: [] for label, _ in peers}
            for _ in range(args.repeats):  # alternating
                t_ours.append(_median_ms(ours, 1))
                for label, fn in peers:
                    t_peers[label].append(_median_ms(fn, 1))
        mine = statistics.median(t_ours)
        best_label, best = min(((k, statistics.median(v)) for k, v in t_peers.items()),
                               key=lambda kv: kv[1])
        others = ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in t_peers.items())
        if args.markdown:
            print(f"| {name} | {mine:.1f} | {best:.1f} ({best_label}) | {best / mine:.2f}x |")
        else:
            print(f"{name}: fastrnn.torch {mine:.1f} ms; {others}; "
                  f"{best_label} / fastrnn = {best / mine:.2f}x")


if __name__ == "__main__":
    main()
