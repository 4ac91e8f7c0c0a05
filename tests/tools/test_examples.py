"""The example programs run and do what they say."""
import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_sine_training_reduces_the_loss():
    example = load("numpy_sine")
    losses, _ = example.train(steps=120, log_every=0)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"loss {first:.4f} -> {last:.4f}")
    assert np.all(np.isfinite(losses))
    assert last < 0.25 * first


def test_numpy_sine_backends_agree():
    example = load("numpy_sine")
    fast, _ = example.train(steps=5, backend="fastrnn", log_every=0)
    ref, _ = example.train(steps=5, backend="reference", log_every=0)
    np.testing.assert_allclose(fast, ref, rtol=1e-4)


def test_char_rnn_learns_and_backends_agree():
    pytest = __import__("pytest")
    pytest.importorskip("torch")
    example = load("char_rnn")
    small = dict(epochs=2, max_chars=12_000, batch=8, seq_len=24, hidden=32, layers=2,
                 sample_chars=40, verbose=False)
    fast, times, text = example.train("fastrnn", **small)
    ref, _, _ = example.train("torch", **small)
    first, last = np.mean(fast[:5]), np.mean(fast[-5:])
    print(f"loss {first:.3f} -> {last:.3f}; epoch times {times}")
    assert last < 0.85 * first
    assert text.startswith("The ") and len(text) == 44
    np.testing.assert_allclose(fast, ref, rtol=2e-3)  # same weights, float32 rounding only
