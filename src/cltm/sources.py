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
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from cltm.errors import CltmError

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
    for n in _walk_run(node):
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


#: The task loader imports a task module by the name its params block gives: code that reaches
#: the loader can run any task module of the package.
TASK_LOADER = "cltm.tasks.base"
TASK_PACKAGE = "cltm.tasks"


def task_modules() -> list[str]:
    """The task modules the package holds (cltm.tasks.*, the loader aside)."""
    folder = ROOT / "tasks"
    return sorted(f"{TASK_PACKAGE}.{p.stem}" for p in folder.glob("*.py")
                  if p.stem != "__init__" and f"{TASK_PACKAGE}.{p.stem}" != TASK_LOADER)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_run(node: ast.AST):
    """ast.walk, less the bodies of `if TYPE_CHECKING:` (imports for annotations alone, which
    never run)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if _type_checking(n):
            todo.extend(n.orelse)
            continue
        todo.extend(ast.iter_child_nodes(n))


def closure(modules: Iterable[str], loaded: bool = True) -> set[str]:
    """`modules` and every package module they import, transitively, with the packages whose
    `__init__.py` runs on the way (those that hold code). `loaded`: count the task modules as
    imported by the task loader (what a stage may run); a run's hash counts only its own
    task's module (task_digest)."""
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
        if loaded and module == TASK_LOADER:
            todo.extend(task_modules())
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
    """A hash of what `modules` and everything they import compute (`code_of` each file),
    other task modules than theirs left out."""
    h = hashlib.sha256()
    for path in files(closure(modules, loaded=False)):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(b"\0")
        h.update(code_of(path).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def task_digest(module: str) -> str:
    """A hash of what task module `module` computes: with what it imports of the package where
    it is one of the package's, else its own file (a task kept outside the package) and the
    package modules it imports."""
    if module_file(module) is not None:
        return digest([module])
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise CltmError(f"task module {module!r} cannot be found")
    path = Path(spec.origin)
    inside = imports_of(ast.parse(path.read_text()), module)
    h = hashlib.sha256(code_of(path).encode())
    h.update(digest(inside).encode())
    return h.hexdigest()[:16]
