"""The self-contained code examples of the README and the guides run as written (in a temporary folder)."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: Pages whose python blocks form one runnable script, in order (models.md has its own test);
#: blocks that need an optional package are skipped when it is missing.
PAGES = [
    "README.md", "docs/readers.md", "docs/samplers.md", "docs/distributed.md", "docs/training.md", "docs/data.md",
    "docs/metrics.md", "docs/ecosystem.md",
]
OPTIONAL = {"lightning": "import lightning", "datasets": "import datasets"}


@pytest.mark.filterwarnings("ignore::hydranet.data.readers.ReaderWarning")  # the readers guide shows one
@pytest.mark.parametrize("page", PAGES)
def test_the_code_blocks_run(page, tmp_path, monkeypatch, one_thread):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no python block"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        missing = [m for m, marker in OPTIONAL.items() if marker in block and not _importable(m)]
        if missing:
            continue
        exec(compile(block, str(ROOT / page), "exec"), namespace)  # noqa: S102 - our own documentation


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
