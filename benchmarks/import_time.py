"""How heavy is the package to load and how big is its code: import time, CLI start-up, code size.

Prints ``import hydranet`` against ``import torch`` measured in the same run (the ratio is what the
package adds on top of torch), the start-up time of ``hydranet --help`` (parsing must not import torch),
which heavy optional libraries ``import hydranet`` loads, and the sizes of the largest file, class and
function of ``src/hydranet`` together with the modules that lack ``__all__``. Writes
``benchmarks/results/import_time.json``.
"""

from __future__ import annotations

import ast
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hydranet"
RUNS = 5
HEAVY = ("matplotlib", "tensorboard", "pandas", "sklearn", "mlxtend", "torchmetrics")
# The whole public API of the README loaded (the top-level names are imported on first use).
FULL = "import hydranet as hn; hn.Trainer, hn.Task, hn.data, hn.models, hn.losses, hn.balancing, hn.metrics, hn.report"


def _seconds(args: list[str]) -> float:
    """Median wall time of ``args`` over RUNS runs (after one warm-up run that fills the disk cache)."""
    subprocess.run(args, check=True, capture_output=True)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loaded_heavy(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return out.split()


def _code_sizes() -> dict[str, object]:
    files, classes, functions, no_all = [], [], [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(SRC.parent))
        files.append((len(text.splitlines()), name))
        tree = ast.parse(text)
        if not any(
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and any(getattr(t, "id", None) == "__all__" for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
            for node in tree.body
        ):
            no_all.append(name)
        for node in ast.walk(tree):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, ast.ClassDef):
                classes.append((size, f"{name}:{node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((size, f"{name}:{node.name}"))
    top = lambda items: {"lines": max(items)[0], "where": max(items)[1]}  # noqa: E731
    return {
        "largest_file": top(files),
        "largest_class": top(classes),
        "largest_function": top(functions),
        "modules_without_all": len(no_all),
        "modules_without_all_names": no_all,
    }


def main() -> None:
    torch_s = _seconds([sys.executable, "-c", "import torch"])
    hydranet_s = _seconds([sys.executable, "-c", "import hydranet"])
    full_s = _seconds([sys.executable, "-c", FULL])
    cli = shutil.which("hydranet", path=str(Path(sys.executable).parent))
    help_s = _seconds([cli, "--help"]) if cli else None
    heavy = _loaded_heavy("import hydranet")
    heavy_full = _loaded_heavy(FULL)
    sizes = _code_sizes()
    result = {
        "runs": RUNS,
        "import_torch_s": round(torch_s, 3),
        "import_hydranet_s": round(hydranet_s, 3),
        "hydranet_over_torch": round(hydranet_s / torch_s, 3),
        "import_full_api_s": round(full_s, 3),
        "full_api_over_torch": round(full_s / torch_s, 3),
        "hydranet_help_s": None if help_s is None else round(help_s, 3),
        "help_over_import_torch": None if help_s is None else round(help_s / torch_s, 3),
        "heavy_modules_loaded_by_import": heavy,
        "heavy_modules_loaded_by_full_api": heavy_full,
        **sizes,
    }
    print(f"import torch      {torch_s:.3f} s (median of {RUNS})")
    print(f"import hydranet   {hydranet_s:.3f} s  = {hydranet_s / torch_s:.2f}x import torch")
    print(f"full public API   {full_s:.3f} s  = {full_s / torch_s:.2f}x import torch  ({FULL})")
    if help_s is not None:
        print(f"hydranet --help   {help_s:.3f} s  = {help_s / torch_s:.2f}x import torch")
    print(f"heavy libraries loaded by import hydranet: {', '.join(heavy) or 'none'}")
    print(f"heavy libraries loaded by the full API: {', '.join(heavy_full) or 'none'}")
    for key in ("largest_file", "largest_class", "largest_function"):
        print(f"{key:17} {sizes[key]['lines']} lines ({sizes[key]['where']})")  # type: ignore[index]
    print(f"modules without __all__: {sizes['modules_without_all']}")
    out = ROOT / "benchmarks" / "results" / "import_time.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
