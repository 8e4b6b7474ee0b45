"""What `dvc.yaml` tells DVC against what the code does: every stage lists exactly the package
files its command runs, and every key it names exists in every shipped params file."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from cltm import cli, sources
from cltm.config import load_config
from cltm.layout import CLTM_FILES, CONTRAST_READS, REPORT_READS
from cltm.train.runner import RESULT_MODULES

REPO = Path(__file__).resolve().parents[1]
PIPELINES = {"root": REPO / "dvc.yaml", "calibration": REPO / "calibration" / "dvc.yaml"}
SHIPPED = [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


#: The `cltm` subcommands by name, each with the cli function it calls.
SUBCOMMANDS = {name: parser.get_default("func") for name, parser in next(
    a for a in cli.build_parser()._actions if a.dest == "command").choices.items()}


def command_modules(command: str) -> set[str]:
    """The package modules `cltm COMMAND` runs: cli.py's own imports, those of the command's
    function and of the cli functions it calls, and everything they import."""
    tree = ast.parse(inspect.getsource(cli))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {m for n in top for m in sources.imports_of(n, "cltm.cli")}
    todo, seen = [SUBCOMMANDS[command].__name__], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        modules |= sources.imports_of(functions[name], "cltm.cli")
        todo += [n.id for n in ast.walk(functions[name])
                 if isinstance(n, ast.Name) and n.id in functions]
    # cli.py itself, but not all of its lazy imports: only the command's
    return sources.closure(modules) | {"cltm.cli"}


def _stages(pipeline: Path) -> dict[str, dict]:
    """Each stage of `pipeline` as written (foreach/matrix templates as one), with its
    command's subcommand."""
    out = {}
    for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
        body = stage.get("do", stage)
        words = shlex.split(body["cmd"])
        command = next(w for w in words[1:] if w in SUBCOMMANDS
                       and words[words.index(w) - 1] != "--params")
        out[name] = {"command": command, "deps": body.get("deps", []),
                     "wdir": pipeline.parent / body.get("wdir", ".")}
    return out


def _listed(stage: dict) -> set[Path]:
    """The package files a stage's deps cover (a folder covers the files under it)."""
    covered = set()
    for dep in stage["deps"]:
        path = (stage["wdir"] / dep).resolve()
        if path.is_dir() and sources.ROOT in (path, *path.parents):
            covered |= set(path.rglob("*.py"))
        elif path.suffix == ".py":
            covered.add(path)
    return covered


CASES = [(p, name) for p, path in PIPELINES.items() for name in _stages(path)]


@pytest.mark.parametrize("pipeline,stage", CASES)
def test_a_stage_lists_exactly_the_code_it_runs(pipeline, stage):
    s = _stages(PIPELINES[pipeline])[stage]
    runs = set(sources.files(command_modules(s["command"])))
    listed = _listed(s)
    rel = lambda paths: sorted(str(p.relative_to(REPO)) for p in paths)  # noqa: E731
    assert rel(runs - listed) == [], f"{stage} runs code its deps do not list"
    assert rel(listed - runs) == [], f"{stage} lists code it does not run"


def test_the_run_hash_covers_the_code_the_grid_stage_lists():
    grid = _stages(PIPELINES["root"])["grid"]
    hashed = set(sources.files(sources.closure(RESULT_MODULES)))
    assert hashed <= _listed(grid)
    # and every file that runs a run: the worker, the recipes, the data it reads
    names = {p.name for p in hashed}
    assert {"worker.py", "loop.py", "model.py", "pack.py", "grid.py"} <= names


#: Every module a run's hash covers. A new import into the worker's closure puts a module's
#: code into every run's hash: this list makes that a visible decision.
HASHED = ["cltm", "cltm.data.pack", "cltm.errors", "cltm.layout", "cltm.tasks",
          "cltm.tasks.base", "cltm.train.fused", "cltm.train.grid", "cltm.train.loop",
          "cltm.train.model", "cltm.train.worker"]


def test_the_run_hash_covers_a_pinned_list_of_modules():
    assert sorted(sources.closure(RESULT_MODULES, loaded=False)) == HASHED


def test_a_run_hash_covers_its_own_task_module_and_no_other(tmp_path, monkeypatch):
    root = _copy_package(tmp_path, monkeypatch)
    gender, speaker = (sources.task_digest(f"cltm.tasks.{t}") for t in ("gender", "speaker"))
    path = root / "tasks" / "speaker.py"
    path.write_text(path.read_text().replace("CHANCE_AUC = 0.5", "CHANCE_AUC = 0.6"))
    assert sources.task_digest("cltm.tasks.gender") == gender
    assert sources.task_digest("cltm.tasks.speaker") != speaker
    # a task module outside the package: its own file, and what it imports of the package
    toy = sources.task_digest("tests.toy_task")
    subsets = root / "data" / "subsets.py"
    subsets.write_text(subsets.read_text() + "\n_CHANGED = 1\n")
    assert sources.task_digest("tests.toy_task") != toy


