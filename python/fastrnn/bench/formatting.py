"""How a number looks in every report (the text table, the Markdown tables, the progress lines).

Times are shown in milliseconds with about four significant digits, ratios as ``1.23x``, floor
fractions as percentages with a couple of digits even when tiny, differences and errors in
scientific notation (``NON-FINITE`` when a result had a NaN or an infinity).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

NOISY_SPREAD = 0.10  # a measurement whose interquartile range exceeds this fraction of its median


def fmt_ms(m) -> str:
    """A measurement's median time in milliseconds."""
    ms = m["median_s"] * 1e3
    digits = 0 if ms >= 1000 else 1 if ms >= 100 else 2 if ms >= 10 else 3 if ms >= 1 else 4
    return f"{ms:.{digits}f}"


def fmt_x(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def noise(m) -> str:
    """``~`` after a noisy measurement (interquartile range > NOISY_SPREAD of the median)."""
    return "~" if m["spread"] > NOISY_SPREAD else ""


def fmt_floor(m) -> str:
    """The floor fraction as a percentage, with a couple of digits even when tiny."""
    pct = 100 * m["floor_fraction"]
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def fmt_diff(diff: Optional[Dict[str, object]]) -> str:
    """A CPU peer's max |out - ref| (its ``accuracy`` entry or that entry's ``grad_input``)."""
    if diff is None:
        return ""
    return f"{diff['max_abs_diff']:.1e}" if diff["finite"] else "NON-FINITE"


def fmt_err(value: Optional[float]) -> str:
    """A relative error; None is how JSON-safe results carry a NaN (a non-finite result)."""
    return "NON-FINITE" if value is None or not math.isfinite(value) else f"{value:.1e}"


def fmt_errs(errs: Optional[Dict[str, float]]) -> str:
    """A GPU row's errors of y, dx and dW_hh, as ``y/dx/dW``."""
    return "" if not errs else "/".join(fmt_err(errs[n]) for n in ("y", "dx", "dw_hh"))


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def pct(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{value:.0%}"
