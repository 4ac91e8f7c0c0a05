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


def test_recurrent_rl_learns_and_backends_agree(capsys):
    pytest = __import__("pytest")
    pytest.importorskip("torch")
    example = load("recurrent_rl")
    fast = example.train("fastrnn", verbose=False, **example.QUICK)
    first, last = np.mean(fast.returns[:10]), np.mean(fast.returns[-10:])
    print(f"mean return {first:.3f} -> {last:.3f}; {fast.ms_per_update():.1f} ms per update")
    assert np.all(np.isfinite(fast.returns)) and np.all(np.isfinite(fast.losses))
    assert abs(first - 0.25) < 0.1  # a policy without memory: right one time in four
    assert last > first + 0.25      # the state carries the cue to the query step
    assert len(fast.update_s) == len(fast.rollout_s) == example.QUICK["updates"]
    # The torch.nn step loop with (1 - episode_start) masks computes what resets= computes:
    # the same weights draw the same actions and give the same losses (float32 rounding only).
    for cell in ("lstm", "gru"):
        small = dict(example.QUICK, updates=4)
        ref = example.train("torch", cell=cell, verbose=False, **small)
        ours = fast if cell == "lstm" else example.train("fastrnn", cell=cell, verbose=False,
                                                         **small)
        assert ours.returns[:4] == ref.returns
        np.testing.assert_allclose(ours.losses[:4], ref.losses, rtol=2e-3)

    example.main(["--compare", "--updates", "2", "--envs", "4", "--steps", "6", "--hidden", "8",
                  "--cell", "gru", "--log-every", "1"])
    out = capsys.readouterr().out
    assert "GRU policy, hidden 8, 4 environments x 6 steps per update" in out
    assert out.count("  update    2: mean return ") == 2
    assert "torch: mean return " in out and "fastrnn: mean return " in out
    assert out.count(" ms per update (mean)") == 2
    assert "update time, torch.nn step loop / fastrnn.torch with resets=: " in out


def test_jax_char_rnn_learns_with_both_backends(capsys):
    """examples/jax_char_rnn.py --quick: Flax's nnx.RNN(OptimizedLSTMCell) and fastrnn.jax.nn.LSTM
    start from the same weights (the same first loss), and both bring the loss down."""
    import os
    pytest = __import__("pytest")
    if os.environ.get("FASTRNN_REQUIRE_JAX") != "1":
        for name in ("jax", "flax", "optax", "fastrnn.jax", "fastrnn.jax.nn"):
            pytest.importorskip(name)
    example = load("jax_char_rnn")
    quick = dict(example.QUICK, verbose=False)
    runs = {backend: example.train(backend, **quick) for backend in example.BACKENDS}
    for backend, (losses, times, text) in runs.items():
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        print(f"{backend}: loss {first:.3f} -> {last:.3f}; epoch times {times}")
        assert np.all(np.isfinite(losses)) and len(times) == quick["epochs"]
        assert last < 0.8 * first
        assert text.startswith("The ") and len(text) == 4 + quick["sample_chars"]
    # the same initial weights: the first losses differ by float32 rounding only
    np.testing.assert_allclose(runs["fastrnn"][0][0], runs["flax"][0][0], rtol=1e-5)

    example.main(["--quick", "--compare", "--epochs", "1", "--max-chars", "4000"])
    out = capsys.readouterr().out
    assert "Flax nnx.RNN(OptimizedLSTMCell): 4000 characters" in out
    assert "fastrnn.jax.nn.LSTM: 4000 characters" in out
    assert out.count("  epoch 1: mean loss ") == 2 and out.count("--- sample (") == 2
    assert "flax: median time per epoch " in out and "fastrnn: median time per epoch " in out
    assert "fastrnn.jax.nn.LSTM vs Flax nnx.RNN(OptimizedLSTMCell), time per epoch: " in out
