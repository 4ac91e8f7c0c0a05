"""A recurrent policy learns a memory task by reinforcement learning (A2C), with state resets.

The task (NumPy only, 64 environments stepped together): each episode shows a cue -- one of 4
symbols -- at its first step only, then blank observations, then a query flag at its last step,
where the action that names the cue earns a reward of 1. Nothing in the query step's observation
says which cue was shown, so a policy without state is right one time in four (mean return 0.25)
and a policy that remembers is right every time (1.0). Episodes last 4 to 12 steps, drawn at
random, so the environments end and restart at different steps (each restarts by itself).

The policy is an LSTM (or GRU) and two linear heads (action logits, value). Rollouts use the
streaming path: one call with T = 1 per step, carrying the state under ``torch.no_grad()``,
the state zeroed where an episode starts. The update runs the whole rollout (T steps x B
environments) through the recurrent layer in one call from the state the rollout started with,
``resets=episode_starts`` zeroing the state wherever an episode started; then the A2C loss
(policy gradient with GAE advantages, value loss, entropy bonus) and one Adam step.

    python examples/recurrent_rl.py                    # fastrnn.torch, resets= in one call
    python examples/recurrent_rl.py --backend torch    # torch.nn, the step loop with masks
    python examples/recurrent_rl.py --compare          # both from the same weights, and the ratio
    python examples/recurrent_rl.py --quick            # a run of a few seconds

``--backend torch`` runs the same model on ``torch.nn.LSTM`` the way recurrent RL libraries do
without resets: a Python loop over the rollout's steps that multiplies the state by
``(1 - episode_start[t])`` before each single-step call. Both backends start from the same
weights and draw the same actions, so their returns agree (up to float32 rounding, which can
flip a sampled action after many updates); only the time per update differs.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import List

import numpy as np
import torch

import fastrnn.torch


# ---- the environment: NumPy only ----------------------------------------------------------

class CueRecall:
    """``n`` copies of the cue-recall task, stepped together; each restarts by itself."""

    def __init__(self, n: int, cues: int = 4, min_len: int = 4, max_len: int = 12, seed: int = 0):
        self.n, self.cues, self.min_len, self.max_len = n, cues, min_len, max_len
        self.rng = np.random.default_rng(seed)
        self.cue = np.zeros(n, dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self._restart(np.ones(n, dtype=bool))

    @property
    def obs_size(self) -> int:
        return self.cues + 1  # the cue, one-hot (first step only), and the query flag

    def _restart(self, which: np.ndarray) -> None:
        k = int(which.sum())
        self.cue[which] = self.rng.integers(self.cues, size=k)
        self.length[which] = self.rng.integers(self.min_len, self.max_len + 1, size=k)
        self.t[which] = 0

    def observe(self) -> np.ndarray:
        obs = np.zeros((self.n, self.obs_size), dtype=np.float32)
        first = np.flatnonzero(self.t == 0)
        obs[first, self.cue[first]] = 1.0
        obs[self.t == self.length - 1, self.cues] = 1.0
        return obs

    def step(self, actions: np.ndarray):
        """Reward 1 for naming the cue at the query step; (reward, done); done episodes restart."""
        query = self.t == self.length - 1
        reward = (query & (actions == self.cue)).astype(np.float32)
        self.t += 1
        self._restart(query)
        return reward, query


# ---- the policy -----------------------------------------------------------------------------

class Policy(torch.nn.Module):
    """A recurrent layer and two heads. ``backend`` says how a rollout's steps are run again in
    the update: ``fastrnn`` in one call with ``resets=``, ``torch`` in a step loop with masks."""

    def __init__(self, obs_size: int, actions: int, hidden: int, cell: str, backend: str):
        super().__init__()
        namespace = fastrnn.torch if backend == "fastrnn" else torch.nn
        self.rnn = getattr(namespace, cell.upper())(obs_size, hidden)
        self.pi = torch.nn.Linear(hidden, actions)
        self.v = torch.nn.Linear(hidden, 1)
        self.backend, self.lstm, self.hidden = backend, cell == "lstm", hidden

    def initial_state(self, n: int):
        zeros = torch.zeros(1, n, self.hidden)
        return (zeros, zeros.clone()) if self.lstm else zeros

    def _masked(self, state, start):
        """The state multiplied by (1 - episode_start): zeros where an episode starts."""
        keep = (1.0 - start.float()).view(1, -1, 1)
        return tuple(keep * s for s in state) if self.lstm else keep * state

    def _heads(self, y):
        return self.pi(y), self.v(y).squeeze(-1)

    def step(self, obs, state, start):
        """One step of every environment (T = 1): logits, value, next state."""
        x = obs.unsqueeze(0)
        if self.backend == "fastrnn":
            y, state = self.rnn(x, state, resets=start.unsqueeze(0))
        else:
            y, state = self.rnn(x, self._masked(state, start))
        logits, value = self._heads(y[0])
        return logits, value, state

    def rollout(self, obs, state0, starts):
        """The whole rollout again, with autograd: logits (T, B, A) and values (T, B)."""
        if self.backend == "fastrnn":
            y, _ = self.rnn(obs, state0, resets=starts)  # T steps x B envs, one call
        else:
            state, ys = state0, []
            for t in range(obs.shape[0]):  # what recurrent RL libraries do without resets
                y_t, state = self.rnn(obs[t:t + 1], self._masked(state, starts[t]))
                ys.append(y_t)
            y = torch.cat(ys)
        return self._heads(y)


# ---- A2C ------------------------------------------------------------------------------------

class History:
    """Per update: the mean return of the episodes that ended in its rollout, the loss, and the
    seconds of the rollout and of the update."""

    def __init__(self):
        self.returns: List[float] = []
        self.losses: List[float] = []
        self.rollout_s: List[float] = []
        self.update_s: List[float] = []

    def ms_per_update(self) -> float:
        """Mean update time in ms, the first (warm-up) update left out when there are more."""
        times = self.update_s[1:] or self.update_s
        return 1e3 * sum(times) / len(times)


def advantages(rewards, values, dones, last_value, gamma: float, lam: float):
    """GAE(lambda) advantages and the returns they imply, over a (T, B) rollout."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        go_on = 1.0 - dones[t]
        next_value = last_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_value * go_on - values[t]
        running = delta + gamma * lam * go_on * running
        adv[t] = running
    return adv, adv + values


