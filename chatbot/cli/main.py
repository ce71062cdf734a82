"""The ``chatbot`` command: parses arguments, calls the library, prints, maps errors to exit codes.

Exit codes: 0 success, 1 a library error (bad corpus, bundle, config, input), 2 bad usage,
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _check_model_early(*models) -> None:
    """Each bundle named (``None``: the default) found and its manifest checked (files present,
    checksums, format) before TensorFlow is imported: a mistyped name or a damaged bundle is one
    line at once, not after 5 s of start-up. Loading checks it again (milliseconds)."""
    from chatbot.model.bundle import checked_manifest, resolve_model_path

    for model in models:
        checked_manifest(resolve_model_path(model))


def _stderr_quiet_import(inference: bool = True) -> None:
    from chatbot import compile_cache
    from chatbot.cli.quiet import import_tensorflow_quietly

    compile_cache.enable()  # before TensorFlow starts: compiled decode loops come from disk
    if inference:
        # Replies are decoded one small step at a time: one intra-op thread decodes a batch-1
        # reply as fast as two (faster, measured) and leaves the other core to the database and
        # other sessions. Set TF_NUM_INTRAOP_THREADS yourself to override.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    import_tensorflow_quietly()


# --- train ---------------------------------------------------------------------------------
TRAIN_FLAGS = {  # command-line flag -> config key
    "epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "seed": "training.seed",
    "level": "tokenizer.level",
    "vocab_size": "tokenizer.vocab_size",
    "cell": "model.cell",
    "units": "model.units",
    "layers": "model.layers",
    "embedding_dim": "model.embedding_dim",
    "dropout": "model.dropout",
    "attention": "model.attention",
    "context_turns": "data.context_turns",
    "validation_fraction": "data.validation_fraction",
    "distribute": "training.distribute",
}


def cmd_train(args) -> int:
    from chatbot.config import Config
    from chatbot.data.corpus import load_corpus
    from chatbot.model.bundle import CONFIG, config_file, resolve_model_path

    if args.dry_run and args.resume:
        raise UsageError("--dry-run checks a new training; --resume continues one as it was saved")
    base = None
    if args.base:  # fine-tuning: the base model's settings unless a config file is given
        base = resolve_model_path(args.base)
        config = config_file(args.config or base / CONFIG)
    else:
        if args.mix_old or args.rebuild_vocab:
            raise UsageError("--mix-old and --rebuild-vocab go with --from MODEL")
        config = config_file(args.config) if args.config else Config()
    overrides = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items()
                 if getattr(args, flag) is not None}
    if args.bidirectional:
        overrides["model.bidirectional"] = True
    overrides.update(settings_given(args.set or [], "--set"))
    if overrides.get("model.attention") == "none":  # copying reads the attention: off with it, unless asked
        overrides.setdefault("model.copy_attention", False)
    if args.resume and not args.config:  # the saved training's settings, changed only by the flags given
        _stderr_quiet_import(inference=False)
        from chatbot.training.pipeline import saved_config

        config = saved_config(args.out, overrides)  # what may not change is refused by train()
    else:
        config = config.with_overrides(overrides)

    # Checked whole now (a warning per skipped entry), but not held: training reads it again per pass.
    corpus = load_corpus(args.corpus, strict=args.strict, in_memory=False)
    _stderr_quiet_import(inference=False)
    from chatbot.training.pipeline import dry_run, train

    if args.dry_run:
        checked = dry_run(corpus, config, args.out, base=base, mix_base_corpus=args.mix_old,
                          rebuild_vocab=args.rebuild_vocab, golden=args.golden,
                          on_stage=lambda message: print(f"[chatbot] {message}", file=sys.stderr, flush=True))
        print(json.dumps({"dry_run": True, "model": str(args.out), **dataclasses.asdict(checked)}))
        return 0

    # Keras writes its progress to stdout; here it goes to stderr with the rest of the progress, so
    # that stdout holds only the summary (`> summary.json`, `| jq`). A bar that redraws itself
    # only on a terminal: elsewhere (a log file) one line per epoch.
    verbose = 0 if args.quiet else 1 if sys.stderr.isatty() else 2
    interrupt = _interrupt_between_steps()
    callbacks = ([] if args.quiet else _progress_callbacks(config, args)) + [interrupt]
    with contextlib.redirect_stdout(sys.stderr):
        try:
            bundle = train(corpus, config, args.out, resume=args.resume, verbose=verbose,
                           on_stage=lambda message: print(f"[chatbot] {message}", file=sys.stderr, flush=True),
                           base=base, mix_base_corpus=args.mix_old, rebuild_vocab=args.rebuild_vocab,
                           golden=args.golden, extra_callbacks=callbacks)
        finally:
            interrupt.restore()
    if bundle is None:  # a multi-worker training's other worker: the chief wrote the bundle
        print(json.dumps({"model": None, "worker": "done; the chief installs the model"}))
        return 0
    metrics = bundle.metrics
    epochs = metrics["epochs"]
    summary = {"model": str(bundle.path), "epochs": epochs, "seconds": metrics["train_seconds"],
               "train_exact_match": metrics.get("train_exact_match")}
    if epochs != metrics["epochs_run"]:  # resumed: the seconds are this run's too
        summary["epochs_this_run"] = metrics["epochs_run"]
    if "golden" in metrics:
        summary["golden_passed"] = metrics["golden"]["passed"]
    summary.update({f"validation_{k}": v for k, v in metrics.get("validation", {}).items()})
    print(json.dumps(summary))
    return 0


def _progress_callbacks(config, args) -> list:
    """Keras' per-epoch bar, then one overall line per epoch on stderr (``TrainingProgress``).
    The bar is passed explicitly so that it comes first: Keras would append its own after
    these, and our line would then be printed before the bar had finished its epoch."""
    import keras

    from chatbot.training.progress import TrainingProgress, best_logged

    monitor = config.training.monitor
    return [keras.callbacks.ProgbarLogger(), TrainingProgress(
        lambda progress: print(f"[chatbot] {progress.line()}", file=sys.stderr, flush=True),
        monitor=monitor, early_stopping=config.training.early_stopping,
        best_before=best_logged(args.out, monitor) if args.resume else None)]


def _interrupt_between_steps():
    """A Keras callback: Ctrl-C during ``fit`` stops training once the running step ends, not
    wherever Python happens to be. One that landed in TensorFlow's clean-up code (a ``__del__``)
    was printed and ignored there, and training went on to install its model. A second Ctrl-C
    stops at once; outside ``fit`` Ctrl-C acts as usual."""
    import signal

    import keras

    class InterruptBetweenSteps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.asked = False
            self.previous = None

        def on_train_begin(self, logs=None):
            self.previous = signal.signal(signal.SIGINT, self._ask)

        def _ask(self, signum, frame):
            if self.asked:
                raise KeyboardInterrupt
            self.asked = True

        def _stop_if_asked(self, *_, **__):
            if self.asked:
                self.restore()
                raise KeyboardInterrupt

        on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_asked

        def on_train_end(self, logs=None):  # measuring and saving follow: Ctrl-C acts at once again
            asked = self.asked
            self.restore()
            if asked:
                raise KeyboardInterrupt

        def restore(self):
            if self.previous is not None:
                signal.signal(signal.SIGINT, self.previous)
                self.previous = None

    return InterruptBetweenSteps()


# --- ask -----------------------------------------------------------------------------------
FLAG_ALIASES = {"no_repeat_ngram_size": ("--no-repeat-ngram",)}  # spellings older than the generated flags
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed")


def decoding_overrides(args) -> dict:
    """The decoding settings given on the command line, as a dict of DecodingConfig fields.
    A sampling flag without --strategy (and without --beam > 1) means sampling."""
    from chatbot.config import DecodingConfig, specs

    overrides = {spec.name: getattr(args, spec.name) for spec in specs(DecodingConfig)
                 if getattr(args, spec.name, None) is not None}
    if ("strategy" not in overrides and (overrides.get("beam") or 1) == 1
            and any(name in overrides for name in SAMPLING_FIELDS)):
        overrides["strategy"] = "sample"
    return overrides


def add_decoding_arguments(parser: argparse.ArgumentParser):
    """One flag per DecodingConfig field, generated from its metadata (read back with
    ``decoding_overrides``); returns the argument group so a command can add its own. Values
    are only parsed here: ``ChatBot`` checks them against the same metadata."""
    from chatbot.config import DecodingConfig, specs

    decoding = parser.add_argument_group("decoding (default: the model's decoding config; "
                                         "a sampling flag alone means --strategy sample)")
    for spec in specs(DecodingConfig):
        names = (f"--{spec.name.replace('_', '-')}", *FLAG_ALIASES.get(spec.name, ()))
        if spec.type is bool:
            decoding.add_argument(*names, dest=spec.name, action=argparse.BooleanOptionalAction, help=spec.help)
        else:
            bounds = f" [{spec.bounds}]" if spec.bounds and not spec.choices else ""
            decoding.add_argument(*names, dest=spec.name, type=spec.type, choices=spec.choices,
                                  help=spec.help + bounds)
    return decoding


def cmd_ask(args) -> int:
    """One reply line per question (argument or stdin line), in order. A question that cannot be
    answered (not UTF-8, not usable text, a failed decode) gets an empty line, or with --json an
    object with an ``error``, and a one-line warning on stderr; the others are still answered,
    and the exit status is 1 if any failed. A database that refuses a write (read-only, full,
    locked past its timeout) stops the run with one error: every later line would fail alike."""
    _check_model_early(args.model)
    _stderr_quiet_import()
    from chatbot.cli.console import warn_if_in_memory
    from chatbot.cli.repl import UnreadableLine, input_lines
    from chatbot.dialogue.bot import ChatBot
    from chatbot.errors import ChatbotError, ReplyNotStored, StoreError

    with ChatBot.load(args.model, db=args.db, warm_up=False) as bot:
        config = bot.resolve_decoding(decoding_overrides(args))  # bad settings fail once, before any question
        # Only the loop these replies decode with (loading would also trace greedy's in the
        # background, seconds that `ask` with the default model's beam search never uses).
        bot.warm_up((config.effective_strategy,), config)
        if args.session:
            warn_if_in_memory(bot.database_in_memory)
        session = bot.session(args.session).id if args.session else None
        kind = "question" if args.question else "line"
        failed = 0
        for number, question in enumerate(args.question or input_lines(sys.stdin), start=1):
            try:
                if isinstance(question, UnreadableLine):
                    raise _Unanswerable(question.problem)
                print(_answer(bot, question, config, session, args.json), flush=True)
                continue
            except ReplyNotStored as exc:  # answered, but the database took no more: the last line
                print(_reply_line(exc.reply, config, args.json), flush=True)
                raise
            except StoreError:  # the database, not this line, is the problem: stop with one error
                raise
            except (ChatbotError, _Unanswerable) as exc:
                print(json.dumps({"reply": "", "error": one_line(exc)}, ensure_ascii=False)
                      if args.json else "", flush=True)
                problem = one_line(exc)
            failed += 1
            print(f"chatbot: warning: {kind} {number}: {problem}", file=sys.stderr, flush=True)
    if failed:
        print(f"chatbot: error: {failed} {kind}{'s' * (failed != 1)} not answered (see the warnings)",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


class _Unanswerable(Exception):
    """An input line that is not text: ``ask`` answers it with an empty line and a warning."""


def _answer(bot, question: str, config, session: int | None, as_json: bool) -> str:
    """The reply line for one question (``ChatbotError`` when it cannot be answered)."""
    from chatbot.data.text import clean_text

    if not question.strip() or not clean_text(question[:4096]):  # an empty line still gets one (empty) reply line
        return json.dumps({"reply": "", "score": None, "confidence": None, "latency_ms": 0.0, "read_as": "",
                           "retrieved": []}) if as_json else ""
    if session is not None:
        result = bot.reply(question, session=session, decoding=config)
    else:
        result = bot.generate([question], decoding=config)[0]
    return _reply_line(result, config, as_json)


def _reply_line(result, config, as_json: bool) -> str:
    """A reply on one line: its text with line breaks joined, or the --json object."""
    from chatbot.dialogue.bot import retrieved_json

    if not as_json:
        return " ".join(result.text.splitlines())
    out = {"reply": result.text, "score": round(result.score, 4),
           "confidence": round(result.confidence, 4), "latency_ms": round(result.latency_ms, 2),
           "read_as": result.read_as, "retrieved": retrieved_json(result.retrieved)}
    if config.n_best > 1:
        out["alternatives"] = [{"reply": text, "score": round(score, 4)} for text, score in result.alternatives]
    return json.dumps(out, ensure_ascii=False)


# --- evaluate ------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from chatbot.evaluation.fallback import load_questions
    from chatbot.evaluation.golden import load_golden

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    cases = load_golden(args.golden) if args.golden else None  # a bad file fails before the model loads
    unanswerable = load_questions(args.unanswerable) if args.unanswerable else ()
    # A wrong name or a damaged bundle fails before the first model is measured.
    _check_model_early(args.model, *([args.against] if args.against else []))
    if args.plot:
        from chatbot.evaluation.plots import ensure_matplotlib

        ensure_matplotlib()
    _stderr_quiet_import()
    from chatbot.dialogue.bot import ChatBot
    from chatbot.evaluation.golden import JUDGING_DIALOGUE, check_golden
    from chatbot.evaluation.evaluate import evaluate, evaluation_set

    with ChatBot.load(args.model, dialogue=JUDGING_DIALOGUE) as bot:
        decoding = decoding_overrides(args)
        bot.resolve_decoding(decoding)  # bad settings fail before the data is read
        data = evaluation_set(bot.bundle, split=args.split, corpus=args.corpus, limit=args.limit)
        if args.split is None and args.corpus is None and data.source == "train":
            fraction = bot.bundle.config.data.validation_fraction
            print(f"chatbot: this model has no validation pairs (data.validation_fraction {fraction} held out "
                  "none); evaluating on its training questions, which it has seen", file=sys.stderr, flush=True)
        report = evaluate(bot, data.examples, data.reference, decoding, source=data.source, unanswerable=unanswerable)
        golden = check_golden(bot, cases, decoding) if cases else None
        model_path = bot.bundle.path
    comparison = None
    rows = [item.to_json() for item in report.items]
    if args.against:
        from chatbot.evaluation.compare import compare, paired, seen_in_training

        with ChatBot.load(args.against, dialogue=JUDGING_DIALOGUE) as other:
            baseline = evaluate(other, data.examples, data.reference, decoding, source=data.source)
            seen = (seen_in_training(data.examples, _trained_on(bot.bundle)),
                    seen_in_training(data.examples, _trained_on(other.bundle)))
            comparison = (compare(report, baseline, seen), other.bundle.path)
        for row, (_, theirs) in zip(rows, paired(report, baseline)):  # --details: the other's reply too
            row["against"] = {"reply": theirs.reply, "exact": theirs.exact}
    if args.details:
        Path(args.details).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                      encoding="utf-8")
    if args.plot:
        from chatbot.evaluation.plots import plot_evaluation

        plot_evaluation(report, args.plot)
    if args.json:
        out = report.summary()
        if golden is not None:
            out["golden"] = golden.to_json()
        if comparison is not None:
            out["against"] = comparison[0].to_json()
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(_evaluation_table(report, model_path, golden, args.golden, args.model or "default"))
        if comparison is not None:
            print("\n".join(_comparison_lines(*comparison)))
    if golden is not None and not golden.ok:
        print(f"chatbot: {len(golden.failed)} of {len(cases)} golden cases failed ({args.golden})", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _evaluation_table(report, model_path, golden, golden_path, model_name: str) -> str:
    d = report.decoding
    strategy = f"beam {d['beam']}" if d["strategy"] == "beam" else d["strategy"]
    source = f"{report.source} split" if report.source in ("validation", "train") else report.source
    latency = report.latency_ms
    lines = [
        f"model           {report.model} ({model_path})",
        f"evaluated on    {source}: {report.pairs:,} pairs, {report.inputs:,} distinct questions",
        f"decoding        {strategy}, max {d['max_length']}",
        f"perplexity      {report.perplexity:,.2f}  (loss {report.loss:.4f}, teacher-forced)",
        f"token accuracy  {report.token_accuracy:.1%}",
        f"exact match     {report.exact_match:.1%}  ({report.exact_count} of {report.inputs})",
        f"BLEU            {report.bleu:.2f}",
        f"chrF            {report.chrf:.2f}",
        f"distinct-1/2    {report.distinct_1:.3f} / {report.distinct_2:.3f}  "
        f"(the 10 most frequent replies: {report.top10_share:.1%} of all)",
        f"self-perplexity {report.reply_perplexity:,.2f}  (of its own replies, given their inputs)",
        f"reply length    {report.reply_tokens:.1f} tokens, {report.reply_words:.1f} words (mean)",
        f"latency         {latency['mean']:.2f} ms per reply (p50 {latency['p50']:.2f}, "
        f"p90 {latency['p90']:.2f}; batched)",
    ]
    if report.fallback is not None:
        lines += _fallback_lines(report.fallback, model_name)
        if report.source == "train":
            lines.append("                (chosen on training questions alone: reworded ones score lower, so also "
                         "evaluate a --corpus of questions worded as users word them, with their answers)")
    if golden is not None:
        lines.append(f"golden          {len(golden.passed)} of {len(golden.passed) + len(golden.failed)} "
                     f"passed ({golden_path})")
        for o in golden.failed:
            lines += [f"  FAIL {o.case.source}: {o.case.question}", f"       reply:    {o.reply}",
                      f"       expected: {' | '.join(o.case.answers)}"]
    return "\n".join(lines)


def _trained_on(bundle):
    """A bundle's training pairs, or None when they cannot be had (an older bundle whose corpus
    moved): the comparison then says nothing about which model has seen the questions."""
    from chatbot.errors import BundleError, CorpusError
    from chatbot.evaluation.evaluate import training_split

    try:
        return training_split(bundle)
    except (BundleError, CorpusError):
        return None


def _comparison_lines(c, path) -> list[str]:
    asked = c.both + c.only_model + c.only_baseline + c.neither
    verdict = ("unlikely to be chance" if c.p_value < 0.05
               else "a difference this size could be chance" if c.only_model != c.only_baseline else "a tie")
    lines = [f"against         {c.baseline} ({path}): exact match {c.baseline_exact_match:.1%} "
             f"({c.both + c.only_baseline} of {asked})",
             f"                right only here {c.only_model}, only there {c.only_baseline} (both {c.both}, "
             f"neither {c.neither}); McNemar exact p = {c.p_value:.3g}: {verdict}"]
    if None not in (c.seen_by_model, c.seen_by_baseline) and c.seen_by_model != c.seen_by_baseline:
        favoured = "there" if c.seen_by_baseline > c.seen_by_model else "here"
        lines.append(f"                trained on: {c.seen_by_model} of these questions here, {c.seen_by_baseline} "
                     f"there: the comparison favours the model {favoured}")
    return lines


# --- chat ----------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from chatbot.cli.console import Spinner, color_wanted, history_path
    from chatbot.cli.console import warn_if_in_memory
    from chatbot.cli.repl import ChatRepl, input_lines

    # A terminal on both ends gets the full prompt; otherwise one reply line per input line.
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    began = time.perf_counter()
    _check_model_early(args.model)
    with Spinner("loading the model", stream=sys.stderr, enabled=interactive and sys.stderr.isatty()):
        _stderr_quiet_import()
        from chatbot.dialogue.bot import ChatBot

        bot = ChatBot.load(args.model, db=args.db)  # warms the compiled decoder up
        try:
            database_url = bot.database_url  # open the database now: a bad --db fails before the prompt
            warn_if_in_memory(bot.database_in_memory)
            session = bot.session(args.session) if args.session else None
        except BaseException:
            bot.close()
            raise
    with bot:
        color = interactive and color_wanted(args.no_color, sys.stdout)
        repl = ChatRepl(bot, session, output=sys.stdout, color=color, plain=not interactive)
        if interactive:
            repl.run_interactive(history_path(database_url), load_seconds=time.perf_counter() - began)
        else:
            unanswered = repl.run_plain(input_lines(sys.stdin))  # e.g. a line that is not UTF-8
            if unanswered:
                print(f"chatbot: error: {unanswered} line{'s' * (unanswered != 1)} not answered "
                      "(see the error lines)", file=sys.stderr)
                return EXIT_ERROR
    return 0


# --- serve ---------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from chatbot.cli.serve import serve

    return serve(args)


# --- corpus --------------------------------------------------------------------------------
def cmd_corpus(args) -> int:
    from chatbot.data import corpus_tools  # no TensorFlow: these commands stay fast

    if args.action == "stats":
        stats = corpus_tools.corpus_stats(args.path)
        print(json.dumps(stats, ensure_ascii=False) if args.json else corpus_tools.format_stats(stats))
        return 0
    if args.action == "validate":
        problems = corpus_tools.validate_corpus(args.path)
        if args.json:
            print(json.dumps({"path": args.path, "problems": [
                {"file": p.file, "line": p.line, "problem": p.why} for p in problems]}, ensure_ascii=False))
        else:
            for problem in problems:
                print(problem)
            count = len(problems)
            print(f"{args.path}: {count or 'no'} problem{'s' * (count != 1)}", file=sys.stderr)
        return EXIT_ERROR if problems else 0
    result = corpus_tools.convert_corpus(args.input, args.output, args.format)
    dialogues, pairs = result["dialogues"], result["pairs"]
    print(f"wrote {result['path']} ({result['format']}): {dialogues:,} dialogue{'s' * (dialogues != 1)}, "
          f"{pairs:,} pair{'s' * (pairs != 1)}")
    if result["skipped"]:
        print(f"{len(result['skipped'])} malformed entr{'y' if len(result['skipped']) == 1 else 'ies'} "
              f"left out (see: chatbot corpus validate {args.input})")
    if result["context_lost"]:
        lost = result["context_lost"]
        print(f"chatbot: warning: TSV holds pairs only: {lost:,} conversation{'s' * (lost != 1)} longer than one "
              "exchange lose their earlier turns (read with data.context_turns > 0); .yml or .jsonl keep them",
              file=sys.stderr)
    return 0


# --- sessions ------------------------------------------------------------------------------
def _prune(store, days: float) -> int:
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc) - timedelta(days=days)
    size = _database_bytes(store.file)
    sessions, messages = store.prune_sessions(before)
    if sessions:
        store.compact()
    freed = f"; the database went from {size:,} to {_database_bytes(store.file):,} bytes" if store.file else ""
    print(f"deleted {sessions:,} session{'s' * (sessions != 1)} and {messages:,} message{'s' * (messages != 1)} "
          f"last active before {before.astimezone():%Y-%m-%d %H:%M}{freed}")
    return 0


def _database_bytes(file) -> int:
    """A SQLite database's size on disk, its write-ahead log included."""
    if file is None:
        return 0
    return sum(p.stat().st_size for p in (file, file.with_name(file.name + "-wal")) if p.exists())


