"""The package's own source files that a piece of it runs, read from its import statements.

One answer serves two questions that must never disagree: which files a stage's `deps` in
`dvc.yaml` must list (a test holds them equal), and which files a run's hash covers, so that
editing what any of them computes marks the stored runs stale.

The run hash (`digest`) covers each file's syntax tree, not its bytes: comments, docstrings and
formatting decide no result, and on the paper's grid a typo in a docstring would otherwise cost
hundreds of GPU-hours of retraining. DVC's deps stay on the bytes (DVC hashes files); a stage
that reruns on a comment finds every run in the store and trains nothing.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "cltm"
ROOT = Path(__file__).resolve().parent  # src/cltm


def module_file(module: str) -> Path | None:
    """The file of `module` (cltm.x.y), or None when it is not one of the package's."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(node: ast.AST, module: str) -> set[str]:
    """The package modules that `node` imports anywhere inside it (function-level imports too:
    the CLI imports each stage's code lazily). `module` resolves relative imports."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = module.split(".")[: -n.level]
                parent = ".".join([*base, n.module] if n.module else base)
            else:
                parent = n.module or ""
            found.add(parent)
            # `from cltm.data import commonvoice` imports a module; `from cltm.x import f` a name
            found.update(f"{parent}.{a.name}" for a in n.names
                         if module_file(f"{parent}.{a.name}") is not None)
    return {m for m in found if module_file(m) is not None}


def closure(modules: Iterable[str]) -> set[str]:
    """`modules` and every package module they import, transitively, with the packages whose
    `__init__.py` runs on the way (those that hold code)."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(module)
        todo.extend(imports_of(ast.parse(path.read_text()), module))
    # An empty __init__.py runs nothing: listing it would only add noise to dvc.yaml.
    return {m for m in seen if module_file(m).stat().st_size > 0}


def files(modules: Iterable[str]) -> list[Path]:
    """The files of `modules`, sorted."""
    return sorted(module_file(m) for m in modules)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` without its statement-level string constants (docstrings, and strings used as
    comments): evaluating them computes nothing. A body left empty gets a `pass`, so that the
    tree stays one that `ast.unparse` can render."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [s for s in body if not (isinstance(s, ast.Expr)
                                            and isinstance(s.value, ast.Constant)
                                            and isinstance(s.value.value, str))]
            setattr(node, name, kept or [ast.Pass()])
    return tree


def code_of(path: Path) -> str:
    """What the file at `path` computes: its syntax tree without docstrings, with no positions
    (so comments, blank lines, line breaks and quotes do not enter)."""
    tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def digest(modules: Iterable[str]) -> str:
    """A hash of what `modules` and everything they import compute (`code_of` each file)."""
    h = hashlib.sha256()
    for path in files(closure(modules)):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(b"\0")
        h.update(code_of(path).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
