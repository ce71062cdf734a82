"""The ``chatbot`` command: parses arguments, calls the library, prints, maps errors to exit codes.

Exit codes: 0 success, 1 a library error (bad corpus, bundle, config, input), 2 bad usage,
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up log lines before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _stderr_quiet_import() -> None:
    """Import TensorFlow with file descriptor 2 muted: absl prints one line before any
    environment variable can stop it ("All log messages before absl::InitializeLog()...")."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
}


def cmd_train(args) -> int:
    from chatbot.config import Config
    from chatbot.corpus import load_corpus
    from chatbot.errors import ConfigError

    config = Config.load(args.config) if args.config else Config()
    overrides = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items()
                 if getattr(args, flag) is not None}
    if args.bidirectional:
        overrides["model.bidirectional"] = True
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    config = config.with_overrides(overrides)

    corpus = load_corpus(args.corpus, strict=args.strict)
    if corpus.skipped:
        print(f"warning: skipped {len(corpus.skipped)} malformed entr"
              f"{'y' if len(corpus.skipped) == 1 else 'ies'} (first: {corpus.skipped[0]})", file=sys.stderr)
    _stderr_quiet_import()
    from chatbot.training import train

    bundle = train(corpus, config, args.out, resume=args.resume, verbose=0 if args.quiet else 1,
                   on_stage=lambda message: print(f"[chatbot] {message}", file=sys.stderr, flush=True))
    metrics = bundle.metrics
    summary = {"model": str(bundle.path), "epochs": metrics["epochs_run"], "seconds": metrics["train_seconds"],
               "train_exact_match": metrics.get("train_exact_match")}
    summary.update({f"validation_{k}": v for k, v in metrics.get("validation", {}).items()})
    print(json.dumps(summary))
    return 0


# --- ask -----------------------------------------------------------------------------------
def cmd_ask(args) -> int:
    _stderr_quiet_import()
    from chatbot.bot import ChatBot

    bot = ChatBot.load(args.model)

    def answer(question: str) -> str:
        if not _clean(question):  # an empty line still gets exactly one (empty) reply line
            return json.dumps({"reply": "", "score": None, "latency_ms": 0.0}) if args.json else ""
        result = bot.generate([question], max_length=args.max_length)[0]
        if args.json:
            return json.dumps({"reply": result.text, "score": round(result.score, 4),
                               "latency_ms": round(result.latency_ms, 2)}, ensure_ascii=False)
        return " ".join(result.text.splitlines())

    if args.question:
        for question in args.question:
            print(answer(question), flush=True)
        return 0
    for line in sys.stdin:
        print(answer(line.rstrip("\n")), flush=True)
    return 0


def _clean(text: str) -> str:
    from chatbot.corpus import clean_text

    return clean_text(text)


# --- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from chatbot import __version__

    parser = argparse.ArgumentParser(prog="chatbot", description="A seq2seq chatbot: train it, ask it, chat with it.")
    parser.add_argument("--version", action="version", version=f"chatbot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model on a corpus and save it as a bundle")
    train.add_argument("--corpus", required=True, help="corpus file or directory (YAML, TSV, JSONL)")
    train.add_argument("--config", help="JSON or TOML config file (defaults for keys left out)")
    train.add_argument("--out", default="models/mine", help="bundle directory to write (default: models/mine)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted training of --out")
    train.add_argument("--strict", action="store_true", help="fail on the first malformed corpus entry")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress bar")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any config key, e.g. --set model.dropout=0.1 (repeatable)")
    for flag, key in TRAIN_FLAGS.items():
        kind = {"learning_rate": float, "dropout": float, "validation_fraction": float,
                "level": str, "cell": str, "attention": str}.get(flag, int)
        train.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"sets {key}")
    train.add_argument("--bidirectional", action="store_true", help="sets model.bidirectional")
    train.set_defaults(func=cmd_train)

    ask = sub.add_parser("ask", help="answer questions given as arguments, or one per stdin line")
    ask.add_argument("question", nargs="*", help="questions; without any, read stdin line by line")
    ask.add_argument("--model", help="bundle directory or name under models/ (default: models/default)")
    ask.add_argument("--json", action="store_true", help="one JSON object per line: reply, score, latency_ms")
    ask.add_argument("--max-length", type=int, help="tokens generated at most per reply")
    ask.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    from chatbot.errors import ChatbotError

    try:
        return args.func(args)
    except ChatbotError as exc:
        print(f"chatbot: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nchatbot: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
