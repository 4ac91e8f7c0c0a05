"""What fastrnn.set_deterministic(True) costs: one layer's forward+backward (float32, training),
median of 7 timed calls after one warm-up, with the mode off and on, on the current thread count.

    python bench/deterministic_cost.py
"""
import time

import numpy as np

import fastrnn
from fastrnn import _cells
from fastrnn import functional as F

CONFIGS = [("lstm", 150, 64, 256, 256), ("lstm", 25, 16, 1024, 1024), ("gru", 100, 32, 512, 512),
           ("lstm", 100, 1, 512, 512), ("rnn_tanh", 200, 64, 512, 512)]  # (mode, T, B, I, H)


def layer_args(mode, T, B, I, H):
    rng = np.random.default_rng(1)
    G = _cells.num_gates(mode)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    c0 = np.zeros((B, H), np.float32) if _cells.has_cell_state(mode) else None
    w_ih = (0.05 * rng.standard_normal((G * H, I))).astype(np.float32)
    w_hh = (0.05 * rng.standard_normal((G * H, H))).astype(np.float32)
    b = np.zeros(G * H, np.float32)
    return mode, x, h0, c0, w_ih, w_hh, b, b


def median_ms(args, calls=7):
    times = []
    for _ in range(calls + 1):
        t0 = time.perf_counter()
        y, _, _, state = F.layer_forward(*args, training=True)
        F.layer_backward(state, np.ones_like(y))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times[1:]))


def main():
    info = fastrnn.build_info()
    print(f"{info['num_threads']} threads, {info['blas_config']}")
    print("| layer (T, B, I, H) | normal ms | deterministic ms | ratio |\n| --- | --- | --- | --- |")
    for config in CONFIGS:
        args = layer_args(*config)
        fastrnn.set_deterministic(False)
        normal = median_ms(args)
        fastrnn.set_deterministic(True)
        deterministic = median_ms(args)
        fastrnn.set_deterministic(False)
        print(f"| {config[0]} {config[1:]} | {normal:.1f} | {deterministic:.1f} | "
              f"{deterministic / normal:.2f} |")


if __name__ == "__main__":
    main()
