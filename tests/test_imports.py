"""The package's layering (DESIGN.md): no import circles; stages/ on top, imported by nothing but
the CLI; analysis/ free of the training stack; data/ below train/ and analysis/."""

from __future__ import annotations

import ast

import pytest

from cltm import sources

ROOT = sources.ROOT


def _module(path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Every package module and the package modules it imports (function-level too)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        module = _module(path)
        graph[module] = {m for m in sources.imports_of(ast.parse(path.read_text()), module)
                         if m != module}
    return graph


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of its modules, or None. A package's own __init__ is not
    an edge to its modules (importing cltm.x runs cltm/__init__.py, not the reverse)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ()) - _parents(m)):
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_package_has_no_import_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_circle_check_finds_a_circle():
    graph = {"cltm.a": {"cltm.b"}, "cltm.b": {"cltm.c"}, "cltm.c": {"cltm.a"}, "cltm.d": set()}
    assert _cycle(graph) == ["cltm.a", "cltm.b", "cltm.c", "cltm.a"]


def _third_party(path) -> set[str]:
    found = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            found |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
            found.add(n.module.split(".")[0])
    return found


RULES = [
    # (importer prefix, forbidden prefixes)
    ("cltm.analysis", ("cltm.train", "cltm.data", "cltm.stages", "cltm.cli")),
    ("cltm.data", ("cltm.train", "cltm.analysis", "cltm.stages", "cltm.cli")),
    ("cltm.train", ("cltm.analysis", "cltm.stages", "cltm.cli")),
    ("cltm.config", ("cltm.data", "cltm.train", "cltm.analysis", "cltm.stages", "cltm.cli")),
]


@pytest.mark.parametrize("importer,forbidden", RULES)
def test_a_layer_imports_nothing_above_it(importer, forbidden):
    bad = {m: sorted(n for n in deps if n.startswith(forbidden))
           for m, deps in _graph().items() if m == importer or m.startswith(importer + ".")}
    assert {m: v for m, v in bad.items() if v} == {}


def test_only_the_cli_imports_a_stage_and_no_stage_imports_another():
    for module, deps in _graph().items():
        stages = {d for d in deps if d.startswith("cltm.stages.") and d != "cltm.stages._common"}
        if module == "cltm.cli":
            continue
        assert not stages, f"{module} imports the stage(s) {sorted(stages)}"


def test_nothing_imports_the_cli_but_python_m():
    assert [m for m, deps in _graph().items() if "cltm.cli" in deps] == ["cltm.__main__"]


def test_analysis_never_imports_the_training_stack():
    for path in (ROOT / "analysis").rglob("*.py"):
        assert not _third_party(path) & {"torch", "transformers"}, path.name


def test_the_gpu_hot_path_imports_no_tracking_or_scheduling():
    for name in ("model.py", "fused.py", "loop.py", "worker.py"):
        assert not _third_party(ROOT / "train" / name) & {"dvc", "mlflow", "ray"}, name
