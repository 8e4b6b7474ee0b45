"""No defaults below the CLI (config.py: "the code holds no defaults"): a setting that params
holds reaches the code from params, so no function below cli.py may fall back to a value of
its own when a caller leaves one out. An AST scan of the analysis, data, train and stages
packages for parameters, dataclass fields and `.get(key, default)` reads (or .pop) named as a
params key that are given a default."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import yaml

from cltm import sources

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILES = ("params.yaml", "configs/paper.yaml", "calibration/params.yaml")
PACKAGES = ("analysis", "data", "train", "stages")

#: Names that are a params key and mean something else where they have a default, and why.
#: (module, qualified name, parameter)
OTHER_MEANING = {
    ("cltm.train.fused", "FusedAdamW.__init__", "eps"):
        "AdamW's epsilon (torch's own value, which the fused optimiser equals), not curve.eps",
    ("cltm.analysis.stats", "seed_cells", "languages"):
        "a store's languages to lay out (None: those it holds), not data.languages",
    ("cltm.analysis.stats", "SeedCells", "seeds"):
        "the seed values a store's cells hold (None: they differ by cell), not train.seeds",
    ("cltm.train.ecapa", "_mean_std", "eps"):
        "a numerical floor under a standard deviation, not curve.eps",
    ("cltm.train.tracking", "write_run", ".get('device')"):
        "the device a run record says it ran on (absent in older records), not train.device",
}
#: Settings of a model that no params block names yet: ECAPA-TDNN's recipe (issue 36) keeps
#: SpeechBrain's values in its dataclass until its task and params block land; then they move
#: to params and these entries go.
PENDING = {
    ("cltm.train.ecapa_recipe", "EcapaSettings", key)
    for key in ("lr", "weight_decay", "batch_size", "epochs", "grad_clip")
}


def params_keys() -> set[str]:
    """The leaf key names of the shipped params files (a mapping's own name is not a leaf)."""
    keys: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value)
                else:
                    keys.add(str(key))

    for name in PARAMS_FILES:
        walk(yaml.safe_load((REPO / name).read_text()))
    return keys


def _module(path: Path, root: Path) -> str:
    return ".".join(("cltm", *path.relative_to(root).with_suffix("").parts))


def _defaults(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.expr]]:
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    yield from ((p.arg, d) for p, d in zip(positional[len(positional) - len(a.defaults):],
                                          a.defaults, strict=True))
    yield from ((p.arg, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
                if d is not None)


def _found_in(tree: ast.AST, keys: set[str]) -> Iterator[tuple[str, str, str]]:
    """(qualified name, parameter, the default's source) in one module's syntax tree."""

    def visit(node: ast.AST, scope: str) -> Iterator[tuple[str, str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                name = f"{scope}{child.name}"
                for field in child.body:  # dataclass fields, class attributes
                    if (isinstance(field, ast.AnnAssign) and field.value is not None
                            and isinstance(field.target, ast.Name) and field.target.id in keys):
                        yield name, field.target.id, ast.unparse(field.value)
                yield from visit(child, f"{name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{scope}{child.name}"
                yield from ((name, arg, ast.unparse(d)) for arg, d in _defaults(child)
                            if arg in keys)
                for call in ast.walk(child):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                            and call.func.attr in ("get", "pop", "setdefault")
                            and len(call.args) == 2
                            and isinstance(call.args[0], ast.Constant)
                            and call.args[0].value in keys):
                        yield (name, f".{call.func.attr}({call.args[0].value!r})",
                               ast.unparse(call.args[1]))
                yield from visit(child, f"{name}.")
            else:
                yield from visit(child, scope)

    yield from visit(tree, "")


def defaults_below_cli(keys: set[str], root: Path = sources.ROOT
                       ) -> list[tuple[str, str, str, str]]:
    """(module, qualified name, parameter, the default's source) for every default given to
    a name in `keys` in the packages below the CLI (`root`: the cltm package folder)."""
    return [(_module(path, root), *hit)
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))
            for hit in _found_in(ast.parse(path.read_text()), keys)]


def test_the_params_keys_are_found():
    keys = params_keys()
    assert {"fdr", "bootstrap", "ci_level", "stats_seed", "pair_seeds", "permutations", "top_k",
            "tau", "z", "eps", "bandwidth", "workers", "init_seed", "pool",
            "max_pairs_per_speaker", "lr", "model_type"} <= keys
    assert "analysis" not in keys and "architecture" not in keys  # mappings, not settings


def test_no_function_below_the_cli_defaults_a_params_setting():
    """Settings travel from params (as config.py's dataclasses or as required arguments): a
    default below the CLI is a second value of a setting, which the params never show."""
    found = [f for f in defaults_below_cli(params_keys())
             if f[:3] not in OTHER_MEANING and f[:3] not in PENDING]
    assert not found, "defaults of params settings below the CLI:\n" + "\n".join(
        f"  {module}: {name}({arg}={default})" for module, name, arg, default in found)


def test_the_scan_finds_a_default(tmp_path):
    """The scan sees a restated default as a parameter, a keyword, a field and a .get read."""
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "x.py").write_text(
        "from dataclasses import dataclass\n"
        "def f(a, fdr=0.05, *, seeds=None, other=1):\n"
        "    return d.get('z', 1.3) + d.pop('eps', 0.1) + d.get('other', 0)\n"
        "@dataclass\nclass S:\n    lr: float = 1e-3\n    other: int = 0\n")
    for package in PACKAGES[1:]:
        (tmp_path / package).mkdir()
    found = defaults_below_cli({"fdr", "seeds", "z", "eps", "lr"}, root=tmp_path)
    assert {(name, arg) for _, name, arg, _ in found} == {
        ("f", "fdr"), ("f", "seeds"), ("f", ".get('z')"), ("f", ".pop('eps')"), ("S", "lr")}
