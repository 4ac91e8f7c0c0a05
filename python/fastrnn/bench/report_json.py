"""JSON reports (``--json``): every number of a run with the machine and build it came from.

The two modes write different documents, each versioned by its ``schema``:

- CPU (:func:`cpu_document`, schema :data:`JSON_SCHEMA`): the peers' results per configuration
  with the FLOP, byte, floor and speed-up conventions;
- GPU (:func:`gpu_document`, ``"mode": "cuda"``, schema :data:`GPU_JSON_SCHEMA`): the rows'
  results, the targets' summary and the failed rows; ``complete`` is false while the run goes
  on (it rewrites the file after every row, so a run cut short still leaves its rows);
- RL suite (:func:`rl_document`, ``"mode": "rl"``, schema :data:`RL_JSON_SCHEMA`): both sides'
  results per row, the targets' summary and the failed rows, in the GPU document's layout.

:func:`write_json` writes either strictly (NaN and infinities become null), and atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Dict, List

import numpy as np

from .accuracy import GPU_ACCURACY_CONVENTION, RL_ACCURACY_CONVENTION, rl_failure, row_failure
from .ceilings import FLOOR_CONVENTION, GPU_FLOOR_CONVENTION
from .configs import BYTES_CONVENTION, FLOP_CONVENTION, RL_GROUPS
from .targets import (RL_TARGET_RULE, TARGET_RULE, adapter_summary, rl_targets_summary,
                      targets_summary)
from .timing import Settings, event_timing_text

JSON_SCHEMA = 2  # 2: ceilings, floors, input-gradient accuracy
GPU_JSON_SCHEMA = 1
RL_JSON_SCHEMA = 1


def cpu_document(meta: Dict[str, object], settings: Settings, suite: str,
                 results: List[Dict[str, object]]) -> Dict[str, object]:
    """The CPU mode's document: the peers' results of each configuration, and how to read them."""
    return {"schema": JSON_SCHEMA, "meta": meta, "suite": suite,
            "settings": dataclasses.asdict(settings), "flop_convention": FLOP_CONVENTION,
            "bytes_convention": BYTES_CONVENTION, "floor_convention": FLOOR_CONVENTION,
            "speedup_convention": "peer median time / fastrnn median time",
            "adapter_convention": "a framework's median time / fastrnn's adapter's for it "
                                  "(speedup_torch_adapter: torch.nn / fastrnn.torch; "
                                  "speedup_jax_adapter: Flax / fastrnn.jax)",
            "results": results, "adapters": adapter_summary(results)}


def gpu_document(meta: Dict[str, object], settings: Settings, suite: str,
                 results: List[Dict[str, object]], complete: bool) -> Dict[str, object]:
    """The GPU mode's document: the rows' results, how to read them, the targets' summary and
    the failed rows."""
    return {"schema": GPU_JSON_SCHEMA, "mode": "cuda", "complete": complete, "suite": suite,
            "meta": meta, "settings": dataclasses.asdict(settings),
            "conventions": {"flops": FLOP_CONVENTION, "bytes": BYTES_CONVENTION,
                            "floor": GPU_FLOOR_CONVENTION,
                            "timing": event_timing_text(settings),
                            "ratio": "cuDNN median time / fastrnn median time",
                            "accuracy": GPU_ACCURACY_CONVENTION, "targets": TARGET_RULE},
            "results": results, "targets": targets_summary(results),
            "failed": failed_rows(results)}


def rl_document(meta: Dict[str, object], settings: Settings, suite: str,
                results: List[Dict[str, object]], conventions: Dict[str, str]
                ) -> Dict[str, object]:
    """The RL suite's document: both sides' results per row, how to read them (``conventions``
    adds the run's own, such as its timing), the targets' summary and the failed rows."""
    return {"schema": RL_JSON_SCHEMA, "mode": "rl", "complete": True, "suite": suite,
            "meta": meta, "settings": dataclasses.asdict(settings),
            "conventions": {"flops": FLOP_CONVENTION, "bytes": BYTES_CONVENTION,
                            "floor": FLOOR_CONVENTION, "groups": dict(RL_GROUPS),
                            "ratio": "torch.nn median time / fastrnn.torch median time",
                            "accuracy": RL_ACCURACY_CONVENTION, "targets": RL_TARGET_RULE,
                            **conventions},
            "results": results, "targets": rl_targets_summary(results),
            "failed": [f"{r['row']['label']}: {why}" for r in results
                       for why in [rl_failure(r)] if why]}


def failed_rows(results: List[Dict[str, object]]) -> List[str]:
    """``label: why`` of each failed GPU row."""
    return [f"{r['row']['label']}: {why}" for r in results for why in [row_failure(r)] if why]


def write_json(path: str, doc: Dict[str, object]) -> None:
    """``doc`` as strict JSON (NaN and infinities become null), written atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(json_safe(doc), f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")
    write_atomically(path, write)


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomically(path, write)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path`` (its directory created), so a half-written file
    never sits at ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(value):
    """NaN/inf become None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
