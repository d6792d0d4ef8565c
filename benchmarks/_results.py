"""``benchmarks/results/NAME.json``: what a benchmark measured, with the machine it ran on.

The README and docs tables are generated from these files (``python benchmarks/_tables.py --write``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["RESULTS", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` (with the machine: CPUs, torch threads, versions) to ``results/NAME.json``."""
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"benchmark": f"benchmarks/{name}.py", "machine": machine, **results}, indent=2) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return path
