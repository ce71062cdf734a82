"""Dialogue throughput: ``ChatBot.reply`` end to end (store the user's message, read the
history, decode, store the reply) against the bare generator, in one session and in 8
concurrent sessions sharing one ``ChatBot``, on a fresh SQLite database.

    python bench/dialogue_throughput.py                        # models/default, 200 + 8x50 replies
    python bench/dialogue_throughput.py --model /tmp/tiny --quick

Noise (the CPU is often shared) must hit both sides of the comparison alike, so the two
are measured interleaved on the same questions: in one session each question is decoded
bare *and* replied to, in alternating order (generator first on even questions, reply
first on odd ones); with 8 sessions the questions are split into rounds, and each round
runs once through the bare generator and once through ``reply`` on 8 threads, again in
alternating order. The bare generator gets the same context the reply will see (the last
``data.context_turns`` turns of that session), so both decode the same input to the same
reply and the difference is what the dialogue manager adds.

``db_overhead_p50_ms`` = reply p50 - generator p50 (one session), and
``db_overhead_paired_p50_ms`` = the median over questions of (reply - generator) for the same
question decoded back to back. The target is judged on the paired figure: the difference of two
medians also depends on which questions happen to sit at each median, and swung by +-0.5 ms
between runs on a shared host while the paired one stayed within 1.76-1.94 ms. Afterwards every session
is read back: 2 messages per reply, positions 0..n-1, user/bot alternating, each bot
message answering the user message before it. Progress goes to stderr; the figures are one
JSON object on the last line of stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as `chatbot ask` and `chatbot chat` decode

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import DEFAULT_CORPUS, emit, log, peak_rss_mb, percentile

TARGETS = {"db_overhead_p50_ms_max": 2}
WARM_UP_REPLIES = 5


def sample_questions(corpus: str, count: int, seed: int) -> list[str]:
    """``count`` corpus questions, a seeded sample: distinct while the corpus has enough
    (sorted first, so the sample does not depend on file order), then cycling."""
    from chatbot.data.corpus import load_corpus

    questions = sorted({e.question for e in load_corpus(corpus).examples(0, True)})
    random.Random(seed).shuffle(questions)
    if count > len(questions):
        log(f"the corpus has only {len(questions)} distinct questions; some are asked twice")
    return [questions[i % len(questions)] for i in range(count)]


def summary(ms: list[float]) -> dict:
    return {"p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan")}


class Transcript:
    """A session's turns as the bot will read them back, for the bare generator's context."""

    def __init__(self, bot):
        self.turns_per_input = bot.bundle.config.data.context_turns
        self.threshold = bot.dialogue.fallback_threshold
        self.fallback_text = bot.dialogue.fallback_text
        self.turns: list[str] = []

    def context(self) -> list[str]:
        return self.turns[-self.turns_per_input:] if self.turns_per_input else []

    def add(self, question: str, answer: str) -> None:
        self.turns += [question, answer]

    def add_generation(self, question: str, generation) -> None:
        """What ``reply`` would store for this generation (the fallback text below threshold)."""
        fallback = generation.score < self.threshold
        self.add(question, self.fallback_text if fallback else generation.text)


def timed_generate(bot, question: str, transcript: Transcript) -> tuple[float, object]:
    context = transcript.context()
    t0 = time.perf_counter()
    generation = bot.generate([question], [context])[0]
    return (time.perf_counter() - t0) * 1000, generation


def timed_reply(bot, question: str, session_id: int):
    t0 = time.perf_counter()
    reply = bot.reply(question, session=session_id)
    return (time.perf_counter() - t0) * 1000, reply


# --- one session ------------------------------------------------------------------------------
def one_session(bot, questions: list[str]) -> dict:
    session_id = bot.new_session("bench 1 session").id
    generator_tx, generator_ms, reply_ms, paired, outside_decode, mismatches = Transcript(bot), [], [], [], [], 0
    for i, question in enumerate(questions):
        if i % 2 == 0:
            g_ms, generation = timed_generate(bot, question, generator_tx)
            r_ms, reply = timed_reply(bot, question, session_id)
        else:
            r_ms, reply = timed_reply(bot, question, session_id)
            g_ms, generation = timed_generate(bot, question, generator_tx)
        generator_tx.add(question, reply.text)  # the stored history, exactly
        mismatches += generation.text != reply.text and not reply.fallback
        generator_ms.append(g_ms)
        reply_ms.append(r_ms)
        paired.append(r_ms - g_ms)
        outside_decode.append(r_ms - reply.latency_ms)  # everything in reply() but the decode loop
        if (i + 1) % 50 == 0 or i + 1 == len(questions):
            log(f"1 session: {i + 1}/{len(questions)}, p50 generator {percentile(generator_ms, 50):.2f} ms, "
                f"reply {percentile(reply_ms, 50):.2f} ms")
    return {"session_id": session_id, "generator_ms": generator_ms, "reply_ms": reply_ms,
            "paired_ms": paired, "outside_decode_ms": outside_decode, "mismatches": mismatches}


# --- concurrent sessions ----------------------------------------------------------------------
def run_threads(count: int, work) -> float:
    """``work(thread_index)`` on ``count`` threads released together; returns the wall seconds
    from release to the last thread's end. Exceptions are re-raised in the caller."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"bench-{i}") for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall


