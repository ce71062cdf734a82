"""Load on ``chatbot serve``: batching, several workers on one database, a worker killed.

1. batching: one worker; one client asking one question at a time, then 32 clients at once
   (stateless chat completions). Replies/s of both and their ratio (target: >= 4x), measured
   in steady state: each phase runs once unmeasured first (it compiles the decode loops for
   the input widths and batch sizes it meets), and the 32 clients ask 1,200 questions.
2. workers: 2 and 4 uvicorn workers sharing one SQLite and one PostgreSQL database, 64
   clients, each in its own session (``X-Session``), a bounded number of requests in all.
   Then the database is read back: every message stored exactly once and in order.
3. kill: the same on PostgreSQL with 4 workers, one of them killed with SIGKILL mid-run.
   Only requests in flight on it may fail; every acknowledged turn is stored; uvicorn starts
   a new worker and the server keeps answering.

PostgreSQL comes from the machine's own binaries (tests/postgres.py starts a throwaway
server). Figures go to bench/results/serve_load.json (the last stdout line).

    python bench/serve_load.py [--requests 5000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, log, machine, percentile  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from live_server import free_port  # noqa: E402  (the tests' helper)


def questions(count: int) -> list[str]:
    from chatbot.data.corpus import load_corpus

    import logging
    logging.getLogger("chatbot.data.corpus").setLevel(logging.ERROR)
    pairs = load_corpus(ROOT / "corpora" / "english").examples(0, True)
    asked = [e.question for e in pairs if len(e.answer) < 300]  # long code answers: a few, not all
    return [asked[(i * 7919) % len(asked)] for i in range(count)]


class Server:
    def __init__(self, model: str, db: str, workers: int, max_batch: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CHATBOT_API_KEYS": ""}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatbot.cli.main", "serve", "--model", model, "--db", db,
             "--port", str(self.port), "--workers", str(workers),
             *(["--max-batch", str(max_batch)] if max_batch else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.workers = workers

    def wait_ready(self, timeout: float = 240) -> float:
        """Seconds until every worker was ready. Returns once none is still compiling greedy
        decoding's programs too (which the server does after ready, beside its requests), so
        that no measured run shares the CPU with it; ``compiled_s`` says when that was."""
        import httpx

        started, streak, idle_streak, ready_s = time.monotonic(), 0, 0, None
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2)
                ok = response.status_code == 200
                idle = ok and not response.json().get("compiling")
            except (httpx.HTTPError, ValueError):
                ok = idle = False
            streak = streak + 1 if ok else 0
            if streak >= 4 * self.workers and ready_s is None:  # every worker (connections land on any)
                ready_s = time.monotonic() - started
            idle_streak = idle_streak + 1 if idle else 0
            if ready_s is not None and idle_streak >= 4 * self.workers:
                self.compiled_s = time.monotonic() - started
                return ready_s
            time.sleep(0.25 if ok else 1.0)
        raise RuntimeError("the server did not become ready")

    def compiled_programs(self) -> int | None:
        """The decode-loop programs the server has compiled (its /metrics), one worker only:
        with several, each answers for itself."""
        import httpx

        if self.workers != 1:
            return None
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("chatbot_compiled_programs "):
                return int(float(line.split()[1]))
        return None

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        return [p for p in pids if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each process that holds a model (the server itself with one worker)."""
        pids = self.worker_pids() if self.workers > 1 else [self.process.pid]
        sizes = []
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(round(int(line.split()[1]) / 1024, 1))
        return sizes

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its workers so far."""
        return sum(map(process_cpu_seconds, [self.process.pid, *self.worker_pids()]))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_clients(url: str, asked: list[str], clients: int, session_prefix: str | None,
                      on_progress=None, settings: dict | None = None) -> dict:
    """``clients`` concurrent clients share ``asked`` (each takes the next question when it has
    its reply). Returns latencies, errors and, per session, the acknowledged turns in order."""
    import httpx

    queue = list(reversed(asked))
    latencies, errors = [], []
    acknowledged: dict[str, list[tuple[str, str]]] = {}
    failed: dict[str, list[str]] = {}
    done = [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def client(index: int):
            session = f"{session_prefix}-{index}" if session_prefix else None
            headers = {"X-Session": session} if session else {}
            while queue:
                question = queue.pop()
                body = {"model": "default", "messages": [{"role": "user", "content": question}], **(settings or {})}
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/chat/completions", json=body, headers=headers)
                    ok = response.status_code == 200
                    reply = response.json()["choices"][0]["message"]["content"] if ok else None
                    error = None if ok else f"{response.status_code} {response.text[:120]}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    reply, error = None, f"{type(exc).__name__}: {exc}"[:160]
                if error is None:
                    latencies.append(time.perf_counter() - started)
                    if session:
                        acknowledged.setdefault(session, []).append((question, reply))
                else:
                    errors.append(error)
                    if session:
                        failed.setdefault(session, []).append(question)
                done[0] += 1
                if on_progress:
                    on_progress(done[0])

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "acknowledged": acknowledged,
            "failed": failed}


def figures(run: dict) -> dict:
    ms = [x * 1000 for x in run["latencies"]]
    return {"requests": len(ms) + len(run["errors"]), "errors": len(run["errors"]),
            "replies_per_s": round(len(ms) / run["elapsed"], 1), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1), "seconds": round(run["elapsed"], 1)}


def check_store(db: str, run: dict, allow_failed: bool) -> dict:
    """Every acknowledged turn stored once, in order; nothing else but (with ``allow_failed``)
    the questions of requests that failed in flight."""
    from chatbot.dialogue.store import SessionStore

    problems = []
    with SessionStore(db) as store:
        stored_sessions = 0
        for session, turns in run["acknowledged"].items():
            history = store.history(store.get_session(session).id)
            stored_sessions += 1
            texts = [(m.role, m.text) for m in history]
            expected = [t for q, r in turns for t in (("user", q), ("bot", r))]
            if not allow_failed:
                if texts != expected:
                    problems.append(f"{session}: stored {len(texts)} messages, expected {len(expected)}")
                continue
            # With failures: acknowledged turns appear in order, each once; a failed request may
            # have left its question (stored before the worker died), never a reply.
            position = 0
            for want in expected:
                while position < len(texts) and texts[position] != want:
                    if texts[position][0] == "bot":
                        problems.append(f"{session}: an unacknowledged reply at {position}")
                    position += 1
                if position == len(texts):
                    problems.append(f"{session}: acknowledged {want[0]} message missing")
                    break
                position += 1
            positions = [m.position for m in history]
            if positions != list(range(len(positions))):
                problems.append(f"{session}: positions are not 0..n-1")
        messages = sum(len(t) * 2 for t in run["acknowledged"].values())
    return {"sessions": stored_sessions, "acknowledged_messages": messages, "problems": problems[:10],
            "problem_count": len(problems)}


def measured(server: Server, asked: list[str], clients: int, settings: dict | None = None) -> dict:
    """``figures`` of a run, with the CPU time it cost, per reply: the server's, and this
    process's (the clients share the 2 cores with the server)."""
    import resource

    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    server_before, client_before = server.cpu_seconds(), own_cpu()
    programs_before = server.compiled_programs()
    result = figures(asyncio.run(run_clients(server.url, asked, clients, None, settings=settings)))
    replies = max(1, result["requests"] - result["errors"])
    if programs_before is not None:  # compiled during the run: replies that waited for XLA
        result["programs_compiled"] = server.compiled_programs() - programs_before
    result["server_cpu_ms_per_reply"] = round((server.cpu_seconds() - server_before) * 1000 / replies, 2)
    result["client_cpu_ms_per_reply"] = round((own_cpu() - client_before) * 1000 / replies, 2)
    return result