def cmd_sessions(args) -> int:
    from chatbot.cli.console import column, warn_if_in_memory
    from chatbot.data.text import escape_unshowable
    from chatbot.dialogue.store import SessionStore

    # A flag that does nothing for this action is refused, not ignored (`list --last 1` listed all).
    for flag, actions in (("feedback", ("export",)), ("last", ("show",)), ("format", ("export",)),
                          ("out", ("export",)), ("json", ("list",)), ("older_than", ("prune",))):
        if getattr(args, flag) not in (None, False) and args.action not in actions:
            raise UsageError(f"--{flag.replace('_', '-')} goes with 'sessions {actions[0]}'")
    if args.action in ("list", "prune", "upgrade") and args.target is not None:
        raise UsageError(f"sessions {args.action} takes no session ('{args.target}'): it reads them all; "
                         "'sessions show' shows one")
    if args.action == "prune" and args.older_than is None:
        raise UsageError("sessions prune needs --older-than DAYS")
    if args.action == "upgrade":
        return _upgrade(args.db)
    # Only delete and prune write: the others open the database read-only and never create it.
    with SessionStore(args.db, read_only=args.action not in ("delete", "prune")) as store:
        warn_if_in_memory(store.in_memory)
        if args.action == "prune":
            return _prune(store, args.older_than)
        if args.action == "export" and args.feedback:  # every session's, unless one is named
            fmt = args.format or "yaml"
            _write_export(store.export_feedback(args.target, format=fmt), args.out, store)
            pairs = len(store.feedback_pairs(args.target))
            print(f"{pairs} question/answer pair{'s' if pairs != 1 else ''} from feedback ({fmt})",
                  file=sys.stderr)
            return 0
        if args.action == "list":
            rows = store.list_sessions()
            if args.json:
                for s in rows:
                    print(json.dumps({"id": s.id, "name": s.name, "owner": s.owner, "messages": s.message_count,
                                      "created": s.created_at.isoformat(), "updated": s.updated_at.isoformat()},
                                     ensure_ascii=False))  # raw UTF-8, as every other --json
                return 0
            if not rows:
                print(f"no sessions in {store.url}")
                return 0
            # Sessions of `chatbot serve`'s API keys carry an owner (a hash of the key), and names
            # are unique per owner: the column tells two "alice"s apart (ids always do).
            owners = any(s.owner for s in rows)
            print(f"{'ID':>5}  {'NAME':<20} {'MESSAGES':>8}  " + (f"{'UPDATED':<19}  OWNER" if owners else "UPDATED"))
            for s in rows:
                print(f"{s.id:>5}  {column(s.name or '-', 20)} {s.message_count:>8}  "
                      f"{s.updated_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}"
                      + (f"  {s.owner[:8] or '-'}" if owners else ""))
            return 0
        if args.target is None:
            raise UsageError(f"sessions {args.action} needs a session id or name")
        if args.action == "show":
            info = store.get_session(args.target)
            print(f"session {info.id}" + (f" ({escape_unshowable(info.name)})" if info.name else "")
                  + f", {info.message_count} messages")
            feedback = store.session_feedback(info.id)
            for m in store.history(info.id, last=args.last):
                extra = f"  [score {m.score:.3f}{', fallback' if m.fallback else ''}]" if m.role == "bot" else ""
                verdict = feedback.get(m.id)
                if verdict and verdict.rating:
                    extra += f" [rated {verdict.rating}]"
                if verdict and verdict.correction:
                    extra += f" [correction: {verdict.correction}]"
                print(f"{m.position:>4} {m.role:>4}: {m.text}{extra}")
        elif args.action == "export":
            _write_export(store.export_session(args.target, format=args.format or "jsonl"), args.out, store)
        elif args.action == "delete":
            info = store.get_session(args.target)
            store.delete_session(info.id)
            print(f"deleted session {info.id}" + (f" ({escape_unshowable(info.name)})" if info.name else "")
                  + f" and its {info.message_count} messages")
    return 0