def concurrent_sessions(bot, questions: list[list[str]], rounds: int) -> dict:
    threads = len(questions)
    per_thread = len(questions[0])
    session_ids = [bot.new_session(f"bench thread {i}").id for i in range(threads)]
    generator_tx = [Transcript(bot) for _ in range(threads)]
    generator_ms: list[list[float]] = [[] for _ in range(threads)]
    reply_ms: list[list[float]] = [[] for _ in range(threads)]
    generator_wall = reply_wall = 0.0
    bounds = [per_thread * r // rounds for r in range(rounds + 1)]

    for r in range(rounds):
        lo, hi = bounds[r], bounds[r + 1]

        def generate_round(t: int) -> None:
            for question in questions[t][lo:hi]:
                ms, generation = timed_generate(bot, question, generator_tx[t])
                generator_tx[t].add_generation(question, generation)
                generator_ms[t].append(ms)

        def reply_round(t: int) -> None:
            for question in questions[t][lo:hi]:
                reply_ms[t].append(timed_reply(bot, question, session_ids[t])[0])

        for kind in (("generator", "reply") if r % 2 == 0 else ("reply", "generator")):
            if kind == "generator":
                generator_wall += run_threads(threads, generate_round)
            else:
                reply_wall += run_threads(threads, reply_round)
        log(f"{threads} sessions: round {r + 1}/{rounds}, {hi}/{per_thread} replies per session, "
            f"{threads * hi / reply_wall:.1f} replies/s, {threads * hi / generator_wall:.1f} bare generations/s")
    flat_g = [ms for per in generator_ms for ms in per]
    flat_r = [ms for per in reply_ms for ms in per]
    return {"session_ids": session_ids, "generator_ms": flat_g, "reply_ms": flat_r,
            "generator_wall_s": generator_wall, "reply_wall_s": reply_wall}


# --- read back --------------------------------------------------------------------------------
def verify(store, expected: dict[int, int]) -> dict:
    """Every session holds 2 messages per reply at positions 0..n-1, user/bot alternating,
    each bot message in reply to the user message just before it."""
    lost = extra = disorder = 0
    for session_id, replies in expected.items():
        messages = store.history(session_id)
        want = 2 * replies
        lost += max(0, want - len(messages))
        extra += max(0, len(messages) - want)
        ok = [m.position for m in messages] == list(range(len(messages)))
        ok &= [m.role for m in messages] == ["user", "bot"] * (len(messages) // 2) + ["user"] * (len(messages) % 2)
        ok &= all(b.in_reply_to == u.id for u, b in zip(messages[0::2], messages[1::2]))
        ok &= store.get_session(session_id).message_count == len(messages)
        disorder += not ok
    return {"lost_messages": lost, "extra_messages": extra, "sessions_out_of_order": disorder,
            "sessions_checked": len(expected), "messages_checked": sum(2 * n for n in expected.values()),
            "integrity_ok": store.integrity_check()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="where questions come from [corpora/english]")
    parser.add_argument("--replies", type=int, default=200, help="replies in the single session [200]")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions, one thread each [8]")
    parser.add_argument("--replies-per-session", type=int, default=50,
                        help="replies per concurrent session [50]")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating generator/reply rounds of the concurrent run [5]")
    parser.add_argument("--seed", type=int, default=1234, help="question sample seed [1234]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 replies, 8x10 in 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.replies, args.replies_per_session = min(args.replies, 40), min(args.replies_per_session, 10)
        args.rounds = min(args.rounds, 2)
    if min(args.replies, args.sessions, args.replies_per_session, args.rounds) < 1:
        parser.error("--replies, --sessions, --replies-per-session and --rounds must be at least 1")
    args.rounds = min(args.rounds, args.replies_per_session)

    from chatbot.dialogue.bot import ChatBot

    with tempfile.TemporaryDirectory(prefix="chatbot-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        began = time.perf_counter()
        bot = ChatBot.load(args.model, db=str(db))  # warms up (traces) the generator
        config = bot.bundle.config
        log(f"loaded {bot.bundle.path} in {time.perf_counter() - began:.1f}s: {config.model.cell.upper()} "
            f"{config.model.units}, max_length {config.decoding.max_length}, "
            f"context_turns {config.data.context_turns}; database {db}")
        concurrent_total = args.sessions * args.replies_per_session
        questions = sample_questions(args.corpus, WARM_UP_REPLIES + args.replies + concurrent_total, args.seed)
        warm, questions = questions[:WARM_UP_REPLIES], questions[WARM_UP_REPLIES:]
        single_q, questions = questions[:args.replies], questions[args.replies:]
        per_thread_q = [questions[t::args.sessions] for t in range(args.sessions)]

        # Untimed: open the database, create the schema, fill SQLAlchemy's statement caches.
        warm_session = bot.new_session("bench warm-up").id
        for question in warm:
            bot.generate([question])
            bot.reply(question, session=warm_session)
        expected = {warm_session: len(warm)}

        single = one_session(bot, single_q)
        expected[single["session_id"]] = args.replies
        many = concurrent_sessions(bot, per_thread_q, args.rounds)
        expected.update({sid: args.replies_per_session for sid in many["session_ids"]})

        checked = verify(bot.store, expected)
        log(f"read back {checked['sessions_checked']} sessions, {checked['messages_checked']} messages expected: "
            f"{checked['lost_messages']} lost, {checked['extra_messages']} extra, "
            f"{checked['sessions_out_of_order']} out of order")
        db_mb = round(db.stat().st_size / 2**20, 2)
        trace_count = bot.generator.trace_count
        bot.close()

    generator = summary(single["generator_ms"])
    reply = summary(single["reply_ms"])
    overhead = reply["p50_ms"] - generator["p50_ms"]
    many_g, many_r = summary(many["generator_ms"]), summary(many["reply_ms"])
    paired = percentile(single["paired_ms"], 50)
    correct = (checked["lost_messages"] == 0 and checked["extra_messages"] == 0
               and checked["sessions_out_of_order"] == 0 and checked["integrity_ok"])
    emit({
        "generator_p50_ms": generator["p50_ms"],
        "generator_p90_ms": generator["p90_ms"],
        "reply_p50_ms": reply["p50_ms"],
        "reply_p90_ms": reply["p90_ms"],
        "replies_per_s": round(len(single["reply_ms"]) / (sum(single["reply_ms"]) / 1000), 1),
        "db_overhead_p50_ms": round(overhead, 3),
        # Same figure from the per-question differences (reply - generator, same question):
        "db_overhead_paired_p50_ms": round(paired, 3),
        # reply wall time minus the decode time reply() itself measured: no decode noise at all.
        "reply_outside_decode_p50_ms": round(percentile(single["outside_decode_ms"], 50), 3),
        "reply_outside_decode_p90_ms": round(percentile(single["outside_decode_ms"], 90), 3),
        "generator_reply_mismatches": single["mismatches"],
        "concurrent": {
            "sessions": args.sessions,
            "replies": len(many["reply_ms"]),
            "rounds": args.rounds,
            "reply_p50_ms": many_r["p50_ms"],
            "reply_p90_ms": many_r["p90_ms"],
            "replies_per_s": round(len(many["reply_ms"]) / many["reply_wall_s"], 1),
            "generator_p50_ms": many_g["p50_ms"],
            "generator_p90_ms": many_g["p90_ms"],
            "generations_per_s": round(len(many["generator_ms"]) / many["generator_wall_s"], 1),
        },
        **checked,
        "targets": TARGETS,
        "pass": paired <= TARGETS["db_overhead_p50_ms_max"] and correct,
        "replies": args.replies,
        "model": str(bot.bundle.path),
        "context_turns": config.data.context_turns,
        "max_length": config.decoding.max_length,
        "trace_count": trace_count,
        "db_mb": db_mb,
        "seed": args.seed,
        "peak_mb": peak_rss_mb(),
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
