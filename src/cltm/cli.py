"""The `cltm` command: one subcommand per pipeline stage, each a thin call into the package.

`dvc.yaml` calls these; a user can run them by hand with the same effect.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from cltm import kernels
from cltm.config import DEFAULT_PARAMS, Config, load_config
from cltm.errors import CltmError
from cltm.layout import FAMILIES

log = logging.getLogger("cltm")


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def _demo_corpus(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import demo_corpus

    demo_corpus.run(config, Path(args.out), _progress(args))


def _metadata(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import metadata

    metadata.run(Path(args.root), args.locale or config.data.languages, Path(args.out))


def _pretrain(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import pretrain

    pretrain.run(config, Path(args.corpus), Path(args.metadata), Path(args.out),
                 Path(args.metrics), _progress(args))


def _subsets(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import subsets

    subsets.run(config, args.task, Path(args.metadata), Path(args.curve) if args.curve else None,
                Path(args.out), _progress(args))


def _grid(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import grid

    grid.run(config, args.task, Path(args.subsets), Path(args.runs), Path(args.models),
             _progress(args))


def _curve(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import curve

    curve.run(config, args.task, Path(args.metadata), Path(args.data), Path(args.runs),
              Path(args.out), Path(args.json), _progress(args))


def _geometry(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import geometry

    geometry.run(args.task, config.task(args.task), Path(args.runs), Path(args.cltm),
                 Path(args.out), Path(args.json), config.analysis)


def _gaps(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import gaps

    gaps.run(args.task, Path(args.runs), Path(args.cltm), Path(args.out), Path(args.json),
             _families(config, args.corpus), config.analysis)


def _families_csv(config: Config, corpus: str | None) -> Path | None:
    """The demo corpus's planted families (FAMILIES inside it), where there is one."""
    if config.data.source != "demo" or corpus is None:
        return None
    csv = Path(corpus) / FAMILIES
    return csv if csv.is_file() else None


def _families(config: Config, corpus: str | None) -> dict[str, str]:
    from cltm.analysis.languages import family_map

    return family_map(config.analysis.family_level, _families_csv(config, corpus))


def _plan(args: argparse.Namespace, config: Config) -> None:
    from cltm.train.runner import plan

    for row in plan(config, Path(args.subsets), Path(args.runs)):
        left = "?" if row["left"] is None else row["left"]
        pace = "no runs timed yet" if row["s_per_run"] is None else (
            f"{row['s_per_run']:.2f} s a run, about {row['eta_h']:.2f} h left")
        note = f" ({row['note']})" if row["note"] else ""
        print(f"{row['task']:8s} {row['runs']:6d} runs, {row['done']:6d} done, {left} to run; "
              f"{pace}{note}")