def _upgrade(db: str | None) -> int:
    """Migrate an existing database to this version's schema without loading a model (the
    read-only commands refuse an older one); a database already there is left as it is."""
    from chatbot.dialogue.store import SessionStore
    from chatbot.errors import DatabaseOutdated

    try:
        with SessionStore(db, read_only=True) as store:  # never creates one: a missing file is an error
            print(f"{store.url} is at schema revision {store.schema_revision()}: nothing to upgrade")
            return 0
    except DatabaseOutdated:
        pass
    with SessionStore(db) as store:  # migrates it, in one transaction
        print(f"upgraded {store.url} to schema revision {store.schema_revision()}")
    return 0


# --- models --------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from chatbot.cli.console import column
    from chatbot.data.text import escape_unshowable
    from chatbot.model.bundle import list_bundles, model_directories

    directories = [args.dir] if args.dir else model_directories()
    bundles, names = [], set()
    for directory in directories:  # a name resolves to the first directory holding it
        for bundle in list_bundles(directory):
            if bundle.name not in names:
                names.add(bundle.name)
                bundles.append(bundle)
    if args.json:
        for b in bundles:
            print(json.dumps({"name": b.name, "path": str(b.path), "size_bytes": b.size_bytes,
                              "created": b.created, "corpus": b.corpus, "parameters": b.parameters,
                              "metrics": b.metrics, "problem": b.problem}, ensure_ascii=False))
        return 0
    if not bundles:
        print(f"no model bundles in {' or '.join(str(d) for d in directories)}")
        return 0
    print(f"{'NAME':<16} {'SIZE':>8} {'CREATED':<17} {'CORPUS':<24} {'TRAIN EXACT':>11} "
          f"{'VAL EXACT':>9} {'VAL PPL':>8}")
    for b in bundles:
        if b.problem:
            print(f"{column(b.name, 16)} {b.size_bytes / 2**20:>6.1f}MB  unusable: {escape_unshowable(b.problem)}")
            continue
        created = b.created.replace("T", " ")[:16] if b.created else "-"
        m = b.metrics

        def figure(key, fmt):
            return format(m[key], fmt) if isinstance(m.get(key), (int, float)) else "-"

        print(f"{column(b.name, 16)} {b.size_bytes / 2**20:>6.1f}MB {created:<17} {column(b.corpus or '-', 24)} "
              f"{figure('train_exact_match', '.1%'):>11} {figure('exact_match', '.1%'):>9} "
              f"{figure('perplexity', ',.0f'):>8}")
    return 0


