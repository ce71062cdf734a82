"""What a huge message costs through ``ChatBot`` (issue 19, item 6).

A 1 KB, a 1 MB and a 10 MB message, each through ``ChatBot.reply`` (the message is stored
whole, then answered) and ``ChatBot.ask`` (stateless), with ``dialogue.max_message_chars``
raised to 100,000,000 so that nothing is refused. Only the end of a message that the model can
read is cleaned and tokenised, so the targets are: a 10 MB message costs at most 5x a 1 KB one,
and less than 100 MB of memory beyond the message itself. Also timed: refusing a 10 MB message
under the default limit.

    python bench/huge_message.py                      # models/default
    python bench/huge_message.py --model /tmp/tiny    # any bundle
    python bench/huge_message.py --train-tiny         # trains a small model here first (about a minute)
    python bench/huge_message.py --quick              # fewer repeats; writes no result file

Progress goes to stderr; the figures are one JSON object on the last line of stdout (and, for a
full run, ``bench/results/huge_message.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, log, peak_rss_mb

SIZES = {"1KB": 2**10, "1MB": 2**20, "10MB": 10 * 2**20}
TARGET_RATIO = 5.0  # 10 MB vs 1 KB, median seconds
TARGET_EXTRA_MB = 100.0  # peak resident memory added by the 10 MB messages
SENTENCE = "Hello there, what is AI and how are you today? "


def message(size: int) -> str:
    """``size`` characters of plain chat text ending in a question."""
    tail = " What is AI?"
    return (SENTENCE * (size // len(SENTENCE) + 1))[: size - len(tail)] + tail


def rss_mb() -> float:
    """Resident memory now (``/proc/self/statm``), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def median_seconds(fn, text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def train_tiny(out: Path) -> Path:
    """A small model on tests/data/tiny_pairs.tsv, as the test suite trains one."""
    from chatbot.config import Config
    from chatbot.training.pipeline import train

    config = Config().with_overrides({
        "tokenizer.vocab_size": 300, "model.embedding_dim": 32, "model.units": 64,
        "training.epochs": 30, "training.batch_size": 10, "training.learning_rate": 0.02,
        "data.validation_fraction": 0.0, "data.max_output_tokens": 40, "decoding.max_length": 40,
        "data.noisy_copies": 0,
    })
    log("training a tiny model")
    train(ROOT / "tests" / "data" / "tiny_pairs.tsv", config, out, verbose=0)
    return out


def measure(model: str, work: Path, repeats: dict[str, int]) -> dict:
    from chatbot.dialogue.bot import ChatBot
    from chatbot.errors import InputError

    texts = {name: message(size) for name, size in SIZES.items()}  # the caller's memory, made first
    with ChatBot.load(model, db=f"sqlite:///{work / 'chat.db'}",
                      dialogue={"max_message_chars": 100_000_000}) as bot:
        session = bot.new_session("bench").id

        def reply(text):
            return bot.reply(text, session=session)

        calls = {"reply": reply, "ask": bot.ask}
        for call in calls.values():
            call(texts["1KB"])  # the first call waits for the decode loop's trace: not measured
        seconds: dict[str, dict[str, float]] = {name: {} for name in calls}
        for name, call in calls.items():
            seconds[name]["1KB"] = median_seconds(call, texts["1KB"], repeats["1KB"])
        before = {"peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb()}
        for name, call in calls.items():  # 10 MB before 1 MB: the peak it adds is its own
            seconds[name]["10MB"] = median_seconds(call, texts["10MB"], repeats["10MB"])
            log(f"{name} 10 MB: {seconds[name]['10MB'] * 1000:.1f} ms")
        after = {"peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb()}
        for name, call in calls.items():
            seconds[name]["1MB"] = median_seconds(call, texts["1MB"], repeats["1MB"])
        path = Path(bot.bundle.path).resolve()
        model_path = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        limits = {"max_input_tokens": bot.bundle.config.data.max_input_tokens,
                  "context_turns": bot.bundle.config.data.context_turns}

        default_limit = bot.dialogue.with_overrides({"max_message_chars": 20_000})
        bot.dialogue, began = default_limit, time.perf_counter()
        try:
            bot.reply(texts["10MB"], session=session)
        except InputError:
            refused_ms = (time.perf_counter() - began) * 1000
        else:
            raise SystemExit("a 10 MB message was not refused under max_message_chars 20,000")

    ms = {name: {size: round(s * 1000, 2) for size, s in by_size.items()} for name, by_size in seconds.items()}
    ratio = {name: round(by_size["10MB"] / by_size["1KB"], 2) for name, by_size in seconds.items()}
    extra_mb = round(after["peak_rss_mb"] - before["peak_rss_mb"], 1)
    for name in calls:
        log(f"{name}: 1 KB {ms[name]['1KB']} ms, 1 MB {ms[name]['1MB']} ms, 10 MB {ms[name]['10MB']} ms "
            f"(10 MB / 1 KB = {ratio[name]}x)")
    log(f"peak memory added by the 10 MB messages: {extra_mb} MB; refused at the default limit in "
        f"{refused_ms:.3f} ms")
    return {"model": model_path, "model_limits": limits, "median_ms": ms, "ratio_10mb_to_1kb": ratio,
            "extra_peak_rss_mb_10mb": extra_mb, "rss_mb": {"before_10mb": before, "after_10mb": after},
            "refused_10mb_at_default_limit_ms": round(refused_ms, 3), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "default"),
                        help="bundle directory or name [models/default]")
    parser.add_argument("--train-tiny", action="store_true", help="train a small model here and use it")
    parser.add_argument("--quick", action="store_true", help="fewer repeats; no result file")
    args = parser.parse_args()
    repeats = {"1KB": 5, "1MB": 2, "10MB": 2} if args.quick else {"1KB": 30, "1MB": 7, "10MB": 5}

    from chatbot.cli.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # no oneDNN/CUDA banners between the progress lines
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(train_tiny(work / "tiny")) if args.train_tiny else args.model
        result = measure(model, work, repeats)

    within = {"ratio": all(r <= TARGET_RATIO for r in result["ratio_10mb_to_1kb"].values()),
              "memory": result["extra_peak_rss_mb_10mb"] < TARGET_EXTRA_MB}
    result = {"targets": {"ratio_10mb_to_1kb_max": TARGET_RATIO, "extra_peak_rss_mb_max": TARGET_EXTRA_MB},
              "within_targets": within, "all_within_targets": all(within.values()), **result}
    if args.quick or args.train_tiny:
        result["partial"] = True  # the committed figures are the default model's, full repeats
    emit(result)
    sys.exit(0 if result["all_within_targets"] else 1)


if __name__ == "__main__":
    main()
