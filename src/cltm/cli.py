"""The `cltm` command: one subcommand per pipeline stage, each a thin call into the package.

`dvc.yaml` calls these; a user can run them by hand with the same effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from cltm.config import DEFAULT_PARAMS, Config, load_config
from cltm.errors import CltmError
from cltm.layout import FAMILIES, TASKS

log = logging.getLogger("cltm")


def _demo_corpus(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import demo

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    if config.data.source != "demo":
        # The stage exists in every pipeline; with a real release it only leaves a note, so that
        # `dvc repro` spends no minutes generating a corpus nobody reads.
        out.mkdir(parents=True)
        (out / "README.txt").write_text(
            "Not generated: data.source is 'commonvoice', so the pipeline reads "
            f"{config.data.commonvoice.root}.\n")
        log.info("data.source is commonvoice: demo corpus skipped")
        return
    # demo.* are DemoSpec's fields by name, but for null_control (a key that says what it is)
    settings = dataclasses.asdict(config.demo)
    spec = demo.DemoSpec(languages=tuple(config.data.languages),
                         null=settings.pop("null_control"), **settings)
    demo.write_demo_corpus(out, spec, workers=config.data.workers, progress=not args.no_progress)
    log.info("demo corpus written to %s", out)


def _metadata(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import commonvoice

    for locale in args.locale or config.data.languages:
        path = commonvoice.write_metadata(Path(args.root), locale, Path(args.out))
        log.info("%s: metadata table written to %s", locale, path)


def _pretrain(args: argparse.Namespace, config: Config) -> None:
    p = config.pretrain
    out, metrics = Path(args.out), Path(args.metrics)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    if not p.enabled:
        (out / "README.txt").write_text(
            f"Not pretrained: pretrain.enabled is false; fine-tuning loads "
            f"{config.model.name_or_path}.\n")
        metrics.write_text('{"enabled": false}\n')
        log.info("pretrain.enabled is false: nothing to pretrain")
        return
    if Path(config.model.name_or_path).resolve() != out.resolve():
        raise CltmError(f"pretrain.enabled is true but model.name_or_path "
                        f"({config.model.name_or_path}) is not the pretrained encoder {out}: "
                        f"set model.name_or_path: {args.out}, or pretrain.enabled: false")
    from cltm.train.pretrain import PretrainSettings, run_pretrain

    settings = PretrainSettings(
        architecture=p.architecture, clusters=p.clusters, epochs=p.epochs,
        crop_seconds=p.crop_seconds, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
        threads=p.threads)
    summary = run_pretrain(Path(args.corpus), Path(args.metadata), config.data.languages, out,
                           settings, workers=config.data.workers,
                           progress=not args.no_progress)
    metrics.write_text(json.dumps(
        {"enabled": True, **{k: v for k, v in summary.items() if k != "loss_per_epoch"}},
        indent=2) + "\n")


def _subsets(args: argparse.Namespace, config: Config) -> None:
    from cltm.data.build import build_subsets

    build_subsets(config, args.task, Path(args.out), Path(args.metadata),
                  curve_choice=Path(args.curve) if args.curve else None,
                  progress=not args.no_progress)


def _grid(args: argparse.Namespace, config: Config) -> None:
    from cltm.train.stage import run_grid

    run_grid(config, args.task, Path(args.subsets), Path(args.runs), Path(args.models),
             progress=not args.no_progress)


def _curve(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import curve_disabled, run_curve_analysis

    task, data, runs, metrics = args.task, Path(args.data), Path(args.runs), Path(args.metrics)
    if not config.curve.enabled:
        # The stage exists in every pipeline (subsets reads its choice); off, it only
        # leaves notes. The run store is kept: turning the curve on again resumes it.
        for d in (data, runs):
            d.mkdir(parents=True, exist_ok=True)
            (d / "README.txt").write_text("curve.enabled is false: no learning curve.\n")
        curve_disabled(task, metrics)
        log.info("curve.enabled is false: no %s learning curve", task)
        return
    from cltm.data.build import build_curve_subsets
    from cltm.train.stage import run_curve

    (data / "README.txt").unlink(missing_ok=True)
    build_curve_subsets(config, task, data, Path(args.metadata), progress=not args.no_progress)
    run_curve(config, task, data, runs, progress=not args.no_progress)
    run_curve_analysis(config, task, runs, metrics)


def _geometry(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import run_geometry

    run_geometry(config, Path(args.runs), metrics_dir=Path(args.metrics))


def _gaps(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import run_gaps

    run_gaps(config, args.task, Path(args.runs), families=_families(config, args.corpus),
             metrics_dir=Path(args.metrics))


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
    from cltm.train.stage import plan

    for row in plan(config, Path(args.subsets), Path(args.runs)):
        left = "?" if row["left"] is None else row["left"]
        pace = "no runs timed yet" if row["s_per_run"] is None else (
            f"{row['s_per_run']:.2f} s a run, about {row['eta_h']:.2f} h left")
        note = f" ({row['note']})" if row["note"] else ""
        print(f"{row['task']:8s} {row['runs']:6d} runs, {row['done']:6d} done, {left} to run; "
              f"{pace}{note}")


def _cltm(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.stage import run_cltm

    a = config.analysis
    run_cltm(
        args.task, Path(args.runs), Path(args.out),
        family_level=a.family_level, highlight=a.highlight_languages,
        families_csv=_families_csv(config, args.corpus),
        fdr=a.fdr, bootstrap=a.bootstrap, ci_level=a.ci_level,
        permutations=a.permutations, stats_seed=a.stats_seed, pair_seeds=a.pair_seeds,
        top_k=a.top_k,
    )


def _compare(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.compare import run_compare

    a = config.analysis
    run_compare(Path(args.a), Path(args.b), Path(args.out), labels=(args.label_a, args.label_b),
                families=_families(config, args.corpus), fdr=a.fdr, bootstrap=a.bootstrap,
                ci_level=a.ci_level, stats_seed=a.stats_seed, pair_seeds=a.pair_seeds)


def _donors(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.donors import run_donors

    a = config.analysis
    print(run_donors(args.target, Path(args.matrix or args.runs), task=args.task,
                     families=_families(config, args.corpus),
                     fdr=a.fdr, bootstrap=a.bootstrap, ci_level=a.ci_level, top_k=a.top_k,
                     stats_seed=a.stats_seed, pair_seeds=a.pair_seeds))


COMPARE_EPILOG = """\
A and B are run-store directories (as metrics/runs/gender, holding runs.jsonl): two tasks of one
result (metrics/runs/gender metrics/runs/speaker) or two variants of one task. A store of another
git revision or DVC experiment is brought back first and passed as a directory, e.g.
  dvc get . metrics/runs/gender --rev OTHER -o /tmp/gender-OTHER
