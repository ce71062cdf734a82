"""How long `chatbot ask` and `chatbot serve` take to start, with and without the on-disk cache
of compiled decode loops (``chatbot/compile_cache.py``).

    python bench/startup.py              # the default model, 3 runs of each (about 5 minutes)
    python bench/startup.py --runs 1     # quicker, noisier

Three cache states, each in real subprocesses as users start them:
- ``off``: ``CHATBOT_XLA_CACHE=off``, every program compiled in the process (before the cache);
- ``empty``: a new cache directory, so the run compiles and writes every program;
- ``filled``: the directory the ``empty`` run filled, so programs are read instead of compiled.
``ask`` is timed from start to exit over three questions of different input widths; ``serve`` from
start until ``/readyz`` answers 200 (the model loaded and every input width it serves compiled),
and also with ``--no-warm-up`` (``no_warm_up``: ready once the model is loaded, nothing compiled).
Figures are medians of ``--runs`` runs; the last stdout line is JSON, also written to
``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, log

sys.path.insert(0, str(ROOT / "tests"))
from live_server import free_port, wait_until_ready  # noqa: E402  (the tests' helpers)

QUESTIONS = ("Hello", "What is your favourite colour?",
             "Tell me about the programming language Python and what it is used for")


def _environment(cache: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    env["CHATBOT_XLA_CACHE"] = cache or "off"
    return env


def time_ask(model: str, cache: str | None) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "ask", "--model", model, *QUESTIONS],
                          env=_environment(cache), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"chatbot ask failed: {done.stderr.strip()}")
    return time.perf_counter() - began


def time_serve(model: str, cache: str | None, database: Path, *flags: str) -> float:
    port = free_port()
    began = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--model", model, "--port", str(port),
                               "--db", f"sqlite:///{database}", *flags], env=_environment(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", lambda: server.poll() is None, timeout=600)
        return time.perf_counter() - began
    except RuntimeError as exc:
        server.kill()
        raise SystemExit(f"chatbot serve: {exc}: {server.communicate()[1].strip()[-2000:]}") from None
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command and cache state [3]")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chatbot-startup-"))
    result: dict = {"model": args.model, "runs": args.runs, "questions": len(QUESTIONS)}
    try:
        for command, timer in (("ask", lambda cache: time_ask(args.model, cache)),
                               ("serve", lambda cache: time_serve(args.model, cache, work / "serve.db"))):
            times: dict[str, list[float]] = {"off": [], "empty": [], "filled": []}
            for run in range(args.runs):
                cache = work / f"{command}-{run}"
                times["off"].append(timer(None))
                times["empty"].append(timer(str(cache)))
                times["filled"].append(timer(str(cache)))
                if command == "serve":
                    times.setdefault("no_warm_up", []).append(
                        time_serve(args.model, str(cache), work / "serve.db", "--no-warm-up"))
                log(f"{command} run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
            programs = list(cache.glob("*/*.pb"))
            result[command] = {
                **{f"seconds_{state}": round(statistics.median(v), 2) for state, v in times.items()},
                "all_seconds": {state: [round(t, 2) for t in v] for state, v in times.items()},
                "programs_cached": len(programs),
                "cache_mb": round(sum(p.stat().st_size for p in programs) / 2 ** 20, 1),
            }
            result[command]["saved_by_the_cache"] = round(result[command]["seconds_off"]
                                                          - result[command]["seconds_filled"], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