def cmd_models_show(args) -> int:
    from chatbot.model.bundle import describe, resolve_model_path

    card = describe(resolve_model_path(args.model))
    if args.json:
        print(json.dumps(card, ensure_ascii=False))
    elif args.config:
        print(json.dumps(card["config"], indent=2, ensure_ascii=False))
    else:
        for label, text in model_card(card):
            print(f"  {label:<11} {text}" if label else text)
    return 0 if card["problem"] is None else 1


def model_card(card: dict) -> list[tuple[str, str]]:
    """``chatbot models show``'s lines, (label, text), from ``describe``'s dict."""
    from chatbot.config import Config
    from chatbot.data.text import escape_unshowable as shown

    def when(stamp) -> str:
        return f"{stamp[:16].replace('T', ' ')} UTC" if isinstance(stamp, str) else "unknown"

    def corpus_line(corpus: dict) -> str:
        digest = f" (sha256 {corpus['sha256'][:12]})" if isinstance(corpus.get("sha256"), str) else ""
        counts = ", ".join(f"{corpus[key]:,} {what}" for key, what in (
            ("examples", "pairs"), ("train", "trained on"), ("validation", "held out"))
            if isinstance(corpus.get(key), int))
        return f"{shown(str(corpus.get('path', 'unknown')))}{digest}{': ' + counts if counts else ''}"

    config, corpus, training = card["config"], card["corpus"], card["training"]
    checked = ("every file intact and readable" if card["problem"] is None
               else f"UNUSABLE: {shown(card['problem'])}")
    lines = [(None, f"{shown(card['name'])}: {shown(card['path'])}"),
             ("made", f"{when(card['created'])} by chatbot {card['chatbot_version'] or '?'} "
                      f"(bundle format {card['format_version']}); {checked}"),
             ("model", f"{Config.from_dict(config).model.summary()}; {card['parameters'] or 0:,} parameters; "
                       f"{config['tokenizer']['level']} vocabulary of {card['vocab_size'] or 0:,}"),
             ("corpus", corpus_line(corpus))]
    base = corpus.get("base_model")
    if isinstance(base, dict):
        lines.append(("fine-tuned", f"from {shown(str(base.get('name')))} of {when(base.get('created'))}"
                                    + (f", trained on {corpus_line(base['corpus'])}" if isinstance(base.get("corpus"), dict) else "")))
    if training:
        parts = []
        if isinstance(training.get("epochs_run"), int):
            parts.append(f"{training['epochs_run']} of {training.get('epochs', config['training']['epochs'])} epochs"
                         + (f" in {training['train_seconds'] / 60:.1f} min" if isinstance(training.get("train_seconds"), (int, float)) else ""))
        if isinstance(training.get("final_loss"), (int, float)):
            parts.append(f"loss {training['final_loss']:.4g} (lowest {training['best_loss']:.4g})")
        if isinstance(training.get("train_exact_match"), (int, float)):
            parts.append(f"training questions answered exactly {training['train_exact_match']:.1%}")
        lines.append(("training", "; ".join(parts) or "no figures"))
        validation = training.get("validation") or {}
        figures = [f"{name.replace('_', ' ')} {validation[key]:{fmt}}" for key, name, fmt in (
            ("exact_match", "exact", ".1%"), ("perplexity", "perplexity", ",.1f"), ("token_accuracy", "token accuracy", ".1%"))
            if isinstance(validation.get(key), (int, float))]
        if figures:
            lines.append(("validation", ", ".join(figures)))
    data, decoding, dialogue = config["data"], config["decoding"], config["dialogue"]
    if data["retrieved_pairs"]:
        lines.append(("retrieval", f"{data['retriever']}, {data['retrieved_pairs']} pairs shown"
                                   + ("; spelling corrected to the corpus' words" if data["spelling"] else "")))
    strategy = decoding["strategy"]
    how = (f"beam {decoding['beam']}, length penalty {decoding['length_penalty']}" if strategy == "beam"
           else f"sampling, temperature {decoding['temperature']}, top-k {decoding['top_k']}, top-p {decoding['top_p']}"
           if strategy == "sample" else "greedy")
    if data["retrieved_pairs"]:
        how += (f", retrieval on, retrieved bonus {decoding['retrieved_bonus']}, unaided weight "
                f"{decoding['unaided_weight']}" if decoding["retrieval"] else ", retrieval off")
    lines.append(("decoding", f"{how}, at most {decoding['max_length']} tokens"))
    lines.append(("dialogue", f"min confidence {dialogue['min_confidence']}, fallback threshold "
                              f"{dialogue['fallback_threshold']}, fallback text {shown(json.dumps(dialogue['fallback_text'], ensure_ascii=False))}"))
    for change in card["changes"]:
        if isinstance(change, dict) and isinstance(change.get("settings"), dict):
            settings = ", ".join(f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in change["settings"].items())
            lines.append(("changed", f"{when(change.get('at'))}: {shown(settings)}"))
    largest = sorted(card["files"].items(), key=lambda item: -item[1])[:3]
    lines.append(("files", f"{len(card['files'])}, {card['size_bytes'] / 2**20:.1f} MB: "
                           + ", ".join(f"{shown(name)} {size / 2**20:.1f} MB" for name, size in largest)))
    return lines


