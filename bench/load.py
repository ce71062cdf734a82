"""Load: many sessions at once on one SQLite file, and nothing lost.

For each thread count N (default 1, 8 and 32), N threads each run their own session of
``--turns`` turns through ONE shared ``ChatBot`` (``ChatBot.load(model, db=...)``), while two
more processes (this script re-run with ``--worker``, each with its own ``ChatBot`` on the
same file) keep running sessions of their own until the threads are done. Questions are
corpus questions drawn with a seeded generator per session, plus about one in eight odd ones
(reworded, mistyped, SQL, emoji, right-to-left, combining marks, a control character, a
2,000-character message).

    python bench/load.py                          # models/default, 1/8/32 threads x 50 turns
    python bench/load.py --quick                  # smoke run: 5 turns per session
    python bench/load.py --threads 4,16 --turns 20 --db /tmp/load.db

Per N: replies/s of the threads (replies / wall time from release to the last thread's end),
p50/p99 of each ``bot.reply`` call, errors (count and the first one), and the same for the two
processes. Afterwards every session (threads, processes, warm-ups) is read back through a fresh
``SessionStore``: 2 messages per successful turn at positions 0..n-1, user/bot alternating,
each user text equal to what was sent (after ``sanitize_message``), each bot text and id equal
to the ``Reply`` returned, each bot message in reply to the user message before it; no session
missing and no extra one; and SQLite's integrity check. ``pass`` is true only when no phase had
an error and nothing was lost, duplicated or out of order. Progress goes to stderr; the figures
are one JSON object on the last line of stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as `chatbot ask` and `chatbot chat` decode

import argparse
import faulthandler
import json
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from _common import DEFAULT_CORPUS, emit, log, peak_rss_mb, percentile

PROCESSES = 2
WARM_UP_REPLIES = 3
ODD_SHARE = 0.125
ODD_QUESTIONS = [
    "whats ur favorite programing language",
    "WHAT IS AI???",
    "what   is    artificial intelligence",
    "Tell me, please, who you are.",
    "hw r u",
    "Robert'); DROP TABLE messages;--",
    "¿Qué es la inteligencia artificial? 🤖🔥",
    "مرحبا، كيف حالك؟",
    "שלום, מה שלומך?",
    "e\u0301\u0301\u0301 zalgo\u0336\u0336 text",
    "a bell\x07 and a NUL\x00 inside",
    "  tabs\tand spaces around  ",
    "why " * 500,
    "你好，你是谁？",
]


# --- questions --------------------------------------------------------------------------------
_QUESTIONS: list[str] | None = None


def corpus_questions(corpus: str) -> list[str]:
    global _QUESTIONS
    if _QUESTIONS is None:
        from chatbot.data.corpus import load_corpus

        _QUESTIONS = sorted({e.question for e in load_corpus(corpus).examples(0, True)})
    return _QUESTIONS


def session_questions(corpus: str, seed: int, label: str, turns: int) -> list[str]:
    """The questions of one session: a function of (seed, label), so the checker can rebuild them."""
    rng = random.Random(f"{seed}:{label}")
    pool = corpus_questions(corpus)
    return [rng.choice(ODD_QUESTIONS) if rng.random() < ODD_SHARE else rng.choice(pool) for _ in range(turns)]


# --- one session ------------------------------------------------------------------------------
def run_session(bot, label: str, questions: list[str]) -> dict:
    """One session, turn after turn; errors are recorded, never raised."""
    record = {"label": label, "session_id": None, "turns": [], "latency_ms": [], "errors": 0, "first_error": None}
    try:
        record["session_id"] = bot.new_session(label).id
    except Exception as exc:  # noqa: BLE001 - reported
        record["errors"] += 1
        record["first_error"] = describe(exc)
        return record
    for question in questions:
        t0 = time.perf_counter()
        try:
            reply = bot.reply(question, session=record["session_id"])
        except Exception as exc:  # noqa: BLE001 - reported
            record["errors"] += 1
            if record["first_error"] is None:
                record["first_error"] = describe(exc)
            record["turns"].append(None)  # the check then expects nothing for this turn
            continue
        record["latency_ms"].append((time.perf_counter() - t0) * 1000)
        record["turns"].append([reply.user_message_id, reply.message_id, reply.text])
    return record


def describe(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log(f"ERROR in {threading.current_thread().name}:\n{tb}")
    return f"{type(exc).__name__}: {exc}"


def summarize(records: list[dict], wall_s: float) -> dict:
    latencies = [ms for r in records for ms in r["latency_ms"]]
    errors = [r for r in records if r["errors"]]
    return {
        "sessions": len(records),
        "replies": len(latencies),
        "wall_s": round(wall_s, 2),
        "replies_per_s": round(len(latencies) / wall_s, 1) if wall_s > 0 else None,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "errors": sum(r["errors"] for r in records),
        "first_error": errors[0]["first_error"] if errors else None,
    }


# --- the worker processes ---------------------------------------------------------------------
def worker(args) -> None:
    """Line protocol on stdin/stdout: prints READY; on ``go PHASE`` runs sessions until ``stop``
    (always finishing the current one), then prints ``RESULT {json}``; ``quit`` ends it."""
    from chatbot.cli.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from chatbot.dialogue.bot import ChatBot

    out = sys.stdout
    bot = ChatBot.load(args.model, db=args.db)
    bot.wait_ready()
    for q in corpus_questions(args.corpus)[:WARM_UP_REPLIES]:
        bot.generate([q])
    bot.store  # noqa: B018 - opens the database now, not on the first timed reply
    print("READY", file=out, flush=True)
    stop = threading.Event()
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "quit":
            break
        if command[0] == "go":
            phase = command[1]
            stop.clear()
            records: list[dict] = []

            def loop(phase=phase, records=records) -> None:
                j = 0
                while not stop.is_set():
                    label = f"{args.run} {phase} {args.tag}-{j}"
                    records.append(run_session(bot, label, session_questions(
                        args.corpus, args.seed, label, args.turns)))
                    j += 1

            t0 = time.perf_counter()
            runner = threading.Thread(target=loop, name=f"{args.tag}-sessions")
            runner.start()
        elif command[0] == "stop":
            stop.set()
            runner.join()
            wall = time.perf_counter() - t0
            print("RESULT " + json.dumps({"wall_s": wall, "records": records}), file=out, flush=True)
    bot.close()


class Worker:
    def __init__(self, tag: str, args, run: str):
        self.tag = tag
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--tag", tag, "--run", run,
                   "--model", args.model, "--db", args.db, "--corpus", args.corpus,
                   "--turns", str(args.turns), "--seed", str(args.seed)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"worker {self.tag}: no {prefix!r} after {timeout:.0f} s") from None
            if line is None:
                raise RuntimeError(f"worker {self.tag} exited (status {self.proc.wait()}) before {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix):]
            log(f"worker {self.tag} stdout: {line}")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the threads ------------------------------------------------------------------------------
def run_threads(bot, args, run: str, phase: str, count: int, workers: list[Worker]) -> tuple[list[dict], float]:
    """``count`` threads released together (and the workers told to go at the same moment);
    returns their session records and the wall seconds from release to the last thread's end."""
    labels = [f"{run} {phase} t{i}" for i in range(count)]
    questions = [session_questions(args.corpus, args.seed, label, args.turns) for label in labels]
    records: list[dict | None] = [None] * count
    barrier = threading.Barrier(count + 1)

    def body(i: int) -> None:
        barrier.wait()
        records[i] = run_session(bot, labels[i], questions[i])

    threads = [threading.Thread(target=body, args=(i,), name=f"load-{phase}-t{i}") for i in range(count)]
    for t in threads:
        t.start()
    for w in workers:
        w.send(f"go {phase}")
    barrier.wait()
    t0 = time.perf_counter()
    deadline = time.monotonic() + args.timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - t0
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        log(f"HANG: {len(stuck)} thread(s) still running after {args.timeout} s: {stuck[:5]}; stacks follow")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        emit({"pass": False, "hang": f"{len(stuck)} of {count} threads still running after {args.timeout} s "
                                     f"in phase {phase}", "quick": args.quick})
        sys.stdout.flush()
        os._exit(1)
    return records, wall


