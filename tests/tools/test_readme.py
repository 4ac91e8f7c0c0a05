"""The README's Python examples run as written (they are executed in order, sharing a namespace).

A block that needs PyTorch (or JAX) is marked, as in the docs pages (tests/tools/test_docs.py), by
the HTML comment ``<!-- docs-test: torch -->`` (``jax``) on the line before its fence; it is skipped
only where that is not installed (CI requires both, so there it always runs).
"""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"(?:^<!--\s*docs-test:\s*(?P<marker>[\w-]+)\s*-->[ \t]*\n)?"
                    r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


def python_blocks():
    """(marker or None, code) for each ```python block of the README, in order."""
    return [(m.group("marker"), m.group("code")) for m in _BLOCK.finditer(README.read_text())]


def _installed(marker):
    try:
        if marker == "torch":
            import torch  # noqa: F401
        else:
            import flax  # noqa: F401

            import fastrnn.jax  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests (installed copy)")
def test_readme_examples_run(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert {marker for marker, _ in blocks} <= {None, "torch", "jax"}, "unknown docs-test marker"
    namespace = {}
    skipped = 0
    for marker, block in blocks:
        if marker is not None and not _installed(marker):
            skipped += 1
            continue
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "(256, 32)" in out
    if skipped:
        pytest.skip(f"{skipped} README example(s) need PyTorch or JAX, which is not installed "
                    f"(the others ran)")
