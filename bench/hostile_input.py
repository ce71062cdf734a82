"""How long hostile input takes: the speed side of ``tests/test_hostile_input.py``.

The tests check what hostile corpus files, messages and tokenizer input do (a reply or a
clear one-line error) and bound the work and memory they take, but assert no wall-clock
time. This script times the same inputs against the limits those tests used to assert:

    python bench/hostile_input.py                    # models/default for the replies
    python bench/hostile_input.py --model /tmp/tiny --quick

* corpus loads (lenient and strict): every file in ``tests/data/nasty/`` (< 5 s each), a
  3,000-alias fan-out (< 5 s), a 10 MB line in each format (< 30 s);
* the tokenizer at each level on a megabyte of mixed-script text (< 20 s);
* ``ChatBot.reply`` on each nasty message (< 20 s) and on a megabyte (< 30 s).

``--quick`` leaves out the 10 MB lines and the megabyte reply (and writes no result file).
Progress goes to stderr; the figures are one JSON object on the last line of stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, log

NASTY = ROOT / "tests" / "data" / "nasty"
MB10 = 10 * 2**20
TARGETS_S = {"nasty_file_load_max": 5, "alias_fan_out_load_max": 5, "ten_mb_line_load_max": 30,
             "tokenize_megabyte_max": 20, "nasty_message_reply_max": 20, "megabyte_reply_max": 30}
# The messages of tests/test_hostile_input.py's NASTY_MESSAGES that have a UTF-8 form (the
# others are refused before any work is done).
NASTY_MESSAGES = [
    "", " ", "\t\n \r\n", "\u200b", "\u3000",
    "e\u0301\u0301\u0301\u0301\u0301", "Z\u0351\u0352\u0353\u0354\u0355\u0356\u0357" * 50,
    "\u202eolleH\u202c", "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "\U0001F469\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7 \U0001F44D\U0001F3FD",
    "\x00\x01\x07\x1b[31mred\x1b[0m\x7f\x85\x9b", "Hi\rthere\x0bvertical\x0cfeed",
    "\ufdd0end [END] <sep> \ufdd0sep", "\ufeffHi", "\U0010FFFF\uFFFE\uFFFF",
]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result or the exception raised)."""
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # a typed error is a fine outcome here; only the time is measured
        result = exc
    return time.perf_counter() - start, result


def load_both(path: Path) -> float:
    """Seconds of the slower of the lenient and strict loads of ``path``."""
    from chatbot.data.corpus import load_corpus

    return max(timed(load_corpus, path, strict=strict)[0] for strict in (False, True))


def corpus_loads(work: Path, quick: bool) -> dict:
    nasty = {p.name: round(load_both(p), 3) for p in sorted(NASTY.iterdir())}
    log(f"nasty files: slowest {max(nasty.values()):.3f} s")
    fan_out = work / "fanout.yml"
    n = 3000
    fan_out.write_text("a: &a [" + ", ".join(["lol"] * n) + "]\nconversations: [" + ", ".join(["*a"] * n) + "]\n",
                       encoding="utf-8")
    result = {"nasty_files_s": nasty, "alias_fan_out_s": round(load_both(fan_out), 3)}
    log(f"alias fan-out: {result['alias_fan_out_s']:.3f} s")
    if not quick:
        big = "x" * MB10
        lines = {".tsv": f"{big}\ty\nHi\tHello\n{big}\n",
                 ".jsonl": json.dumps({"question": big, "answer": "y"}) + '\n{"question": "Hi", "answer": "Hello"}\n'
                           + big + "\n",
                 ".yml": f"conversations:\n- - {big}\n  - y\n- [Hi, Hello]\n"}
        result["ten_mb_line_s"] = {}
        for suffix, text in lines.items():
            path = work / f"huge{suffix}"
            path.write_text(text, encoding="utf-8")
            from chatbot.data.corpus import load_corpus

            result["ten_mb_line_s"][suffix] = round(timed(load_corpus, path)[0], 3)
            path.unlink()
            log(f"10 MB line ({suffix}): {result['ten_mb_line_s'][suffix]:.3f} s")
    return result


def tokenize_megabyte() -> dict:
    from chatbot.data.tokenizer import TextTokenizer

    text = ["Hello there!", "How are you?", "I am fine, thanks.", "What is AI?", "A field of study."]
    megabyte = ("Hello there! \u05e9\u05dc\u05d5\u05dd e\u0301 \U0001F600 " * 40_000)[: 2**20]
    seconds = {}
    for level in ("char", "word", "subword"):
        tokenizer = TextTokenizer.fit(text, level=level, vocab_size=80)
        seconds[level] = round(timed(tokenizer.encode, megabyte)[0], 3)
        log(f"tokenize a megabyte ({level}): {seconds[level]:.3f} s")
    return seconds


def replies(model: str, work: Path, quick: bool) -> dict:
    from chatbot.dialogue.bot import ChatBot

    # The megabyte is over the default dialogue.max_message_chars: raised, so it is answered, not refused.
    with ChatBot.load(model, db=f"sqlite:///{work / 'chat.db'}", dialogue={"max_message_chars": 10**8}) as bot:
        bot.reply("Hello")  # the first reply waits for the decode loop's trace: not measured
        per_message = [round(timed(bot.reply, text)[0], 3) for text in NASTY_MESSAGES]
        result = {"model": str(bot.bundle.path), "nasty_message_reply_s": per_message}
        log(f"nasty messages: slowest reply {max(per_message):.3f} s")
        if not quick:
            megabyte = ("What is AI? \u05e9\u05dc\u05d5\u05dd \U0001F600\x07 " * 40_000)[: 2**20]
            result["megabyte_reply_s"] = round(timed(bot.reply, megabyte)[0], 3)
            log(f"a megabyte message: {result['megabyte_reply_s']:.3f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--quick", action="store_true", help="leave out the 10 MB lines and the megabyte reply")
    args = parser.parse_args()
    logging.getLogger("chatbot").setLevel(logging.ERROR)  # the skipped-entry warnings are expected

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        loads = corpus_loads(work, args.quick)
        tokenize = tokenize_megabyte()
        reply = replies(args.model, work, args.quick)

    measured = {
        "nasty_file_load_max": max(loads["nasty_files_s"].values()),
        "alias_fan_out_load_max": loads["alias_fan_out_s"],
        "tokenize_megabyte_max": max(tokenize.values()),
        "nasty_message_reply_max": max(reply["nasty_message_reply_s"]),
    }
    if not args.quick:
        measured["ten_mb_line_load_max"] = max(loads["ten_mb_line_s"].values())
        measured["megabyte_reply_max"] = reply["megabyte_reply_s"]
    within = {name: value < TARGETS_S[name] for name, value in measured.items()}
    result = {"targets_s": TARGETS_S, "measured_s": measured, "within_targets": within,
              "all_within_targets": all(within.values()), "corpus_loads": loads, "tokenize_megabyte_s": tokenize,
              "replies": reply}
    if args.quick:
        result["partial"] = True
    emit(result)
    sys.exit(0 if result["all_within_targets"] else 1)


if __name__ == "__main__":
    main()
