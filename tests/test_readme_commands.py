"""Every shell command of README.md and docs/*.md runs as written, in the shell of the Quick start.

The Quick start says to run ``source .venv/bin/activate`` once; each command here runs in bash after
exactly that (from the repository root), then in a temporary folder holding a copy of ``examples/``,
so that outputs land there and not in the repository. A command that cannot run here is skipped with
its reason, listed in :data:`SKIPPED`; every other command must exit 0. ``$ COMMAND`` lines of
``text`` blocks are run too, and the output shown under them must be what the command prints.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
ACTIVATE = "source .venv/bin/activate"

#: (pattern, reason): the commands that cannot run in a test, and why.
SKIPPED: list[tuple[str, str]] = [
    (r"^make (demo|test)\b", "the Quick start's own targets: `make test` runs this file; `make demo` is checked on a clean clone"),
    (r"^source \.venv/bin/activate$", "run before every other command"),
    (r"^pip install\b", "changes the environment: the Makefile installs the pinned extras from constraints.txt"),
    (r"HOST:\d+", "multi-node rendezvous: needs a second machine at HOST"),
    (r"^python benchmarks/", "a benchmark: minutes of CPU, and it rewrites benchmarks/results/ and generated tables"),
]
#: Commands that train: marked slow (seconds to a minute each).
SLOW = re.compile(r"\b(train|demo)\b")


def _logical_lines(block: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # no '#' inside the commands of these pages
        if line:
            commands.append(line)
    return commands


def bash_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", (ROOT / page).read_text(), flags=re.S):
            found += [(page, command) for command in _logical_lines(block)]
    return found


def shown_outputs() -> list[tuple[str, str, list[str]]]:
    """``(page, command, lines shown under it)`` for the ``$ COMMAND`` lines of text blocks."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```text\n(.*?)```", (ROOT / page).read_text(), flags=re.S):
            lines = block.splitlines()
            if lines and lines[0].startswith("$ "):
                found.append((page, lines[0][2:], lines[1:]))
    return found


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED if re.search(pattern, command)), None)


def run(command: str, folder: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``command`` in bash after the Quick start's activation, in ``folder`` (a copy of examples/)."""
    if not (folder / "examples").exists():
        shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    script = f"set -e\ncd {ROOT}\n{ACTIVATE}\ncd {folder}\n{command}\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # nothing of .venv on PATH but what activate puts there
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


def test_the_quick_start_activates_the_venv_the_way_this_test_does():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ACTIVATE in quick_start
    assert bash_commands(), "no bash block found"


COMMANDS = bash_commands()


@pytest.mark.parametrize(
    ("page", "command"),
    [pytest.param(p, c, marks=[pytest.mark.slow] if SLOW.search(c) and not skip_reason(c) else []) for p, c in COMMANDS],
    ids=[f"{p}: {c[:60]}" for p, c in COMMANDS],
)
def test_command_runs_as_written(page, command, tmp_path):
    reason = skip_reason(command)
    if reason is not None:
        pytest.skip(reason)
    done = run(command, tmp_path)
    assert done.returncode == 0, f"{page}: `{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


SHOWN = shown_outputs()


@pytest.mark.parametrize(("page", "command", "shown"), SHOWN, ids=[f"{p}: {c[:60]}" for p, c, _ in SHOWN])
def test_shown_output_is_what_the_command_prints(page, command, shown, tmp_path):
    done = run(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    expected = shown[: shown.index("    ...")] if "    ..." in shown else shown
    assert printed[: len(expected)] == expected, f"{page}: the output shown under `{command}` is not what it prints"