def batching_phase(model: str, tmp: Path, quick: bool, settings: dict | None = None,
                   max_batch: int | None = None) -> dict:
    """One worker, stateless replies: one client at a time, then 32 clients at once with the
    server's batching and with --max-batch 1 (each request decoded alone: the control).
    ``settings`` go into every request (``{"temperature": 0}``: greedy replies)."""
    asked = questions(400 if not quick else 80)
    rounds = 3  # the 32 clients ask every question this many times: a few seconds are too noisy
    result = {}
    for label, batch in (("batched", max_batch), ("max_batch_1", 1)):
        server = Server(model, f"sqlite:///{tmp / f'batching_{label}.db'}", workers=1, max_batch=batch)
        try:
            log(f"batching ({label}): one worker ready in {server.wait_ready():.1f}s, "
                f"greedy decoding compiled at {server.compiled_s:.1f}s")
            # Each phase runs twice and the second run is measured: the first is start-up, not
            # throughput (first connections, the first call of each code path). The decode loops
            # are compiled before wait_ready returns; each run's programs_compiled shows none is
            # compiled while it is measured.
            if label == "batched":
                asyncio.run(run_clients(server.url, asked, 1, None, settings=settings))
                result["one_client"] = measured(server, asked, 1, settings)
                log(f"batching: 1 client {result['one_client']}")
            asyncio.run(run_clients(server.url, asked, 32, None, settings=settings))
            result[f"clients_32_{label}"] = measured(server, asked * rounds, 32, settings)
            log(f"batching: 32 clients, {label} {result[f'clients_32_{label}']}")
        finally:
            server.stop()
    rate = lambda key: result[key]["replies_per_s"]  # noqa: E731
    result["ratio_32_clients_to_one"] = round(rate("clients_32_batched") / rate("one_client"), 2)
    result["ratio_batched_to_max_batch_1"] = round(rate("clients_32_batched") / rate("clients_32_max_batch_1"), 2)
    return result


