"""Train a small LSTM on NumPy arrays alone: predict the next sample of noisy sine waves.

    python examples/numpy_sine.py [--steps 300] [--backend fastrnn|reference]

Shows the whole NumPy-level training loop: fastrnn.LSTM forward, a linear read-out, the loss's
gradient fed to ``lstm.backward``, and Adam updates written into ``lstm.params``. The same script
runs on ``fastrnn.reference.LSTM`` (pure NumPy) for comparison of results and time.
"""
import argparse
import time

import numpy as np

import fastrnn


def make_batch(rng, batch, steps):
    """Sine waves of random frequency and phase plus noise: inputs x[t], targets x[t+1]."""
    freq = rng.uniform(0.05, 0.25, (1, batch, 1))
    phase = rng.uniform(0, 2 * np.pi, (1, batch, 1))
    t = np.arange(steps + 1, dtype=np.float64)[:, None, None]
    wave = np.sin(2 * np.pi * freq * t + phase) + 0.05 * rng.standard_normal((steps + 1, batch, 1))
    wave = wave.astype(np.float32)
    return wave[:-1], wave[1:]


class Adam:
    def __init__(self, params, lr):
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for k in params:
            self.m[k] = b1 * self.m[k] + (1 - b1) * grads[k]
            self.v[k] = b2 * self.v[k] + (1 - b2) * grads[k] ** 2
            m_hat = self.m[k] / (1 - b1 ** self.t)
            v_hat = self.v[k] / (1 - b2 ** self.t)
            params[k] = (params[k] - self.lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)


def train(steps=300, backend="fastrnn", hidden=32, batch=16, seq_len=50, seed=0, log_every=50):
    rng = np.random.default_rng(seed)
    module = fastrnn if backend == "fastrnn" else fastrnn.reference
    lstm = module.LSTM(1, hidden, num_layers=1, seed=seed)
    head = {"w": (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
            "b": np.zeros(1, np.float32)}
    opt_lstm, opt_head = Adam(lstm.params, 1e-2), Adam(head, 1e-2)
    losses = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, target = make_batch(rng, batch, seq_len)
        y, _ = lstm(x)                                    # (T, B, H)
        pred = y @ head["w"] + head["b"]                  # (T, B, 1)
        err = pred - target
        loss = float(np.mean(err ** 2))
        d_pred = (2.0 / err.size) * err
        head_grads = {"w": y.reshape(-1, hidden).T @ d_pred.reshape(-1, 1),
                      "b": d_pred.sum(axis=(0, 1))}
        grads = lstm.backward(d_pred @ head["w"].T)       # gradient of y
        opt_lstm.step(lstm.params, {k: grads[k] for k in lstm.params})
        opt_head.step(head, head_grads)
        losses.append(loss)
        if log_every and (step % log_every == 0 or step == 1):
            print(f"step {step:4d}  loss {loss:.5f}")
    elapsed = time.perf_counter() - start
    return losses, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backend", choices=["fastrnn", "reference"], default="fastrnn")
    args = parser.parse_args()
    losses, elapsed = train(args.steps, args.backend)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"{args.backend}: mean loss of the first 10 steps {first:.4f}, last 10 {last:.4f}; "
          f"{elapsed:.2f} s, {1e3 * elapsed / args.steps:.1f} ms per step")


if __name__ == "__main__":
    main()
