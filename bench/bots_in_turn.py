"""Load, ask and close bots one after another in one process: does the process grow?

    python bench/bots_in_turn.py               # the default model, 20 bots each way (about 3 minutes)
    python bench/bots_in_turn.py --bots 40     # longer

TensorFlow never frees a compiled XLA program, so a process that loaded a bundle anew for
every bot kept each bot's decode programs (and used to crash with SIGSEGV after about 35
bots). ``ChatBot.load`` now shares one model and its compiled decoder among the bots of one
bundle (``chatbot/dialogue/loaded.py``). Two ways, each in a subprocess of its own:
- ``shared``: ``ChatBot.load(model)`` per bot, as applications and the CLI load;
- ``own``: ``ChatBot(Bundle.load(model))`` per bot, a model of its own each time (what
  ``ChatBot.load`` did before).
Each bot answers one question (compiling its greedy loop) and is closed. Reported per way: the
resident memory after the first and the last bot, the growth per bot after the first (a
least-squares slope over bots 2..N), the median seconds to load and answer, and the replies
(every bot must give the same). Target: ``shared`` grows at most 1 MB per bot. The last
stdout line is JSON, also written to ``bench/results/bots_in_turn.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _common import ROOT, emit, log, results_name

QUESTION = "What is your favourite colour?"
GROWTH_MAX_MB = 1.0  # a process loading bots of one bundle in turn stays flat (noise: a few pages)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _slope(values: list[float]) -> float:
    """Least-squares growth per step."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum((x - mean_x) ** 2 for x in range(n))


def run_one_way(way: str, model: str, bots: int) -> dict:
    """In this process: ``bots`` bots loaded, asked and closed in turn."""
    import gc
    import time

    from chatbot.dialogue.bot import ChatBot
    from chatbot.model.bundle import Bundle, resolve_model_path

    path = resolve_model_path(model)
    memory, seconds, replies = [], [], set()
    for _ in range(bots):
        start = time.perf_counter()
        bot = ChatBot.load(path, db="sqlite://") if way == "shared" else ChatBot(Bundle.load(path), db="sqlite://")
        replies.add(bot.ask(QUESTION))
        seconds.append(time.perf_counter() - start)
        bot.close()
        del bot
        gc.collect()
        memory.append(_rss_mb())
    return {"bots": bots, "rss_first_mb": round(memory[0], 1), "rss_last_mb": round(memory[-1], 1),
            "growth_per_bot_mb": round(_slope(memory[1:]), 2), "seconds_per_bot_median": round(statistics.median(seconds), 3),
            "seconds_first_bot": round(seconds[0], 2), "replies": sorted(replies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--bots", type=int, default=20)
    parser.add_argument("--way", choices=("shared", "own"), help=argparse.SUPPRESS)  # a subprocess' own way
    args = parser.parse_args()
    if args.way:
        print(json.dumps(run_one_way(args.way, args.model, args.bots)), flush=True)
        return
    result = {"model": args.model, "question": QUESTION}
    for way in ("shared", "own"):
        log(f"{way}: {args.bots} bots in turn, in a subprocess")
        done = subprocess.run([sys.executable, __file__, "--way", way, "--model", args.model, "--bots", str(args.bots)],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            result[way] = {"exit_code": done.returncode, "stderr_tail": done.stderr[-500:]}
            log(f"{way}: exit code {done.returncode}")
            continue
        result[way] = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"{way}: {result[way]}")
    shared, own = result["shared"], result["own"]
    result["targets"] = {"shared_growth_per_bot_mb_max": GROWTH_MAX_MB, "same_replies": True}
    result["pass"] = ("growth_per_bot_mb" in shared and shared["growth_per_bot_mb"] <= GROWTH_MAX_MB
                      and len(shared["replies"]) == 1 and shared["replies"] == own.get("replies"))
    emit(result, results_name(args.model))


if __name__ == "__main__":
    main()