def _copy_package(tmp_path, monkeypatch):
    root = tmp_path / "cltm"
    shutil.copytree(sources.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "ROOT", root)
    return root


def test_comments_docstrings_and_formatting_leave_the_run_hash_and_code_changes_do_not(
        tmp_path, monkeypatch):
    root = _copy_package(tmp_path, monkeypatch)
    before = sources.digest(RESULT_MODULES)
    for module in HASHED:
        path = sources.module_file(module)
        text = path.read_text()
        if text.lstrip().startswith('"""'):  # the module's docstring, reworded
            text = text.replace('"""', '"""A reworded docstring.\n\n', 1)
        # a comment, blank lines, a docstring added to a def, a line joined differently
        text = "# a comment\n\n\n" + text + "\n# trailing comment\n"
        text = re.sub(r"^(def [^\n]*:\n)(    )", r'\1    """Documented."""\n\2', text,
                      count=1, flags=re.M)
        path.write_text(text)
        assert sources.digest(RESULT_MODULES) == before, module
    worker = root / "train" / "worker.py"
    worker.write_text(worker.read_text() + "\n_CHANGED = 1\n")
    assert sources.digest(RESULT_MODULES) != before
    fused = root / "train" / "fused.py"
    worker.write_text(worker.read_text().replace("\n_CHANGED = 1\n", ""))
    assert sources.digest(RESULT_MODULES) == before
    fused.write_text(fused.read_text().replace("SCALE_GROWTH, SCALE_BACKOFF", "SCALE_BACKOFF, "
                                               "SCALE_GROWTH", 1))
    assert sources.digest(RESULT_MODULES) != before


def test_a_module_outside_the_closure_does_not_enter_the_run_hash(tmp_path, monkeypatch):
    root = _copy_package(tmp_path, monkeypatch)
    before = sources.digest(RESULT_MODULES)
    subsets = root / "data" / "subsets.py"
    subsets.write_text(subsets.read_text() + "\nX = 1\n")
    assert sources.digest(RESULT_MODULES) == before


def test_the_dependency_check_notices_a_missing_module(tmp_path):
    s = _stages(PIPELINES["root"])["grid"]
    runs = set(sources.files(command_modules(s["command"])))
    dropped = {**s, "deps": [d for d in s["deps"] if not d.endswith("pack.py")]}
    assert runs - _listed(dropped) == {sources.ROOT / "data" / "pack.py"}


def _keys(pipeline: Path) -> set[str]:
    """The params keys a pipeline names: in `params:` lists and in ${...} templates."""
    import re

    text = pipeline.read_text()
    named = set(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", text)) - {"item", "item.variant",
                                                                  "item.task", "item.first",
                                                                  "item.second", "key"}
    for stage in yaml.safe_load(text)["stages"].values():
        for entry in stage.get("do", stage).get("params", []):
            if isinstance(entry, str):
                named.add(entry)
    return {k for k in named if "${" not in k}


def _has(raw: dict, key: str) -> bool:
    node = raw
    for part in key.split("."):
        if "${" in part:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("params", SHIPPED, ids=lambda p: p.name)
def test_every_key_the_root_pipeline_names_is_in_every_shipped_config(params):
    raw = yaml.safe_load(params.read_text())
    keys = {k.replace("${item}", "gender") for k in _keys(PIPELINES["root"])}
    missing = sorted(k for k in keys if not _has(raw, k))
    assert missing == []


@pytest.mark.parametrize("params", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_complete(params, tmp_path):
    # load_config has no defaults: a key left out is an error naming it
    config = load_config(params) if params.name == "params.yaml" else None
    if config is None:
        raw = yaml.safe_load(params.read_text())
        raw["data"]["commonvoice"]["root"] = str(tmp_path)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        config = load_config(path)
    assert config.data.languages


def _paths(entries: list) -> list[str]:
    """The paths of a deps/outs/metrics/plots list (entries are strings or {path: options})."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def test_the_cltm_stage_declares_exactly_the_files_its_layout_names():
    stage = yaml.safe_load(PIPELINES["root"].read_text())["stages"]["cltm"]["do"]
    declared = [p for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key))]
    assert sorted(p.removeprefix("metrics/tasks/${key}/") for p in declared) == sorted(
        CLTM_FILES)


def test_the_contrast_and_report_stages_declare_every_file_they_read():
    stages = yaml.safe_load(PIPELINES["root"].read_text())["stages"]
    contrast = set(_paths(stages["contrast"]["do"]["deps"]))
    assert {f"metrics/tasks/${{item.{t}}}/{f}" for t in ("first", "second")
            for f in CONTRAST_READS} <= contrast
    # the report reads whatever tasks params names: the folders every task stage writes into
    cltm = stages["cltm"]["do"]
    written = {p for key in ("outs", "metrics", "plots") for p in _paths(cltm.get(key))}
    assert {f"metrics/tasks/${{key}}/{f}" for f in REPORT_READS} <= written
    assert {"metrics/tasks", "metrics/curves", "metrics/contrasts"} <= set(
        _paths(stages["report"]["deps"]))
