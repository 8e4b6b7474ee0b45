"""The `cltm` command: one subcommand per pipeline stage, each a thin call into the package.

`dvc.yaml` calls these; a user can run them by hand with the same effect.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from cltm.config import DEFAULT_PARAMS, TASKS, Config, load_config
from cltm.errors import CltmError

log = logging.getLogger("cltm")


def _tasks(args: argparse.Namespace) -> tuple[str, ...]:
    return TASKS if args.task == "all" else (args.task,)


def _demo_corpus(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import demo

    out = Path(args.out or config.demo.out)
    if config.data.source != "demo" and args.out is None:
        # The stage exists in every pipeline; with a real release it only leaves a note, so that
        # `dvc repro` spends no minutes generating a corpus nobody reads.
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "README.txt").write_text(
            "Not generated: data.source is 'commonvoice', so the pipeline reads "
            f"{config.data.commonvoice.root}.\n"
        )
        log.info("data.source is commonvoice: demo corpus skipped")
        return
    spec = demo.DemoSpec(
        languages=tuple(config.data.languages),
        speakers_per_language=config.demo.speakers_per_language,
        clips_per_speaker=config.demo.clips_per_speaker,
        dev_speakers=config.demo.dev_speakers,
        test_speakers=config.demo.test_speakers,
        family_trait_strength=config.demo.family_trait_strength,
        clip_seconds=config.demo.clip_seconds,
        null=config.demo.null_control,
        seed=config.demo.seed,
        gender_shift_semitones=config.demo.gender_shift_semitones,
        gender_pitch_offset=config.demo.gender_pitch_offset,
        speaker_axes_db=config.demo.speaker_axes_db,
        speaker_axes_focus=config.demo.speaker_axes_focus,
        speaker_warp_semitones=config.demo.speaker_warp_semitones,
    )
    if out.exists():
        shutil.rmtree(out)
    demo.write_demo_corpus(out, spec, workers=config.data.workers, progress=not args.no_progress)
    log.info("demo corpus written to %s", out)


def _metadata(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import commonvoice

    locales = args.locale or config.data.languages
    for locale in locales:
        path = commonvoice.write_metadata(config.corpus_root, locale)
        log.info("%s: metadata table written to %s", locale, path)


def _pretrain(args: argparse.Namespace, config: Config) -> None:
    p = config.pretrain
    out = Path(p.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if not p.enabled:
        (out / "README.txt").write_text(
            f"Not pretrained: pretrain.enabled is false; fine-tuning loads "
            f"{config.model.name_or_path}.\n")
        Path("metrics").mkdir(exist_ok=True)
        Path("metrics/pretrain.json").write_text('{"enabled": false}\n')
        log.info("pretrain.enabled is false: nothing to pretrain")
        return
    from cltm.train.pretrain import PretrainSettings, run_pretrain

    settings = PretrainSettings(
        architecture=p.architecture, clusters=p.clusters, epochs=p.epochs,
        crop_seconds=p.crop_seconds, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
        threads=p.threads)
    summary = run_pretrain(config.corpus_root, config.data.languages, out, settings,
                           workers=config.data.workers, progress=not args.no_progress)
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/pretrain.json").write_text(json.dumps(
        {"enabled": True, **{k: v for k, v in summary.items() if k != "loss_per_epoch"}},
        indent=2) + "\n")


def _subsets(args: argparse.Namespace, config: Config) -> None:
    from cltm.data.build import build_subsets

    for task in _tasks(args):
        build_subsets(config, task, progress=not args.no_progress)


def _grid(args: argparse.Namespace, config: Config) -> None:
    from cltm.train.stage import run_grid

    for task in _tasks(args):
        run_grid(config, task, progress=not args.no_progress)


def _curve(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import curve_disabled, run_curve_analysis
    from cltm.train.stage import curve_data_dir, curve_runs_dir

    for task in _tasks(args):
        data, runs = curve_data_dir(task), curve_runs_dir(task)
        if not config.curve.enabled:
            # The stage exists in every pipeline (subsets reads its choice); off, it only
            # leaves notes. The run store is kept: turning the curve on again resumes it.
            for d in (data, runs):
                d.mkdir(parents=True, exist_ok=True)
                (d / "README.txt").write_text("curve.enabled is false: no learning curve.\n")
            curve_disabled(task)
            log.info("curve.enabled is false: no %s learning curve", task)
            continue
        from cltm.data.build import build_curve_subsets
        from cltm.train.stage import run_curve

        (data / "README.txt").unlink(missing_ok=True)
        build_curve_subsets(config, task, data, progress=not args.no_progress)
        run_curve(config, task, progress=not args.no_progress)
        run_curve_analysis(config, task, runs)


def _geometry(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import run_geometry

    run_geometry(config, Path("metrics") / "runs" / "speaker")


def _gaps(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.beyond import run_gaps

    families = _families(config)
    for task in _tasks(args):
        run_gaps(config, task, Path("metrics") / "runs" / task, families=families)


def _families(config: Config) -> dict[str, str]:
    from cltm.analysis.languages import family_map

    csv = Path(config.demo.out) / "families.csv" if config.data.source == "demo" else None
    return family_map(config.analysis.family_level, csv if csv and csv.is_file() else None)


def _plan(args: argparse.Namespace, config: Config) -> None:
    from cltm.train.stage import plan

    for row in plan(config):
        left = "?" if row["left"] is None else row["left"]
        pace = "no runs timed yet" if row["s_per_run"] is None else (
            f"{row['s_per_run']:.2f} s a run, about {row['eta_h']:.2f} h left")
        note = f" ({row['note']})" if row["note"] else ""
        print(f"{row['task']:8s} {row['runs']:6d} runs, {row['done']:6d} done, {left} to run; "
              f"{pace}{note}")


def _cltm(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.stage import run_cltm

    families = Path(config.demo.out) / "families.csv" if config.data.source == "demo" else None
    a = config.analysis
    for task in _tasks(args):
        run_cltm(
            task, Path("metrics") / "runs" / task, Path("metrics") / task,
            family_level=config.analysis.family_level,
            highlight=config.analysis.highlight_languages, families_csv=families,
            fdr=a.fdr, bootstrap=a.bootstrap, ci_level=a.ci_level,
            permutations=a.permutations, stats_seed=a.stats_seed, pair_seeds=a.pair_seeds,
        )


def _compare(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.compare import run_compare

    a = config.analysis
    run_compare(Path(args.a), Path(args.b), Path(args.out), labels=(args.label_a, args.label_b),
                families=_families(config), fdr=a.fdr, bootstrap=a.bootstrap,
                ci_level=a.ci_level, stats_seed=a.stats_seed, pair_seeds=a.pair_seeds)


def _donors(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.donors import run_donors

    a = config.analysis
    source = Path(args.matrix or args.runs or Path("metrics") / "runs" / (args.task or "gender"))
    print(run_donors(args.target, source, task=args.task, families=_families(config),
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
    # The calibration's table is read, not declared as a dependency in dvc.yaml: declared, it
    # would make every `dvc repro` run the hour-long calibration pipeline first.
    run_report(Path("metrics"), Path("metrics") / "report.md",
               null_control=demo and config.demo.null_control, planted=demo,
               calibration=Path(config.calibration.out) / "metrics.json" if demo else None)


def _strength(config: Config, name: str) -> float:
    v = config.calibration.variants[name]
    if v.exchangeable:
        return 0.0  # nothing is planted in a null-control corpus, whatever the strength
    return (config.demo.family_trait_strength if v.family_trait_strength is None
            else v.family_trait_strength)


def _calibrate(args: argparse.Namespace, config: Config) -> None:
    from cltm import calibrate
    from cltm.analysis.calibration import variant_summary

    work = calibrate.run_variant(Path(args.params), args.variant, progress=not args.no_progress)
    out = Path(config.calibration.out) / calibrate.METRICS
    out.mkdir(parents=True, exist_ok=True)
    v = config.calibration.variants[args.variant]
    summary = variant_summary(work, args.variant, strength=_strength(config, args.variant),
                              held_out=v.held_out, exchangeable=v.exchangeable)
    (out / f"{args.variant}.json").write_text(json.dumps(summary, indent=2) + "\n")


def _calibrate_report(args: argparse.Namespace, config: Config) -> None:
    from cltm.analysis.calibration import dose_growth, summarize
    from cltm.calibrate import METRICS, WORK

    out = Path(config.calibration.out)
    missing = [n for n in config.calibration.variants
               if not (out / METRICS / f"{n}.json").is_file()]
    if missing:
        raise CltmError(f"calibration variants not run yet: {', '.join(missing)}; run "
                        "`dvc repro calibration/dvc.yaml` (or `cltm calibrate --variant NAME`)")
    variants = [json.loads((out / METRICS / f"{n}.json").read_text())
                for n in config.calibration.variants]
    a = config.analysis
    growth = dose_growth(out / WORK, variants, replicates=a.bootstrap, ci_level=a.ci_level,
                         stats_seed=a.stats_seed, pair_seeds=a.pair_seeds)
    result = summarize(out, variants, config.demo.family_trait_strength, growth)
    failed = [k for k, v in result["checks"].items()
              if v is False or (isinstance(v, dict) and False in v.values())]
    log.info("calibration report written to %s; checks failed: %s", out / "report.md",
             ", ".join(failed) or "none")


def _diagnostics(args: argparse.Namespace) -> None:
    from cltm.analysis.stage import format_table, run_diagnostics

    result = run_diagnostics(Path(args.matrix), Path(args.se) if args.se else None,
                             args.family_level, Path(args.json) if args.json else None,
                             families_csv=Path(args.families) if args.families else None)
    print(format_table(result))


def _languages(args: argparse.Namespace, config: Config) -> None:
    from cltm.data import commonvoice, subsets

    root = Path(args.root or config.data.commonvoice.root)
    locales = args.locales or config.data.languages
    table = commonvoice.read_release(root, locales)
    from cltm.data.build import resolve_n

    g, s = config.tasks.gender, config.tasks.speaker
    report = subsets.language_capacity(
        table, locales, gender_N=resolve_n(config, "gender"), gender_cps=g.clips_per_speaker,
        speaker_N=resolve_n(config, "speaker"), speaker_cps=s.clips_per_speaker,
        pool=config.data.commonvoice.pool,
    )
    print(report.to_string())


def _task_command(sub: argparse._SubParsersAction, name: str, help: str,
                  func: Callable[[argparse.Namespace, Config], None]) -> None:
    """A stage subcommand that runs per task: --task gender, speaker or all."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--task", choices=[*TASKS, "all"], required=True)
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cltm", description=__doc__)
    p.add_argument("--params", default=str(DEFAULT_PARAMS),
                   help="params file (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-corpus", help="write the eSpeak NG demo corpus in Common Voice layout")
    d.add_argument("--out", help="output directory (default: demo.out)")
    d.set_defaults(func=_demo_corpus)

    md = sub.add_parser("metadata", help="read a locale's TSVs into data/metadata/<locale>.parquet")
    md.add_argument("--locale", action="append",
                    help="a locale to read (repeatable; default: every one of data.languages)")
    md.set_defaults(func=_metadata)

    pt = sub.add_parser("pretrain", help="pretrain the demo's small HuBERT on the corpus")
    pt.set_defaults(func=_pretrain)

    _task_command(sub, "subsets", "select D, D' and evaluation clips; pack their audio", _subsets)

    _task_command(sub, "grid", "train and score every run of a task's grid (resumable)", _grid)

    _task_command(sub, "curve", "learning curves over curve.N_grid; choose N (§2.2)", _curve)

    ge = sub.add_parser("geometry", help="speaker embedding geometry of every cross run")
    ge.set_defaults(func=_geometry)

    _task_command(sub, "gaps", "performance gap and linguistic gap (CKA) of a task", _gaps)

    pl = sub.add_parser("plan", help="runs per task, how many are done, the time left")
    pl.set_defaults(func=_plan)

    _task_command(sub, "cltm", "the CLTM of a task, its standard errors, diagnostics, plots", _cltm)

    r = sub.add_parser("report", help="write metrics/report.md")
    r.set_defaults(func=_report)

    cm = sub.add_parser(
        "compare", help="two results (run stores) side by side: B − A of each diagnostic and "
        "each cell with bootstrap intervals", epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cm.add_argument("a", help="run store of result A (a directory holding runs.jsonl)")
    cm.add_argument("b", help="run store of result B")
    cm.add_argument("--label-a", help="A's name in the outputs (default: the end of its path)")
    cm.add_argument("--label-b", help="B's name in the outputs (default: the end of its path)")
    cm.add_argument("--out", default="metrics/compare",
                    help="output folder for compare.md, compare.json, compare_cells.csv and "
                    "compare_heatmap.png (default: %(default)s)")
    cm.set_defaults(func=_compare)

    dn = sub.add_parser(
        "donors", help="which donors help a target: its donors ranked by CLTM[target, donor], "
        "with intervals and tests from a run store (point values from a cltm.csv)")
    dn.add_argument("target", help="the target language (a locale of the result)")
    source = dn.add_mutually_exclusive_group()
    source.add_argument("matrix", nargs="?", help="a CLTM csv (cltm.csv): point values only")
    source.add_argument("--runs", help="a run store (a directory holding runs.jsonl; default: "
                        "metrics/runs/TASK)")
    dn.add_argument("--task", choices=TASKS, help="the task whose runs to read (default: the "
                    "store's own runs; metrics/runs/gender when no source is given)")
    dn.set_defaults(func=_donors)

    dg = sub.add_parser("diagnostics",
                        help="the paper's diagnostics of any CLTM in cltm.csv format")
    cal = sub.add_parser("calibrate", help="run the pipeline on one calibration corpus "
                         "(calibration.variants.NAME) in calibration/work/NAME")
    cal.add_argument("--variant", required=True)
    cal.set_defaults(func=_calibrate)
    sub.add_parser("calibrate-report", help="the calibration table and its checks: "
                   "calibration/report.md and calibration/metrics.json"
                   ).set_defaults(func=_calibrate_report)
    dg.add_argument("matrix", help="CLTM csv: index column `target`, one column per donor")
    dg.add_argument("--se", help="standard errors, same shape")
    dg.add_argument("--family-level", choices=["family", "genus"], default="genus")
    dg.add_argument("--json", help="also write the diagnostics.json format here")
    dg.add_argument("--families", help="locale,family csv overriding the metadata (demo corpora)")
    dg.set_defaults(func=_diagnostics, needs_config=False)

    lg = sub.add_parser("languages", help="which locales of a release can fill the requests")
    lg.add_argument("--root", help="Common Voice root (default: data.commonvoice.root)")
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