def settings_given(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` settings: a value is JSON where it parses (numbers, true, lists), else text."""
    from chatbot.errors import ConfigError

    settings = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        try:
            settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw
    return settings


def cmd_models_set(args) -> int:
    from chatbot.model.bundle import change_settings, resolve_model_path

    path = resolve_model_path(args.model)
    settings = settings_given(args.settings, "models set")
    config = change_settings(path, settings)
    written = config.to_dict()
    for key in settings:
        section, _, name = key.partition(".")
        print(f"{key} = {json.dumps(written[section][name], ensure_ascii=False)}")
    print(f"chatbot: changed {path} (bundle.json records the change)", file=sys.stderr)
    return 0


def _write_export(text: str, out: str | None, store) -> None:
    if out:
        from chatbot.cli.console import write_export

        write_export(out, text, store.holds)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


class CommandFormatter(logging.Formatter):
    """The library's log records as the command's own lines: ``chatbot: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"chatbot: {record.levelname.lower()}: {super().format(record)}"


class UsageError(Exception):
    """Bad command-line usage found after parsing (exit code 2)."""


def bounded(kind: type, least: float, most: float | None = None, above: bool = False):
    """An argparse type: a finite number of ``kind`` at least ``least`` (above it with
    ``above``) and at most ``most``, so a bad value is argparse's one-line error naming the flag."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text}'") from None
        low_ok = value > least if above else value >= least
        if not (math.isfinite(value) and low_ok and (most is None or value <= most)):
            wanted = f"{'above' if above else 'at least'} {least:g}" + (f" and at most {most:g}" if most is not None else "")
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    return parse


# --- parser --------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals (``--port abc``) are a JSON log line when the command
    line asks for ``--log-format json``: a collector reading one JSON object per line would drop
    argparse's plain usage line. Its subcommands' parsers are of this class too."""

    json_errors = False  # set by ``main`` from the command line, before parsing it

    def error(self, message: str):
        if Parser.json_errors:
            from chatbot.cli.json_logs import json_line

            print(json_line("chatbot", logging.ERROR, f"{self.prog}: {message}"), file=sys.stderr)
            sys.exit(EXIT_USAGE)
        super().error(message)


def _asks_for_json_logs(argv: list[str]) -> bool:
    return "--log-format=json" in argv or any(
        flag == "--log-format" and value == "json" for flag, value in zip(argv, argv[1:]))


def build_parser() -> argparse.ArgumentParser:
    from chatbot.version import __version__

    parser = Parser(prog="chatbot", description="A seq2seq chatbot: train it, ask it, chat with it.")
    parser.add_argument("--version", action="version", version=f"chatbot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model on a corpus and save it as a bundle")
    train.add_argument("--corpus", required=True, help="corpus file or directory (YAML, TSV, JSONL, chitchat "
                                                        "JSON), or \"chitchat\" (the [chitchat] extra)")
    train.add_argument("--config", help="JSON or TOML config file (defaults for keys left out)")
    train.add_argument("--out", default="models/mine", help="bundle directory to write (default: models/mine)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted training of --out with its saved settings; flags may "
                            "change the epochs, stopping rules, dropout, decoding.* and dialogue.*, not the "
                            "data, tokenizer, network shape or optimizer")
    train.add_argument("--from", dest="base", metavar="MODEL",
                       help="fine-tune this bundle (path or name under models/): start from its weights, "
                            "keep its tokenizer and settings")
    train.add_argument("--mix-old", action="store_true",
                       help="with --from: also train on the pairs the base model was trained on (its "
                            "validation pairs stay held out)")
    train.add_argument("--rebuild-vocab", action="store_true",
                       help="with --from: fit a new vocabulary and start from fresh weights (when the "
                            "new corpus has many unknown tokens)")
    train.add_argument("--golden", metavar="FILE",
                       help="question<TAB>expected answer checks the new model must pass, or it is not "
                            "installed at --out (it is saved as OUT.rejected instead)")
    train.add_argument("--strict", action="store_true", help="fail on the first malformed corpus entry")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress (the bar and the overall line)")
    train.add_argument("--dry-run", action="store_true",
                       help="check the corpus and settings and prepare the training (tokenizer, inputs, "
                            "network) with its warnings in a temporary folder, then stop: nothing is "
                            "trained or written at --out")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any config key, e.g. --set model.dropout=0.1 (repeatable)")
    for flag, key in TRAIN_FLAGS.items():
        kind = {"learning_rate": float, "dropout": float, "validation_fraction": float,
                "level": str, "cell": str, "attention": str, "distribute": str}.get(flag, int)
        train.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"sets {key}")
    train.add_argument("--bidirectional", action="store_true", help="sets model.bidirectional")
    train.set_defaults(func=cmd_train)

    ask = sub.add_parser("ask", help="answer questions given as arguments, or one per stdin line")
    ask.add_argument("question", nargs="*", help="questions; without any, read stdin line by line")
    ask.add_argument("--model", help="bundle directory or name under models/ (default: models/default)")
    ask.add_argument("--json", action="store_true", help="one JSON object per line: reply, score, confidence, "
                                                         "latency_ms, read_as, retrieved (and alternatives when "
                                                         "--n-best > 1)")
    add_decoding_arguments(ask)
    ask.add_argument("--session", metavar="NAME_OR_ID",
                     help="continue (or start) a stored session: history is used and both turns are stored")
    ask.add_argument("--db", help="SQLAlchemy database URL or SQLite file (default: $CHATBOT_DB or "
                                  "~/.local/share/chatbot/chatbot.db)")
    ask.set_defaults(func=cmd_ask)

    chat = sub.add_parser("chat", help="talk with a model in the terminal (sessions, history, slash commands)")
    chat.add_argument("--model", help="bundle directory or name under models/ (default: models/default)")
    chat.add_argument("--db", help="SQLAlchemy database URL or SQLite file (default: $CHATBOT_DB or "
                                   "~/.local/share/chatbot/chatbot.db)")
    chat.add_argument("--session", metavar="NAME", help="resume (or create) this session; default: a new one")
    chat.add_argument("--no-color", action="store_true", help="no colours (also when $NO_COLOR is set)")
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="serve the model over HTTP: an OpenAI-compatible API, a REST API "
                                         "and a web chat page")
    serve.add_argument("--model", help="bundle directory or bundled model name [default]")
    serve.add_argument("--db", help="session database: a SQLAlchemy URL or SQLite file [$CHATBOT_DB or the "
                                    "default file]; PostgreSQL for several workers")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    serve.add_argument("--port", type=bounded(int, 1, 65535), default=8000, help="[8000]")
    serve.add_argument("--workers", type=bounded(int, 1), default=1,
                       help="worker processes, each with the model loaded [1]")
    serve.add_argument("--api-key", action="append", metavar="KEY",
                       help="accept this bearer token (repeatable; also $CHATBOT_API_KEYS, comma-separated)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without API keys")
    serve.add_argument("--max-batch", type=bounded(int, 1), default=8, help="requests decoded together at most [8]")
    serve.add_argument("--batch-wait-ms", type=bounded(float, 0), default=2.0,
                       help="how long a decode waits for more requests to join it, under load [2]")
    serve.add_argument("--rate-limit", type=bounded(float, 0, above=True), default=600.0, help="requests per minute per key [600]")
    serve.add_argument("--rate-burst", type=bounded(int, 1),
                       help="requests per key at once before the rate applies [the rate, at most 60]")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                       help="allow browser pages from this origin to call the API (repeatable)")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="without keys on loopback, the server answers only requests for localhost, "
                            "127.0.0.1 and ::1 (against DNS rebinding); also answer to this name, e.g. the "
                            "one a reverse proxy passes on (repeatable)")
    serve.add_argument("--root-path", default="", metavar="PATH",
                       help="the path prefix a reverse proxy serves the app under and strips, e.g. /chatbot "
                            "(the API docs page then finds its schema)")
    serve.add_argument("--drain-seconds", type=bounded(int, 0), default=30,
                       help="on SIGTERM, wait this long for requests in flight [30]")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="json: one JSON object per log line, with the request's ID [text]")
    serve.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                       help="ready once the model is loaded, without compiling its decode loops first: a "
                            "quicker start (for development), but a request that meets a new input shape "
                            "waits seconds for its compilation")
    serve.set_defaults(func=cmd_serve)

    sessions = sub.add_parser("sessions", help="list, show, export or delete stored conversations; upgrade "
                                               "an older database")
    sessions.add_argument("action", choices=("list", "show", "export", "delete", "prune", "upgrade"))
    sessions.add_argument("target", nargs="?", metavar="ID_OR_NAME", help="the session (not for list)")
    sessions.add_argument("--db", help="SQLAlchemy database URL or SQLite file")
    sessions.add_argument("--last", type=bounded(int, 1), help="show: only the last N messages")
    sessions.add_argument("--format", choices=("jsonl", "yaml"),
                          help="export format (default jsonl; yaml with --feedback); yaml is a "
                               "ChatterBot corpus to train on: each question with its reply")
    sessions.add_argument("--feedback", action="store_true",
                          help="export: ratings and corrections as a corpus to retrain on (all sessions "
                               "unless one is named): corrections as pairs, replies rated bad left out")
    sessions.add_argument("--out", help="export: write to this file instead of stdout")
    sessions.add_argument("--json", action="store_true", help="list: JSON lines")
    sessions.add_argument("--older-than", type=bounded(float, 0, above=True), metavar="DAYS",
                          help="prune: delete the sessions last active more than DAYS ago, with their "
                               "messages, and give the space back (SQLite: VACUUM)")
    sessions.set_defaults(func=cmd_sessions)

    models = sub.add_parser("models", help="list the model bundles under models/; show one; change a model's run-time "
                                          "settings")
    models_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = models_sub.add_parser("list", help="the bundles under models/ with their key figures")
    listing.add_argument("--dir", help="directory of bundles (default: models/ of the working directory, "
                                       "then the bundled models)")
    listing.add_argument("--json", action="store_true", help="one JSON object per bundle")
    listing.set_defaults(func=cmd_models)
    change = models_sub.add_parser("set", help="change a trained model's decoding.* or dialogue.* settings "
                                               "in place, without retraining")
    change.add_argument("model", help="bundle directory or name under models/")
    change.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                        help="e.g. dialogue.min_confidence=0.93 or 'dialogue.fallback_text=¿Cómo?'")
    change.set_defaults(func=cmd_models_set)
    show = models_sub.add_parser("show", help="how a model was made and what it is set to: corpus, training, "
                                             "config, setting changes, files (no weights loaded)")
    show.add_argument("model", help="bundle directory or name under models/")
    shown = show.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="everything as one JSON object")
    shown.add_argument("--config", action="store_true",
                       help="the whole config as JSON, to train another like it (chatbot train --config FILE)")
    show.set_defaults(func=cmd_models_show)

    corpus = sub.add_parser("corpus", help="corpus tools: stats, validate, convert between YAML, TSV and JSONL")
    corpus_sub = corpus.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = corpus_sub.add_parser("stats", help="pairs, duplicates, conflicting answers, lengths, vocabulary")
    stats.add_argument("path", help="corpus file or directory")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    validate = corpus_sub.add_parser("validate", help="every problem with file and line; exit 1 if any")
    validate.add_argument("path", help="corpus file or directory")
    validate.add_argument("--json", action="store_true", help="one JSON object with the list of problems")
    convert = corpus_sub.add_parser("convert", help="write a corpus (file or directory) as one YAML, TSV or JSONL file")
    convert.add_argument("input", help="corpus file or directory")
    convert.add_argument("output", help="file to write; its suffix gives the format (.yml .yaml .tsv .txt .jsonl)")
    convert.add_argument("--format", choices=("yaml", "tsv", "jsonl"), help="output format (default: from the suffix)")
    corpus.set_defaults(func=cmd_corpus)

    evaluate = sub.add_parser("evaluate", help="measure a model: perplexity, exact match, BLEU, chrF, "
                                               "distinct-n, length, latency; golden checks")
    evaluate.add_argument("--model", help="bundle directory or name under models/ (default: models/default)")
    data = evaluate.add_mutually_exclusive_group()
    data.add_argument("--corpus", help="evaluate on every pair of this corpus file or directory")
    data.add_argument("--split", choices=("validation", "train"),
                      help="the bundle's held-out pairs, or the pairs it was trained on "
                           "(default: validation when the model has one, else train)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N distinct questions")
    evaluate.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    evaluate.add_argument("--details", metavar="FILE.jsonl",
                          help="write every question, reply, references, exact, score, confidence and chrF (JSON lines)")
    evaluate.add_argument("--golden", metavar="FILE", help="question<TAB>expected answer cases that must all "
                                                           "pass (exit 1 and list the failures otherwise)")
    evaluate.add_argument("--plot", metavar="FILE.png", help="save reply-length and score distributions")
    evaluate.add_argument("--unanswerable", metavar="FILE",
                          help="questions the model should not answer (one per line, or JSON lines with "
                               "'question'): choose dialogue.min_confidence on them and the evaluated ones")
    evaluate.add_argument("--against", metavar="MODEL",
                          help="also evaluate this model on the same questions, and compare them question by "
                               "question (exact match; McNemar's exact test: could the difference be chance?); "
                               "--details rows then carry its reply too")
    add_decoding_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
    for command in sub.choices.values():  # a usage error found later shows its command's usage
        command.set_defaults(command_parser=command)
    return parser


def _fallback_lines(choice, model_name: str) -> list[str]:
    def share(value) -> str:
        return "-" if value is None else f"{value:.1%}"

    def effect(at) -> str:
        return (f"keeps {share(at.right_kept)} of {choice.right} right replies, drops {share(at.wrong_dropped)} "
                f"of {choice.wrong} wrong ones, answers {share(at.unanswerable_answered)} of {choice.unanswerable} "
                "unanswerable")

    auc = "-" if choice.auc_right_vs_unanswerable is None else f"{choice.auc_right_vs_unanswerable:.3f}"
    cap = "" if choice.cap is None else (f"; at most {choice.cap:g}, the lowest confidence of a right reply to a "
                                          "training question, so that none of those falls back")
    lines = [f"fallback        at min_confidence {choice.current.min_confidence:g} (the model's): {effect(choice.current)}",
             f"                (confidence AUC, right vs unanswerable: {auc}{cap})"]
    best = choice.suggested
    if best is None:
        lines.append("suggested       none: every evaluated reply was wrong, no threshold keeps a right one")
    elif best.accuracy <= choice.current.accuracy:
        lines.append("suggested       the model's own: no threshold does better on these questions")
    else:
        lines += [f"suggested       min_confidence {best.min_confidence:g}: {effect(best)}",
                  f"                (right kept + wrong and unanswerable dropped: {choice.current.accuracy:.1%} -> "
                  f"{best.accuracy:.1%}); to use it: chatbot models set {model_name} "
                  f"dialogue.min_confidence={best.min_confidence:g}"]
    return lines


def one_line(exc: BaseException) -> str:
    """An error as one line: a wrapped library error (TensorFlow's, say) may span several."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _text_out_in_any_encoding() -> None:
    """Replies may be in any script, and an output that cannot encode it must not end the
    command at the first one (cp1252 on a Windows redirect, PYTHONIOENCODING=ascii): files and
    pipes get UTF-8, a terminal gets "?" for what its encoding lacks."""
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure") or stream.encoding.lower().replace("-", "") == "utf8":
            continue
        if stream.isatty():
            stream.reconfigure(errors="replace")
        else:
            stream.reconfigure(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # also for subprocesses TensorFlow starts
    _text_out_in_any_encoding()
    parser = build_parser()
    Parser.json_errors = _asks_for_json_logs(sys.argv[1:] if argv is None else [str(a) for a in argv])
    args = parser.parse_args(argv)
    messages = logging.StreamHandler()  # "chatbot: warning: ...", as the command's own warnings
    messages.setFormatter(CommandFormatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[messages])
    from chatbot.errors import ChatbotError

    try:
        _check_database_argument(getattr(args, "db", None))
        return args.func(args)
    except ChatbotError as exc:
        _say_error(args, one_line(exc))
        return EXIT_ERROR
    except UsageError as exc:
        if not _logs_json(args):
            getattr(args, "command_parser", parser).print_usage(sys.stderr)
        _say_error(args, one_line(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # An interrupted training keeps its state: say how to go on (run again without
        # --resume, it was discarded with a warning).
        later = " (the same command with --resume continues it)" if getattr(args, "command", None) == "train" else ""
        print(f"\nchatbot: interrupted{later}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:  # disk full, permissions, ... met outside the library's own checks
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _say_error(args, f"{where}{exc.strerror or one_line(exc)}")
        return EXIT_ERROR
    except RecursionError:  # a structure too deep to handle, from a file no check above knew
        _say_error(args, "input nested too deeply to read")
        return EXIT_ERROR
    except MemoryError:
        _say_error(args, "out of memory")
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        if args.verbose:
            logging.getLogger("chatbot").error("unexpected error", exc_info=True)
        _say_error(args, f"unexpected {type(exc).__name__}: {one_line(exc)} "
                         "(a bug: please report it; -v shows the traceback)")
        return EXIT_ERROR


def _logs_json(args) -> bool:
    return getattr(args, "log_format", None) == "json"


def _say_error(args, message: str) -> None:
    """The command's last line on stderr: ``chatbot: error: MESSAGE``, or, for ``serve
    --log-format json``, a JSON log line like the server's others (a collector that reads one
    JSON object per line would drop a plain one)."""
    if _logs_json(args):
        from chatbot.cli.json_logs import json_line

        print(json_line("chatbot", logging.ERROR, message), file=sys.stderr)
    else:
        print(f"chatbot: error: {message}", file=sys.stderr)


def _check_database_argument(db: str | None) -> None:
    """A database URL or file name with a NUL byte (``%00`` once URL-decoded) names no file:
    SQLite's driver would raise a bare ValueError on connecting."""
    from urllib.parse import unquote

    from chatbot.errors import StoreError

    for source, value in (("--db", db), ("$CHATBOT_DB", os.environ.get("CHATBOT_DB"))):
        if value is not None and "\x00" in unquote(value):
            raise StoreError(f"{source}: a database URL or file name cannot contain a NUL byte (%00)")
        if value is not None:
            return  # --db given: $CHATBOT_DB is not used


def run() -> None:
    """The ``chatbot`` command: ``main``, then exit without the interpreter's last garbage
    collection over TensorFlow's objects (about a second after every command, /quit included:
    frozen objects are left to the process's end)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # python -m chatbot.cli.main: run the module as imported, not this copy of it,
    from chatbot.cli.main import run as run_imported  # whose classes (UsageError) other modules do not know

    run_imported()