# --quick: a run of a few seconds in which the return still rises clearly (0.25 -> about 0.75).
QUICK = dict(updates=40, envs=32, steps=48, hidden=64, lr=1e-2)


def train(backend: str = "fastrnn", cell: str = "lstm", updates: int = 200, envs: int = 64,
          steps: int = 128, hidden: int = 128, lr: float = 3e-3, gamma: float = 0.95,
          lam: float = 0.9, entropy: float = 0.01, seed: int = 0, log_every: int = 20,
          verbose: bool = True) -> History:
    """Train one policy; returns its :class:`History`."""
    env = CueRecall(envs, seed=seed)
    torch.manual_seed(seed)  # the same initial weights for both backends
    policy = Policy(env.obs_size, env.cues, hidden, cell, backend)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    sampler = torch.Generator().manual_seed(seed + 1)  # the same actions for both backends
    state = policy.initial_state(envs)
    start = torch.ones(envs, dtype=torch.bool)  # every environment starts an episode
    obs = torch.from_numpy(env.observe())
    history = History()
    if verbose:
        what = ("fastrnn.torch, the update in one call with resets=" if backend == "fastrnn"
                else "torch.nn, the update as a step loop with (1 - episode_start) masks")
        print(f"{cell.upper()} policy, hidden {hidden}, {envs} environments x {steps} steps per "
              f"update, {torch.get_num_threads()} threads: {what}")
    for update in range(1, updates + 1):
        # Rollout: the streaming path, one T = 1 call per step under no_grad.
        began = time.perf_counter()
        state0 = state
        buf = {k: [] for k in ("obs", "starts", "actions", "rewards", "dones", "values")}
        with torch.no_grad():
            for _ in range(steps):
                logits, value, state = policy.step(obs, state, start)
                action = torch.multinomial(torch.softmax(logits, -1), 1, generator=sampler)[:, 0]
                reward, done = env.step(action.numpy())
                for k, v in (("obs", obs), ("starts", start), ("actions", action),
                             ("rewards", torch.from_numpy(reward)),
                             ("dones", torch.from_numpy(done.astype(np.float32))),
                             ("values", value)):
                    buf[k].append(v)
                obs, start = torch.from_numpy(env.observe()), torch.from_numpy(done)
            _, last_value, _ = policy.step(obs, state, start)  # bootstrap (state not kept)
        roll = {k: torch.stack(v) for k, v in buf.items()}
        adv, returns = advantages(roll["rewards"], roll["values"], roll["dones"], last_value,
                                  gamma, lam)
        ended = roll["dones"].sum().item()
        history.returns.append(roll["rewards"].sum().item() / ended if ended else math.nan)
        history.rollout_s.append(time.perf_counter() - began)

        # Update: the whole rollout through the recurrent layer again, then A2C.
        began = time.perf_counter()
        logits, values = policy.rollout(roll["obs"], state0, roll["starts"])
        logp = torch.log_softmax(logits, -1)
        chosen = logp.gather(-1, roll["actions"].unsqueeze(-1)).squeeze(-1)
        norm_adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        loss = (-(chosen * norm_adv).mean() + 0.5 * (returns - values).pow(2).mean()
                + entropy * (logp.exp() * logp).sum(-1).mean())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        history.update_s.append(time.perf_counter() - began)
        history.losses.append(loss.item())

        if verbose and (update % log_every == 0 or update == updates):
            recent = [r for r in history.returns[-log_every:] if not math.isnan(r)]
            mean = sum(recent) / len(recent) if recent else math.nan  # nan: no episode ended
            print(f"  update {update:4d}: mean return {mean:.3f}  "
                  f"(rollout {1e3 * np.mean(history.rollout_s[-log_every:]):.1f} ms, update "
                  f"{1e3 * np.mean(history.update_s[-log_every:]):.1f} ms)")
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["fastrnn", "torch"], default="fastrnn",
                        help="fastrnn: fastrnn.torch, the update in one call with resets=; "
                             "torch: torch.nn, the update as a step loop with masks")
    parser.add_argument("--compare", action="store_true",
                        help="train on both backends from the same weights and compare the "
                             "time per update")
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--envs", type=int, default=64, help="parallel environments B")
    parser.add_argument("--steps", type=int, default=128, help="rollout length T per update")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--quick", action="store_true",
                        help="a run of a few seconds: " + ", ".join(f"--{k} {v:g}"
                                                                   for k, v in QUICK.items()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    backends = ["torch", "fastrnn"] if args.compare else [args.backend]
    ms = {}
    for backend in backends:
        history = train(backend, args.cell, args.updates, args.envs, args.steps, args.hidden,
                        args.lr, seed=args.seed, log_every=min(args.log_every, args.updates))
        ms[backend] = history.ms_per_update()
        first, last = np.nanmean(history.returns[:10]), np.nanmean(history.returns[-10:])
        print(f"{backend}: mean return {first:.3f} (first 10 updates) -> "
              f"{last:.3f} (last 10); {ms[backend]:.1f} ms per update (mean), "
              f"{1e3 * np.mean(history.rollout_s[1:] or history.rollout_s):.1f} ms per rollout\n")
    if len(ms) == 2:
        print(f"update time, torch.nn step loop / fastrnn.torch with resets=: "
              f"{ms['torch'] / ms['fastrnn']:.2f}x ({ms['torch']:.1f} ms vs "
              f"{ms['fastrnn']:.1f} ms)")


if __name__ == "__main__":
    main()