def workers_phase(model: str, db: str, label: str, workers: int, requests: int, clients: int,
                  kill: bool = False) -> dict:
    server = Server(model, db, workers)
    killed = None
    try:
        ready = server.wait_ready()
        log(f"{label}: {workers} workers ready in {ready:.1f}s")
        rss_ready = server.worker_rss_mb()
        asked = questions(requests)

        def maybe_kill(done: int):
            nonlocal killed
            if kill and killed is None and done >= requests * 0.4:
                # The busiest worker: uvicorn may have handed every connection to the others.
                victim = max(server.worker_pids(), key=process_cpu_seconds)
                os.kill(victim, signal.SIGKILL)
                killed = {"pid": victim, "after_requests": done}
                log(f"{label}: killed worker {victim} with SIGKILL after {done} requests")

        run = asyncio.run(run_clients(server.url, asked, clients, f"{label}-{workers}", maybe_kill))
        result = figures(run)
        result["ready_s"] = round(ready, 1)
        result["worker_rss_mb"] = {"ready": rss_ready, "after": server.worker_rss_mb()}
        if kill:
            after = asyncio.run(run_clients(server.url, questions(64), 8, None))
            result["after_kill"] = figures(after)
            result["killed"] = killed
            result["workers_after"] = len(server.worker_pids())
            result["error_samples"] = sorted(set(run["errors"]))[:5]
        log(f"{label}: {result}")
    finally:
        code = server.stop()
    result["exit_code"] = code
    result["store"] = check_store(db, run, allow_failed=kill)
    log(f"{label}: store check {result['store']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--requests", type=int, default=5000, help="requests per multi-worker run [5000]")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 400 requests, SQLite, 2 workers")
    parser.add_argument("--batching-only", action="store_true",
                        help="phase 1 only, written to results/serve_load_batching.json")
    parser.add_argument("--greedy", action="store_true", help="phase 1 only, every request with temperature 0 "
                        "(greedy replies), written to results/serve_load_batching_greedy.json")
    parser.add_argument("--max-batch", type=int, help="the batched phase's `serve --max-batch` [the server's default]")
    args = parser.parse_args()
    import tempfile

    from postgres import PostgresServer, unavailable

    requests = 400 if args.quick else args.requests
    result = {"machine_cores": machine()["cores"], "requests": requests, "clients": args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["batching"] = batching_phase(args.model, tmp, args.quick, {"temperature": 0} if args.greedy else None,
                                            args.max_batch)
        if args.batching_only or args.greedy:
            result["partial"] = args.quick
            emit(result, name="serve_load_batching_greedy" if args.greedy else "serve_load_batching")
            return
        runs = {}
        for workers in ((2,) if args.quick else (2, 4)):
            runs[f"sqlite_{workers}"] = workers_phase(
                args.model, f"sqlite:///{tmp / f'w{workers}.db'}", "sqlite", workers, requests, args.clients)
        why_not = unavailable()
        if why_not or args.quick:
            result["postgresql"] = f"skipped: {why_not or '--quick'}"
        else:
            with PostgresServer() as pg:
                for workers in (2, 4):
                    runs[f"postgresql_{workers}"] = workers_phase(
                        args.model, pg.create_database(), "postgresql", workers, requests, args.clients)
                runs["postgresql_4_kill"] = workers_phase(
                    args.model, pg.create_database(), "postgresql", 4, requests, args.clients, kill=True)
        result["runs"] = runs
    if args.quick:
        result["partial"] = True
    emit(result)


if __name__ == "__main__":
    main()