or from a `git worktree add /tmp/other OTHER` after `dvc pull` there. Languages present in only
one store are named and left out. The intervals use analysis.bootstrap, ci_level, fdr,
stats_seed and pair_seeds of --params."""


def _report(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.report import run_report

    demo = config.data.source == "demo"
    run_report(Path(args.metrics), Path(args.out), null_control=demo and config.demo.null_control,
               planted=demo, contrast=Path(args.contrast),
               contrast_figure=Path(args.contrast_figure))


def _contrast(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.contrast import run_contrast

    run_contrast(Path(args.metrics), Path(args.runs), Path(args.out), Path(args.figure))


def _calibration_params(args: argparse.Namespace, config: Config) -> None:
    import yaml

    from cltm.config import load_calibration, variant_params

    raw = yaml.safe_load(Path(args.params).read_text())
    params = variant_params(raw, load_calibration(args.calibration), args.variant,
                            corpus=args.corpus, encoder=args.encoder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(params, sort_keys=False))


def _calibration_summary(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.calibration import variant_summary
    from cltm.config import load_calibration, variant_strength

    cal = load_calibration(args.calibration)
    v = cal.variants[args.variant]
    summary = variant_summary(
        Path(args.metrics), Path(args.runs), _families_csv(config, args.corpus), args.variant,
        strength=variant_strength(cal, args.variant, config.demo.family_trait_strength),
        held_out=v.held_out, exchangeable=v.exchangeable)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


def _calibration_report(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.calibration import dose_growth, summarize
    from cltm.config import load_calibration

    cal = load_calibration(args.calibration)
    summaries, runs = Path(args.summaries), Path(args.runs)
    missing = [n for n in cal.variants if not (summaries / f"{n}.json").is_file()]
    if missing:
        raise CltmError(f"calibration variants not run yet: {', '.join(missing)}; run "
                        "`dvc repro` in calibration/")
    variants = [json.loads((summaries / f"{n}.json").read_text()) for n in cal.variants]
    a = config.analysis
    growth = dose_growth(runs, variants, replicates=a.bootstrap, ci_level=a.ci_level,
                         stats_seed=a.stats_seed, pair_seeds=a.pair_seeds)
    result = summarize(Path(args.out), variants, config.demo.family_trait_strength, growth)
    failed = [k for k, v in result["checks"].items()
              if v is False or (isinstance(v, dict) and False in v.values())]
    log.info("calibration report written to %s; checks failed: %s", args.out,
             ", ".join(failed) or "none")


def _diagnostics(args: argparse.Namespace) -> None:
    from cltm.analysis.stage import format_table, run_diagnostics

    result = run_diagnostics(Path(args.matrix), Path(args.se) if args.se else None,
                             args.family_level, Path(args.json) if args.json else None,
                             families_csv=Path(args.families) if args.families else None)
    print(format_table(result))


def _languages(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import commonvoice, subsets
    from cltm.data.build import resolve_n

    root = Path(args.root or config.data.commonvoice.root)
    locales = args.locales or config.data.languages
    table = commonvoice.read_release(root, locales)
    g, s = config.tasks.gender, config.tasks.speaker
    curve = {t: Path(c) if c else None for t, c in (("gender", args.gender_curve),
                                                     ("speaker", args.speaker_curve))}
    report = subsets.language_capacity(
        table, locales, gender_N=resolve_n(config, "gender", curve["gender"]),
        gender_cps=g.clips_per_speaker,
        speaker_N=resolve_n(config, "speaker", curve["speaker"]),
        speaker_cps=s.clips_per_speaker, pool=config.data.commonvoice.pool,
    )
    print(report.to_string())


def _sub(sub: argparse._SubParsersAction, name: str, help: str,
         func: Callable[[argparse.Namespace, Config], None], *,
         task: bool = False, **paths: str) -> argparse.ArgumentParser:
    """A subcommand; `task`: it runs one task (--task); `paths`: its required path arguments
    (--NAME PATH), which dvc.yaml gives: the code holds no path of its own."""
    p = sub.add_parser(name, help=help)
    if task:
        p.add_argument("--task", choices=TASKS, required=True)
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
         runs="the curve's run store", metrics="the metrics folder (curves/<task>[.json])")
    _sub(sub, "geometry", "speaker embedding geometry of every cross run", _geometry,
         runs="the speaker run store", metrics="the metrics folder (speaker/geometry[.json])")
    _sub(sub, "gaps", "performance gap and linguistic gap (CKA) of a task", _gaps, task=True,
         runs="the task's run store", metrics="the metrics folder (<task>/gaps[.json])",
         corpus="the corpus folder (the demo's planted families)")
    _sub(sub, "plan", "runs per task, how many are done, the time left", _plan,
         subsets="the folder of the subsets folders (data/subsets)",
         runs="the folder of the run stores (metrics/runs)")
    _sub(sub, "cltm", "the CLTM of a task, its standard errors, diagnostics, plots", _cltm,
         task=True, runs="the task's run store", out="the task's metrics folder",
         corpus="the corpus folder (the demo's planted families)")
    _sub(sub, "contrast", "the headline contrast: speaker − gender with the interval of the "
         "difference", _contrast, metrics="the metrics folder (<task>/ of the cltm stages)",
         runs="the folder of the run stores", out="contrast.json", figure="its figure")
    _sub(sub, "report", "write the Markdown report", _report,
         metrics="the metrics folder", contrast="the contrast stage's JSON",
         contrast_figure="the contrast stage's figure", out="the report")

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
         runs="the folder of the variant's run stores", corpus="the variant's corpus folder",
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
    dn.add_argument("--task", choices=TASKS, help="the task whose runs to read (default: the "
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if getattr(args, "needs_config", True):
            args.func(args, load_config(args.params))
        else:
            args.func(args)
    except CltmError as exc:
        print(f"cltm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