def _cltm(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import cltm

    cltm.run_cltm(args.task, config.task(args.task), Path(args.runs), Path(args.out),
                  config.analysis, _families_csv(config, args.corpus))


def _compare(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages.compare import run_compare

    run_compare(Path(args.a), Path(args.b), Path(args.out), (args.label_a, args.label_b),
                _families(config, args.corpus), config.analysis)


def _donors(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages.donors import run_donors

    print(run_donors(args.target, Path(args.matrix or args.runs), args.task,
                     _families(config, args.corpus), config.analysis))


COMPARE_EPILOG = """\
A and B are run-store directories (as metrics/runs/gender, holding runs.jsonl): two tasks of one
result (metrics/runs/gender metrics/runs/speaker) or two variants of one task. A store of another
git revision or DVC experiment is brought back first and passed as a directory, e.g.
  dvc get . metrics/runs/gender --rev OTHER -o /tmp/gender-OTHER
or from a `git worktree add /tmp/other OTHER` after `dvc pull` there. Languages present in only
one store are named and left out. The intervals use analysis.bootstrap, ci_level, fdr,
stats_seed and pair_seeds of --params."""


def _report(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages.report import run_report

    demo = config.data.source == "demo"
    run_report(Path(args.tasks), Path(args.curves), Path(args.contrasts), Path(args.out),
               {t: config.task(t) for t in config.tasks}, config.analysis.contrasts,
               null_control=demo and config.demo.null_control, planted=demo)


def _contrast(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages.contrast import run_contrast

    config.task(args.first), config.task(args.second)  # both of the params' tasks
    run_contrast(args.first, args.second, Path(args.metrics), Path(args.runs), Path(args.out),
                 Path(args.figure))


def _calibration_params(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import calibration

    calibration.write_params(Path(args.params), Path(args.calibration), args.variant,
                             corpus=args.corpus, encoder=args.encoder, out=Path(args.out))


def _calibration_summary(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import calibration

    calibration.write_summary(config, Path(args.calibration), args.variant,
                              metrics=Path(args.metrics), contrast=Path(args.contrast),
                              families_csv=_families_csv(config, args.corpus),
                              out=Path(args.out))


def _calibration_report(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages import calibration

    calibration.write_report(config, Path(args.calibration), summaries=Path(args.summaries),
                             runs=Path(args.runs), out=Path(args.out))


def _diagnostics(args: argparse.Namespace) -> None:
    from cltm.analysis.diagnostics import format_table
    from cltm.stages.diagnostics import run_diagnostics

    result = run_diagnostics(Path(args.matrix), Path(args.se) if args.se else None,
                             args.family_level, Path(args.json) if args.json else None,
                             families_csv=Path(args.families) if args.families else None,
                             # Any CLTM, no params read: the family permutation test is the
                             # cltm stage's, so none here.
                             permutations=0, stats_seed=0)
    print(format_table(result))


def _languages(args: argparse.Namespace, config: Config) -> None:
    from cltm.stages.languages import capacity

    curves = {"gender": args.gender_curve, "speaker": args.speaker_curve}
    print(capacity(config, Path(args.root or config.data.commonvoice.root),
                   args.locales or config.data.languages,
                   {t: Path(c) if c else None for t, c in curves.items()}).to_string())


def _sub(sub: argparse._SubParsersAction, name: str, help: str,
         func: Callable[[argparse.Namespace, Config], None], *,
         task: bool = False, **paths: str) -> argparse.ArgumentParser:
    """A subcommand; `task`: it runs one task (--task); `paths`: its required path arguments
    (--NAME PATH), which dvc.yaml gives: the code holds no path of its own."""
    p = sub.add_parser(name, help=help)
    if task:
        p.add_argument("--task", required=True, help="a task of the params (tasks.<TASK>)")
    for arg, text in paths.items():
        p.add_argument(f"--{arg.replace('_', '-')}", required=True, metavar="PATH", help=text)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cltm", description=__doc__)
    p.add_argument("--params", default=str(DEFAULT_PARAMS),
                   help="params file (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    _sub(sub, "demo-corpus", "write the eSpeak NG demo corpus in Common Voice layout",
         _demo_corpus, out="the corpus folder (a note only, with data.source: commonvoice)")
    md = _sub(sub, "metadata", "read locales' TSVs into one table each (<out>/<locale>.parquet)",
              _metadata, root="the release root (data.commonvoice.root)",
              out="folder of the tables")
    md.add_argument("--locale", action="append",
                    help="a locale to read (repeatable; default: every one of data.languages)")
    _sub(sub, "pretrain", "pretrain the demo's small HuBERT on the corpus", _pretrain,
         corpus="the release root", metadata="the metadata stage's folder",
         out="the encoder folder (a note only, with pretrain.enabled: false)",
         metrics="the summary JSON")
    sb = _sub(sub, "subsets", "select D, D' and evaluation clips; pack their audio", _subsets,
              task=True, metadata="the metadata stage's folder", out="the task's subsets folder")
    sb.add_argument("--curve", metavar="PATH",
                    help="the curve stage's choice (JSON), read when tasks.<task>.N is auto")
    _sub(sub, "grid", "train and score every run of a task's grid (resumable)", _grid,
         task=True, subsets="the task's subsets folder", runs="the task's run store",
         models="the task's checkpoints folder")
    _sub(sub, "curve", "learning curves over curve.N_grid; choose N (§2.2)", _curve,
         task=True, metadata="the metadata stage's folder", data="the curve's subsets folder",
         runs="the curve's run store", out="the folder of the curve's tables and plots",
         json="the curve's choice (JSON)")
    _sub(sub, "geometry", "embedding geometry of every cross run (a task whose runs embed "
         "donor clips: speaker)", _geometry, task=True,
         runs="the task's run store", cltm="the task's CLTM (cltm.csv)",
         out="the folder of the distances and plots", json="the summary (JSON)")
    _sub(sub, "gaps", "performance gap and linguistic gap (CKA) of a task", _gaps, task=True,
         runs="the task's run store", cltm="the task's CLTM (cltm.csv)",
         out="the folder of the CKA matrix and plots", json="the summary (JSON)",
         corpus="the corpus folder (the demo's planted families)")
    _sub(sub, "plan", "runs per task, how many are done, the time left", _plan,
         subsets="the folder of the subsets folders (data/subsets)",
         runs="the folder of the run stores (metrics/runs)")
    _sub(sub, "cltm", "the CLTM of a task, its standard errors, diagnostics, plots", _cltm,
         task=True, runs="the task's run store", out="the task's metrics folder",
         corpus="the corpus folder (the demo's planted families)")
    ct = _sub(sub, "contrast", "two tasks' headline diagnostics, second − first, with the "
              "interval of the difference", _contrast,
              metrics="the folder of the cltm stages' <task>/ folders",
              runs="the folder of the run stores", out="the contrast's JSON",
              figure="its figure")
    ct.add_argument("--first", required=True, help="the task subtracted")
    ct.add_argument("--second", required=True, help="the task it is subtracted from")
    _sub(sub, "report", "write the Markdown report", _report,
         tasks="the folder of the cltm stages' <task>/ folders",
         curves="the curve stages' folder", contrasts="the contrast stages' folder",
         out="the report")

    cm = sub.add_parser(
        "compare", help="two results (run stores) side by side: B − A of each diagnostic and "
        "each cell with bootstrap intervals", epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cm.add_argument("a", help="run store of result A (a directory holding runs.jsonl)")
    cm.add_argument("b", help="run store of result B")
    cm.add_argument("--label-a", help="A's name in the outputs (default: the end of its path)")
    cm.add_argument("--label-b", help="B's name in the outputs (default: the end of its path)")
    cm.add_argument("--out", required=True,
                    help="output folder for compare.md, compare.json, compare_cells.csv and "
                    "compare_heatmap.png (e.g. metrics/compare/NAME)")
    cm.add_argument("--corpus", help="a demo corpus folder whose planted families to use")
    cm.set_defaults(func=_compare)

    cal = "the calibration's params (calibration/params.yaml)"
    _sub(sub, "calibration-params", "the params file of one calibration variant",
         _calibration_params, calibration=cal, corpus="the variant's corpus folder",
         encoder="the variant's pretrained encoder folder", out="the variant's params file"
         ).add_argument("--variant", required=True)
    _sub(sub, "calibration-summary", "one calibration variant's summary (JSON)",
         _calibration_summary, calibration=cal, metrics="the variant's metrics folder",
         contrast="the variant's contrast.json", corpus="the variant's corpus folder",
         out="the summary JSON").add_argument("--variant", required=True)
    _sub(sub, "calibration-report", "the calibration table and its checks (report.md, "
         "metrics.json)", _calibration_report, calibration=cal,
         summaries="the folder of the variants' summaries",
         runs="the folder of the variants' work folders (<variant>/runs/<task>)",
         out="the folder for report.md and metrics.json")

    dn = sub.add_parser(
        "donors", help="which donors help a target: its donors ranked by CLTM[target, donor], "
        "with intervals and tests from a run store (point values from a cltm.csv)")
    dn.add_argument("target", help="the target language (a locale of the result)")
    source = dn.add_mutually_exclusive_group(required=True)
    source.add_argument("matrix", nargs="?", help="a CLTM csv (cltm.csv): point values only")
    source.add_argument("--runs", help="a run store (a directory holding runs.jsonl, as "
                        "metrics/runs/gender)")
    dn.add_argument("--task", help="the task whose runs to read (default: the "
                    "store's own runs)")
    dn.add_argument("--corpus", help="a demo corpus folder whose planted families to use")
    dn.set_defaults(func=_donors)

    dg = sub.add_parser("diagnostics",
                        help="the paper's diagnostics of any CLTM in cltm.csv format")
    dg.add_argument("matrix", help="CLTM csv: index column `target`, one column per donor")
    dg.add_argument("--se", help="standard errors, same shape")
    dg.add_argument("--family-level", choices=["family", "genus"], default="genus")
    dg.add_argument("--json", help="also write the diagnostics.json format here")
    dg.add_argument("--families", help="locale,family csv overriding the metadata (demo corpora)")
    dg.set_defaults(func=_diagnostics, needs_config=False)

    lg = sub.add_parser("languages", help="which locales of a release can fill the requests")
    lg.add_argument("--root", help="Common Voice root (default: data.commonvoice.root)")
    lg.add_argument("--gender-curve", help="the gender curve's choice, when tasks.gender.N is auto")
    lg.add_argument("--speaker-curve",
                    help="the speaker curve's choice, when tasks.speaker.N is auto")
    lg.add_argument("locales", nargs="*", help="locales to check (default: data.languages)")
    lg.set_defaults(func=_languages)
    return p


def main(argv: list[str] | None = None) -> int:
    kernels.pin()  # before any stage imports torch: the same bytes on every AVX2 CPU
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if getattr(args, "needs_config", True):
            config = load_config(args.params)
            if getattr(args, "task", None) is not None:
                config.task(args.task)  # an unknown task stops here, naming the params' tasks
            args.func(args, config)
        else:
            args.func(args)
    except CltmError as exc:
        print(f"cltm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
