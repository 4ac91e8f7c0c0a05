"""The documentation's Python examples run as written.

Every fenced ```python block of every page under ``docs/`` (the MkDocs site's sources) runs here,
page by page: a page's blocks run in order in one namespace, as a reader would type them, so a
block may use what an earlier block of the same page defined. Other fences (``bash``, ``text``)
are not run.

A block that needs more than fastrnn and NumPy says so in an HTML comment on the line right before
its fence (invisible in the rendered site)::

    <!-- docs-test: torch -->    needs PyTorch: skipped only where torch is not installed
    <!-- docs-test: jax -->      needs JAX, Flax and fastrnn.jax: skipped only where they are not
    <!-- docs-test: jax-torch --> needs both of the above
    <!-- docs-test: cuda -->     needs a GPU: skipped only where fastrnn.cuda_available() is False
                                 or torch cannot use the GPU (marked ``cuda``, as the GPU tests)

An unknown marker fails the test. A marked block's names must not be needed by the unmarked
blocks after it, since it may be skipped. Each block is its own test (``test_docs.py::<page>[n]``);
running one alone runs the earlier blocks of its page first.

The pages are found next to this file's folder (``<repo>/docs``), so the tests also run from an
installed wheel as long as the source tree's ``tests/`` and ``docs/`` are used; where ``docs/`` is
absent they skip. The site itself (MkDocs) is not needed here: ``.ci/run`` builds it.
"""
from __future__ import annotations

import pathlib
import re
from typing import Dict, List, NamedTuple, Optional

import pytest

import fastrnn

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"

# A ```python fence at the start of a line (any indentation, as inside a list item), optionally
# preceded by a marker comment on the line before; the block ends at the matching closing fence.
_BLOCK = re.compile(
    r"(?:^[ \t]*<!--\s*docs-test:\s*(?P<marker>[\w-]+)\s*-->[ \t]*\n)?"
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S)
_MARKERS = ("torch", "jax", "jax-torch", "cuda")


class Block(NamedTuple):
    page: str
    index: int
    line: int
    marker: Optional[str]
    code: str


def _dedent(body: str, indent: str) -> str:
    return "".join(line[len(indent):] if line.startswith(indent) else line
                   for line in body.splitlines(keepends=True))


def page_blocks(path: pathlib.Path) -> List[Block]:
    text = path.read_text(encoding="utf-8")
    page = path.relative_to(DOCS).as_posix()
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("body"))  # 0-based line of the code's first line
        code = _dedent(match.group("body"), match.group("indent"))
        # Pad with blank lines so that tracebacks give the markdown file's line numbers.
        blocks.append(Block(page, len(blocks), line, match.group("marker"), "\n" * line + code))
    return blocks


def all_blocks() -> List[Block]:
    if not DOCS.is_dir():
        return []
    return [block for path in sorted(DOCS.rglob("*.md")) for block in page_blocks(path)]


_BLOCKS = all_blocks()


def _torch_missing() -> Optional[str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "needs PyTorch (pip install 'fastrnn[torch]'), which is not installed"
    return None


def _jax_missing() -> Optional[str]:
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401

        import fastrnn.jax  # noqa: F401
    except ImportError as e:
        return f"needs JAX, Flax and fastrnn.jax (pip install 'fastrnn[jax]'): {e}"
    return None


def _gpu_missing() -> Optional[str]:
    if not fastrnn.cuda_available():
        return f"needs an NVIDIA GPU: {fastrnn.cuda.unavailable_reason()}"
    try:
        import torch
    except ImportError:
        return "the GPU examples use torch CUDA tensors, and torch is not installed"
    if not torch.cuda.is_available():
        return "torch cannot use the GPU (a CPU-only build of torch?)"
    return None


def _skip_reason(block: Block) -> Optional[str]:
    if block.marker is None:
        return None
    if block.marker not in _MARKERS:
        pytest.fail(f"{block.page}, block {block.index}: unknown marker docs-test: "
                    f"{block.marker!r} (known: {', '.join(_MARKERS)})")
    if block.marker == "torch":
        return _torch_missing()
    if block.marker == "jax":
        return _jax_missing()
    if block.marker == "jax-torch":
        return _jax_missing() or _torch_missing()
    return _gpu_missing()


class _Page:
    """One page's namespace and how many of its blocks have run in it."""

    def __init__(self) -> None:
        self.namespace: Dict[str, object] = {"__name__": "__docs__"}
        self.done = 0


_pages: Dict[str, _Page] = {}


def _run_block(block: Block, page: _Page) -> None:
    exec(compile(block.code, str(DOCS / block.page), "exec"), page.namespace)


def _params():
    if not DOCS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="docs/ is not beside the tests (installed copy without the source tree)"))]
    assert _BLOCKS, f"no python code blocks found under {DOCS}"
    return [pytest.param(block, id=f"{block.page}[{block.index}]",
                         marks=[pytest.mark.cuda] if block.marker == "cuda" else [])
            for block in _BLOCKS]


@pytest.mark.parametrize("block", _params())
def test_docs_example_runs(block: Block, restore_settings):
    reason = _skip_reason(block)
    page = _pages.setdefault(block.page, _Page())
    # Earlier blocks of the page first (when this test runs alone, or after a skipped one's
    # page-mates), skipping those whose requirement is missing.
    for earlier in _BLOCKS:
        if earlier.page == block.page and page.done <= earlier.index < block.index:
            if _skip_reason(earlier) is None:
                _run_block(earlier, page)
            page.done = earlier.index + 1
    if reason is not None:
        page.done = max(page.done, block.index + 1)
        pytest.skip(reason)
    if page.done > block.index:  # already run (a rerun of the same block in one session)
        return
    page.done = block.index + 1
    _run_block(block, page)


def test_docs_have_examples():
    """The pages this suite reads are there and hold examples (guards the block pattern)."""
    if not DOCS.is_dir():
        pytest.skip("docs/ is not beside the tests (installed copy without the source tree)")
    pages = {block.page for block in _BLOCKS}
    for expected in ("getting-started.md", "numpy.md", "pytorch.md", "threads.md", "errors.md"):
        assert expected in pages, f"no ```python example found in docs/{expected}"
    markers = {block.marker for block in _BLOCKS}
    assert markers <= {None, *_MARKERS}, f"unknown docs-test markers: {markers}"
    assert "torch" in markers and "jax" in markers and "cuda" in markers
