"""Helpers shared by several test modules (fixtures live in ``conftest.py``): the ``chatbot``
command run as users run it (a subprocess) or in-process, and typing keys into the REPL's real
prompt loop."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from conftest import ROOT

CTRL_C, CTRL_D, UP = "\x03", "\x04", "\x1b[A"


def chatbot(*args, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` from the checkout: a real subprocess, its real exit code."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_cli(capsys, monkeypatch, *argv, stdin: str | bytes = b"") -> tuple[int, str, str]:
    """``chatbot ARGV`` in-process, with ``stdin`` as its standard input: (exit status, stdout,
    stderr). TensorFlow and the model's encoder are then loaded once per test session, not once
    per command (3-8 s each on 2 cores). For what a command prints and returns; what only the
    process shows (start-up noise on stderr, signals, a terminal, a real pipe) is tested with
    ``chatbot`` above. ``ask`` and ``chat`` set TF_NUM_INTRAOP_THREADS for their process; here
    that is undone after the test, so that it does not reach later tests' subprocesses."""
    import chatbot.cli.main as cli

    data = stdin.encode() if isinstance(stdin, str) else stdin
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", os.environ.get("TF_NUM_INTRAOP_THREADS", "1"))
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: bad usage
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def drive(repl, keys: str, history=None, close: bool = False, later: str = "", wait_for: str | None = None) -> str:
    """Type ``keys`` into the real PromptSession loop of a ``ChatRepl`` (then ``later``, half a
    second on, as a person would after pressing Tab; with ``wait_for``, once the prompt's text
    reads that, as a person would wait for a completion on a busy machine, 10 s at most);
    returns what the REPL printed."""
    sessions = []
    make_session = repl.prompt_session

    def session_kept(*args, **kwargs):
        sessions.append(make_session(*args, **kwargs))
        return sessions[-1]

    repl.prompt_session = session_kept
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        if close:
            pipe.close()

        def type_later():
            deadline = time.monotonic() + 10
            time.sleep(0.5)
            while wait_for and time.monotonic() < deadline and not (
                    sessions and sessions[0].default_buffer.text == wait_for):
                time.sleep(0.02)
            pipe.send_text(later)

        typist = threading.Thread(target=type_later)
        if later:
            typist.start()
        try:
            repl.run_interactive(history, input=pipe, output=DummyOutput())
        finally:
            if later:
                typist.join()
            del repl.prompt_session
    return repl.output.getvalue()


def all_at_once(call, threads: int = 16) -> tuple[list, list]:
    """Run ``call()`` in ``threads`` threads released together by a barrier; returns (results,
    exceptions raised), for the races a shared object must survive."""
    start = threading.Barrier(threads)
    results, errors = [], []

    def worker():
        try:
            start.wait()
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return results, errors