# --- read back --------------------------------------------------------------------------------
def verify(store, expected: list[dict], args, run: str) -> dict:
    """Check each session in ``expected`` against the store; and that the store holds no
    session of this run that is not expected."""
    from chatbot.data.text import sanitize_message

    lost = extra = disorder = text_mismatch = missing_sessions = 0
    first_problem = None
    seen_ids: set[int] = set()
    duplicate_ids = 0
    for record in expected:
        sid = record["session_id"]
        if sid is None:
            continue
        sent = session_questions(args.corpus, args.seed, record["label"], len(record["turns"]))
        want = [(q, t) for q, t in zip(sent, record["turns"]) if t is not None]
        try:
            messages = store.history(sid)
        except Exception as exc:  # noqa: BLE001 - a session that vanished
            missing_sessions += 1
            lost += 2 * len(want)
            first_problem = first_problem or f"session {sid} ({record['label']}): {exc}"
            continue
        lost += max(0, 2 * len(want) - len(messages))
        extra += max(0, len(messages) - 2 * len(want))
        for m in messages:
            duplicate_ids += m.id in seen_ids
            seen_ids.add(m.id)
        ok = [m.position for m in messages] == list(range(len(messages)))
        ok &= [m.role for m in messages] == ["user", "bot"] * (len(messages) // 2) + ["user"] * (len(messages) % 2)
        ok &= all(b.in_reply_to == u.id for u, b in zip(messages[0::2], messages[1::2]))
        ok &= store.get_session(sid).message_count == len(messages)
        texts_ok = len(messages) == 2 * len(want) and all(
            u.text == sanitize_message(q) and u.id == t[0] and b.id == t[1] and b.text == t[2]
            for (q, t), u, b in zip(want, messages[0::2], messages[1::2]))
        text_mismatch += not texts_ok
        disorder += not ok
        if (not ok or not texts_ok) and first_problem is None:
            first_problem = (f"session {sid} ({record['label']}): {len(messages)} messages stored, "
                             f"{2 * len(want)} expected; positions ok {ok}, texts/ids ok {texts_ok}")
    ours = [s for s in store.list_sessions() if (s.name or "").startswith(f"{run} ")]
    expected_ids = {r["session_id"] for r in expected if r["session_id"] is not None}
    unexpected = [s for s in ours if s.id not in expected_ids]
    stored_total = sum(s.message_count for s in ours)
    expected_total = sum(2 * sum(t is not None for t in r["turns"]) for r in expected)
    return {
        "sessions_checked": len(expected_ids),
        "messages_expected": expected_total,
        "messages_stored": stored_total,
        "lost_messages": lost,
        "extra_messages": extra,
        "duplicate_message_ids": duplicate_ids,
        "sessions_out_of_order": disorder,
        "sessions_text_or_id_mismatch": text_mismatch,
        "sessions_missing": missing_sessions + len(expected_ids - {s.id for s in ours}),
        "sessions_unexpected": len(unexpected),
        "first_problem": first_problem,
    }


def clean(check: dict) -> bool:
    return (check["messages_expected"] == check["messages_stored"] and not any(
        check[k] for k in ("lost_messages", "extra_messages", "duplicate_message_ids", "sessions_out_of_order",
                           "sessions_text_or_id_mismatch", "sessions_missing", "sessions_unexpected")))


# --- main -------------------------------------------------------------------------------------
def parse_threads(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("thread counts must be at least 1")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--db", default=None, help="SQLite file (or URL) to load [a fresh temporary file]")
    parser.add_argument("--threads", type=parse_threads, default=[1, 8, 32], help="thread counts [1,8,32]")
    parser.add_argument("--turns", type=int, default=50, help="turns per session [50]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="where questions come from [corpora/english]")
    parser.add_argument("--seed", type=int, default=1234, help="question seed [1234]")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a phase may take before it counts "
                        "as a hang [900]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 turns per session")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="p0", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.turns = min(args.turns, 5)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory(prefix="chatbot-load-") as tmp:
        if args.db is None:
            args.db = str(Path(tmp) / "load.db")
        run_bench(args)


def run_bench(args) -> None:
    from chatbot.cli.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from chatbot.dialogue.bot import ChatBot
    from chatbot.dialogue.store import SessionStore

    run = f"load-{os.getpid()}-{int(time.time())}"
    workers = [Worker(f"p{k}", args, run) for k in range(PROCESSES)]  # they load in parallel with us
    began = time.perf_counter()
    bot = ChatBot.load(args.model, db=args.db)
    bot.wait_ready()
    config = bot.bundle.config
    log(f"loaded {bot.bundle.path} in {time.perf_counter() - began:.1f}s: {config.model.cell.upper()} "
        f"{config.model.units}, max_length {config.decoding.max_length}, context_turns "
        f"{config.data.context_turns}; database {args.db}; {len(corpus_questions(args.corpus))} corpus questions")
    warm = run_session(bot, f"{run} warm", session_questions(args.corpus, args.seed, f"{run} warm", WARM_UP_REPLIES))
    for w in workers:
        w.expect("READY", timeout=300)
    log(f"{PROCESSES} worker processes ready")

    phases = []
    all_records = [warm]
    for n in args.threads:
        phase = f"N{n}"
        log(f"{phase}: {n} thread(s) x {args.turns} turns, plus {PROCESSES} processes running sessions")
        records, wall = run_threads(bot, args, run, phase, n, workers)
        for w in workers:
            w.send("stop")
        results = [json.loads(w.expect("RESULT ", timeout=args.timeout)) for w in workers]
        proc_records = [r for res in results for r in res["records"]]
        threads = summarize(records, wall)
        processes = summarize(proc_records, max(res["wall_s"] for res in results))
        log(f"{phase}: {threads['replies']} replies in {wall:.1f}s = {threads['replies_per_s']} replies/s, "
            f"p50 {threads['p50_ms']} ms, p99 {threads['p99_ms']} ms, {threads['errors']} errors; processes: "
            f"{processes['sessions']} sessions, {processes['replies']} replies, {processes['errors']} errors")
        phases.append({"threads": n, "records": records, "proc_records": proc_records,
                       "summary": {"threads": n, **{k: v for k, v in threads.items() if k != "sessions"},
                                   "processes": processes,
                                   # the host is shared: how busy it was over the last minute
                                   "load_avg_1m": round(os.getloadavg()[0], 2)}})
        all_records += records + proc_records
    for w in workers:
        w.close()
    bot.close()

    # Read everything back through a store of our own, after every writer has closed.
    store = SessionStore(args.db)
    try:
        for p in phases:
            p["summary"]["check"] = verify(store, p["records"] + p["proc_records"], args, f"{run} N{p['threads']}")
            c = p["summary"]["check"]
            log(f"N{p['threads']} read back: {c['sessions_checked']} sessions, {c['messages_stored']} of "
                f"{c['messages_expected']} messages, {c['lost_messages']} lost, {c['extra_messages']} extra, "
                f"{c['sessions_out_of_order']} out of order, {c['sessions_text_or_id_mismatch']} mismatched")
        overall = verify(store, all_records, args, run)
        integrity = store.integrity_check()
    finally:
        store.close()
    log(f"all: {overall['messages_stored']} of {overall['messages_expected']} messages in "
        f"{overall['sessions_checked']} sessions; integrity check {'ok' if integrity else 'FAILED'}")

    ok_phases = all(p["summary"]["errors"] == 0 and p["summary"]["processes"]["errors"] == 0
                    and clean(p["summary"]["check"]) for p in phases)
    largest = max(args.threads)
    emit({
        "phases": [p["summary"] for p in phases],
        "check": overall,
        "integrity_ok": integrity,
        "pass": ok_phases and clean(overall) and integrity and warm["errors"] == 0,
        "pass_rule": f"no errors, nothing lost/duplicated/out of order, up to {largest} threads "
                     f"+ {PROCESSES} processes",
        "turns": args.turns,
        "processes": PROCESSES,
        "model": str(bot.bundle.path),
        "context_turns": config.data.context_turns,
        "max_length": config.decoding.max_length,
        "db_mb": round(Path(args.db).stat().st_size / 2**20, 2) if Path(args.db).exists() else None,
        "seed": args.seed,
        "peak_mb": peak_rss_mb(),
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
