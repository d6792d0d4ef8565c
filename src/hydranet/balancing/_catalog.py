r"""One table of every balancing method, generated from the registries so that the docs cannot drift.

For each name of :data:`~hydranet.balancing.WEIGHTINGS` and :data:`~hydranet.balancing.AGGREGATORS` the
row is read from the class: the **family** from its module (aggregators) or its base class (weightings),
the **state** from whether it overrides ``state_dict`` (and draws random numbers), the **scale** and
**cost** from the ``Scale:`` and ``Cost:`` sentences of its docstring, the **paper** from the parenthesis
of the docstring's first sentence, and the **paths** from what the balancer accepts for it (one backward
for loss weightings; the Jacobian paths for gradient methods, ``gramian`` for Gramian-only ones,
``representation`` except for gradient weightings with per-parameter state).

``python -m hydranet.balancing._catalog`` rewrites the table between the ``<!-- methods:start -->`` and
``<!-- methods:end -->`` markers of ``docs/aggregators.md`` and ``docs/balancing.md``; a test checks that
the pages hold :func:`method_table`.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from hydranet.balancing._weighting_bilevel import AutoLambda
from hydranet.balancing.aggregators import AGGREGATORS, Aggregator, Randomized
from hydranet.balancing.weighting import WEIGHTINGS, GradientWeighting, LossWeighting, Weighting

__all__ = ["MARKERS", "method_rows", "method_table", "write_tables"]

#: The comments that enclose the generated table in a page.
MARKERS = ("<!-- methods:start -->", "<!-- methods:end -->")

# Aggregator module -> family shown in the table.
_FAMILIES = {
    "basic": "baseline",
    "surgery": "gradient surgery",
    "pareto": "conflict-averse (Pareto)",
    "equalizing": "equal geometry",
    "bargaining": "bargaining",
    "tracking": "tracked / stochastic",
    "_stochastic": "tracked / stochastic",
    "_robust": "robust (outlier rows)",
    "_priority": "priority order",
    "_constant": "fixed / random weights",
    "_smoothing": "wrapper (smoothing)",
}
_LATEX = {
    r"\lVert": "‖", r"\rVert": "‖", r"\sum": "Σ", r"\nabla": "∇", r"\lambda": "λ", r"\alpha": "α",
    r"\theta": "θ", r"\sqrt": "√", r"\log": "log", r"\le": "≤", r"\ge": "≥", r"\cdot": "·", r"\top": "ᵀ",
    r"\mathbf 1": "1", r"\,": "", r"\;": " ", r"\ ": " ", r"\infty": "∞", r"\sigma": "σ", r"\epsilon": "ε",
}  # fmt: skip


def _text(rst: str) -> str:
    """A docstring fragment as one markdown line: math in backticks, roles reduced to their last name."""
    text = re.sub(r":(?:class|func|meth|data|mod):`~?([\w.]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", rst)
    text = re.sub(r":math:`([^`]*)`", lambda m: f"`{m.group(1)}`", text)
    for latex, plain in _LATEX.items():
        text = text.replace(latex, plain)
    text = text.replace("``", "`").replace("|", "\\|")
    return re.sub(r"\s+", " ", text).strip()


def _sentence(doc: str, label: str) -> str | None:
    """The sentence of ``doc`` that starts with ``label:`` (up to a period followed by a space or the end)."""
    flat = re.sub(r"\s+", " ", doc)
    match = re.search(rf"\b{label}: (.+?)\.(?:\s|$)", flat)
    return _text(match.group(1)) if match else None


def _paper(doc: str) -> str:
    """The citation in the first parenthesis of the first paragraph (e.g. ``Sener & Koltun, NeurIPS 2018``)."""
    first = re.sub(r"\s+", " ", doc.split("\n\n")[0])
    depth, start = 0, None
    for i, ch in enumerate(first):
        if ch == "(":
            depth += 1
            start = i + 1 if depth == 1 else start
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                inner = first[start:i]
                if re.search(r"\d{4}", inner):
                    return _text(re.sub(r"^``\w+``; ", "", inner))  # weightings start with their name
                start = None
    return "—"


def _state(cls: type[Aggregator] | type[Weighting]) -> str:
    base: type[Aggregator] | type[Weighting] = Aggregator if issubclass(cls, Aggregator) else Weighting
    stateful = cls.state_dict is not base.state_dict
    random = issubclass(cls, Randomized) or "seed" in inspect.signature(cls).parameters
    learnable = issubclass(cls, Weighting) and cls.parameters is not Weighting.parameters
    parts = [p for p, on in (("state", stateful and not random), ("random", random), ("learnable", learnable)) if on]
    return ", ".join(parts) or "—"


# Aggregators with per-parameter state ([T, P]): on the representation path P would be the batch's
# feature count, which changes with the batch, so their state would not follow the parameters.
_PER_PARAMETER_STATE = ("MoCo", "ExcessMTL")


def _paths(cls: type) -> str:
    if issubclass(cls, LossWeighting):
        return "one backward" + (" + meta-step (val)" if getattr(cls, "needs_validation", False) else "")
    if issubclass(cls, GradientWeighting):
        return "loop, vmap, features"
    paths = ["loop", "vmap", "features"]
    if getattr(cls, "gramian_only", False):
        paths.append("gramian")
    if cls.__name__ not in _PER_PARAMETER_STATE:
        paths.append("representation")
    return ", ".join(paths)


def _family(name: str, cls: type) -> str:
    if issubclass(cls, AutoLambda) or getattr(cls, "needs_validation", False):
        return "loss weighting (bilevel)"
    if issubclass(cls, LossWeighting):
        return "loss weighting"
    if issubclass(cls, GradientWeighting):
        return "gradient weighting"
    return _FAMILIES.get(cls.__module__.rsplit(".", 1)[-1], "aggregator")


def method_rows() -> list[tuple[str, ...]]:
    """``(name, class, family, state, cost, scale, paper, paths)`` for every registered method."""
    rows: list[tuple[str, ...]] = []
    registries: tuple[dict[str, type], ...] = (WEIGHTINGS, AGGREGATORS)
    for registry in registries:
        for name in sorted(registry):
            cls = registry[name]
            doc = inspect.getdoc(cls) or ""
            default_cost = "O(T) + one backward" if issubclass(cls, LossWeighting) else "—"
            rows.append((
                f"`{name}`", f"`{cls.__name__}`", _family(name, cls), _state(cls),
                _sentence(doc, "Cost") or default_cost, _sentence(doc, "Scale") or "—", _paper(doc), _paths(cls),
            ))  # fmt: skip
    return rows


def method_table() -> str:
    """The markdown table of :func:`method_rows` (loss weightings first, then aggregators, by name)."""
    head = ("name", "class", "family", "state", "cost", "scale", "paper", "paths")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in method_rows()]
    return "\n".join(lines)


def _replace(page: str, table: str) -> str:
    start, end = MARKERS
    if start not in page or end not in page:
        raise ValueError(f"The page has no {start} ... {end} markers around the method table.")
    before, rest = page.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{table}\n{end}{after}"


def write_tables(root: Path) -> list[Path]:
    """Rewrite the table in ``docs/aggregators.md`` and ``docs/balancing.md`` under ``root``."""
    table = method_table()
    pages = [root / "docs" / "aggregators.md", root / "docs" / "balancing.md"]
    for page in pages:
        page.write_text(_replace(page.read_text(encoding="utf-8"), table), encoding="utf-8")
    return pages


if __name__ == "__main__":  # pragma: no cover - the docs' regeneration command
    for written in write_tables(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(f"wrote the method table into {written}")
