"""``chatbot serve`` as users start it: the loopback rule, bad settings, and a real server
process that drains the request in flight on SIGTERM and prints no TensorFlow noise."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ROOT
from helpers import run_cli
from live_server import free_port, wait_until_ready


def test_without_keys_only_loopback(capsys, monkeypatch):
    monkeypatch.delenv("CHATBOT_API_KEYS", raising=False)
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--host", "0.0.0.0")
    assert code == 2 and "without API keys" in err and "--insecure" in err


@pytest.mark.parametrize("module", ["chatbot", "chatbot.cli.main"])
def test_python_dash_m_is_the_same_command(module):
    """Run as ``python -m``, a usage error is still one (exit 2), not an unexpected one: the
    module run as __main__ is a second copy of chatbot.cli.main, whose UsageError serve's is not."""
    env = {key: value for key, value in os.environ.items() if key != "CHATBOT_API_KEYS"}
    result = subprocess.run([sys.executable, "-m", module, "serve", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 2 and "without API keys" in result.stderr and "unexpected" not in result.stderr


def test_any_origin_without_keys_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("CHATBOT_API_KEYS", raising=False)
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--cors-origin", "*")
    assert code == 2 and "--cors-origin '*' without API keys" in err


def test_without_keys_on_loopback_the_server_answers_to_loopback_names_only(capsys, monkeypatch, tiny_bundle_path):
    import uvicorn

    from chatbot.cli.serve import ENV_SETTINGS, ENV_WARM_UP, app_from_environment

    for name in (ENV_SETTINGS, "CHATBOT_SERVE_MODEL", "CHATBOT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_WARM_UP, "1")  # serve() sets it for its workers; restored (unset) after the test
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    # Hosts are checked before any model work: the worker's app skips compiling its decode loops
    # (40-75 s of a cold run; test_serve.py checks the warm-up).
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", free_port(),
                           "--db", "sqlite://", "--allowed-host", "chat.internal", "--no-warm-up")
    assert code == 0, err
    assert json.loads(os.environ[ENV_SETTINGS])["allowed_hosts"] == [
        "localhost", "127.0.0.1", "::1", "127.0.0.1", "chat.internal"]
    from fastapi.testclient import TestClient

    with TestClient(app_from_environment()) as client:  # what each worker builds from them
        assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "chat.internal"}).status_code == 200
        rebound = client.get("/healthz", headers={"Host": "rebind.attacker.example:8000"})
        assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"


def test_a_root_path_reaches_uvicorn(capsys, monkeypatch, tiny_bundle_path):
    import uvicorn

    from chatbot.cli.serve import ENV_SETTINGS

    for name in (ENV_SETTINGS, "CHATBOT_SERVE_MODEL", "CHATBOT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    given = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: given.update(kwargs))
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", free_port(),
                           "--db", "sqlite://", "--root-path", "/chatbot/")
    assert code == 0, err
    assert given["root_path"] == "/chatbot"


def test_a_short_key_is_a_one_line_error(capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--api-key", "short")
    assert code == 1 and err.strip().splitlines() == [
        "chatbot: error: an API key must be at least 16 printable characters without spaces or commas (one given is 5 long)"]


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "0", "argument --workers: must be at least 1, got 0"),
    ("--port", "99999", "argument --port: must be at least 1 and at most 65535, got 99999"),
    ("--rate-limit", "0", "argument --rate-limit: must be above 0, got 0"),
    ("--batch-wait-ms", "nan", "argument --batch-wait-ms: must be at least 0, got nan"),
    ("--max-batch", "x", "argument --max-batch: expected an integer, got 'x'"),
])
def test_a_bad_server_option_is_a_usage_error_naming_the_flag(capsys, monkeypatch, flag, value, message):
    code, _, err = run_cli(capsys, monkeypatch, "serve", flag, value)
    assert code == 2 and err.strip().splitlines()[-1] == f"chatbot serve: error: {message}"
    assert err.startswith("usage: chatbot serve")


@pytest.mark.parametrize("flags, burst", [(["--rate-limit", "6"], 6), ([], 60), (["--rate-burst", "3"], 3)])
def test_a_burst_is_never_more_than_a_minutes_requests(capsys, monkeypatch, tiny_bundle_path, flags, burst):
    """With a burst of 60 whatever the rate, --rate-limit 6 let 60 requests through at once."""
    import uvicorn

    from chatbot.cli.serve import ENV_SETTINGS

    for name in (ENV_SETTINGS, "CHATBOT_SERVE_MODEL", "CHATBOT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)  # serve() sets them for its workers; restored after
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", free_port(),
                           "--db", "sqlite://", *flags)
    assert code == 0, err
    assert json.loads(os.environ[ENV_SETTINGS])["rate_burst"] == burst


def test_a_server_that_could_never_answer_does_not_start(capsys, monkeypatch, tiny_bundle_path):
    """A mistyped model, a port another program holds, a database that cannot be opened: one
    line and exit 1, before uvicorn."""
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", "no-such-model")
    assert code == 1 and err.count("\n") == 1 and "no-such-model: no such model" in err
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", port)
    assert code == 1 and err.strip() == f"chatbot: error: 127.0.0.1:{port}: Address already in use"
    # A database that cannot be opened: a server whose workers would answer 503 to every session.
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", free_port(),
                           "--db", "sqlite:////proc/no-such-folder/chat.db")
    assert code == 1 and err.count("\n") == 1 and err.startswith("chatbot: error: cannot open database")


def test_with_json_logs_a_server_that_cannot_start_says_why_in_json(capsys, monkeypatch, tiny_bundle_path):
    """A collector reading one JSON object per line would drop the plain "chatbot: error:" line."""
    from chatbot.cli.serve import ENV_LOG_FORMAT

    monkeypatch.setenv(ENV_LOG_FORMAT, "text")  # serve() sets it for its workers; restored after
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", free_port(),
                           "--db", "sqlite:////proc/no-such-folder/chat.db", "--log-format", "json")
    assert code == 1 and err.count("\n") == 1, err
    line = json.loads(err)
    assert line["level"] == "ERROR" and line["logger"] == "chatbot" and line["pid"] == os.getpid()
    assert line["message"].startswith("cannot open database")
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--host", "0.0.0.0", "--log-format", "json")
    assert code == 2 and json.loads(err)["message"].startswith("--host 0.0.0.0: without API keys")
    # argparse's own refusals too, wherever the flag stands; without it, argparse's usage line.
    for argv in (("serve", "--log-format", "json", "--port", "abc"), ("serve", "--port", "abc", "--log-format=json")):
        code, _, err = run_cli(capsys, monkeypatch, *argv)
        assert code == 2 and err.count("\n") == 1, err
        line = json.loads(err)
        assert line["level"] == "ERROR" and line["message"] == "chatbot serve: argument --port: expected an integer, got 'abc'"
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--port", "abc")
    assert code == 2 and err.startswith("usage: chatbot serve") and "expected an integer, got 'abc'" in err


def test_sigterm_drains_the_request_in_flight(tiny_bundle_path, tiny_pairs, tmp_path):
    port = free_port()
    # A lone request waits 1.5 s for company before its decode: SIGTERM lands while it waits.
    # Without the warm-up (30 s of this test's 60 on 2 cores): its decode compiles while it drains.
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--model", str(tiny_bundle_path), "--db",
         str(tmp_path / "serve.db"), "--port", str(port), "--batch-wait-ms", "1500", "--no-warm-up"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, lambda: server.poll() is None, timeout=120)
        question, answer = tiny_pairs[0]
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": question}]}).encode()
        result = {}

        def ask():
            request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json", "X-Session": "drain"})
            with urllib.request.urlopen(request, timeout=30) as response:
                result["status"] = response.status
                result["reply"] = json.loads(response.read())["choices"][0]["message"]["content"]

        client = threading.Thread(target=ask)
        client.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        client.join(30)
        assert result == {"status": 200, "reply": answer}
        # uvicorn re-raises the signal once it has drained: the conventional status of SIGTERM.
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    stderr = server.stderr.read()
    assert "oneDNN" not in stderr and "absl" not in stderr and "cuda" not in stderr.lower(), stderr
    # Without -v the terminal still says where the server listens and when the model is ready.
    assert f"http://127.0.0.1:{port}/" in stderr.splitlines()[0], stderr
    assert any(line.startswith("chatbot serve [") and line.endswith("ready") for line in stderr.splitlines()), stderr
    from chatbot.dialogue.store import SessionStore

    with SessionStore(f"sqlite:///{tmp_path / 'serve.db'}") as store:
        assert [m.text for m in store.history("drain")] == [question, answer]


def test_sessions_list_tells_the_owners_of_two_alices_apart(capsys, monkeypatch, tmp_path):
    from chatbot.dialogue.store import SessionStore
    from chatbot.serving.security import owner_of

    db = f"sqlite:///{tmp_path / 'owners.db'}"
    with SessionStore(db) as store:
        store.create_session("alice")
        store.create_session("alice", owner=owner_of("a-key-of-sixteen-chars"))
    code, out, _ = run_cli(capsys, monkeypatch, "sessions", "list", "--db", db)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["ID", "NAME", "MESSAGES", "UPDATED", "OWNER"]
    assert sorted(row.split()[-1] for row in rows) == sorted(["-", owner_of("a-key-of-sixteen-chars")[:8]])
    code, out, _ = run_cli(capsys, monkeypatch, "sessions", "list", "--db", db, "--json")
    assert sorted(json.loads(line)["owner"] for line in out.splitlines()) == ["", owner_of("a-key-of-sixteen-chars")]


def test_workers_share_their_metrics(tiny_bundle_path, tmp_path):
    """Behind one port, a scrape reaches whichever worker accepts it: every scrape must count
    the requests of all workers, not one worker's share (which made counters jump back)."""
    from prometheus_client import multiprocess

    port, shared = free_port(), tmp_path / "metrics"
    shared.mkdir()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--model", str(tiny_bundle_path), "--db",
         str(tmp_path / "serve.db"), "--port", str(port), "--workers", "2", "--no-warm-up"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    base = f"http://127.0.0.1:{port}"

    def healthz_counts() -> dict[str, float]:
        """Each worker's own count of answered /healthz requests, read from its file."""
        counts = {}
        for file in shared.glob("counter_*.db"):
            for metric in multiprocess.MultiProcessCollector.merge([str(file)], accumulate=False):
                counts[file.name] = counts.get(file.name, 0) + sum(
                    s.value for s in metric.samples if s.labels.get("route") == "/healthz"
                    and s.name.endswith("_total"))
        return counts

    try:
        wait_until_ready(base, lambda: server.poll() is None, timeout=180)

        def scrape() -> str:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                return response.read().decode()

        deadline = time.monotonic() + 180  # /readyz answered from one worker: ready is the least of both
        while "chatbot_model_ready 1.0" not in scrape() and time.monotonic() < deadline:
            time.sleep(0.5)
        asked = 0
        while asked < 300 and sum(1 for n in healthz_counts().values() if n) < 2:  # until both answered some
            with urllib.request.urlopen(base + "/healthz", timeout=10):
                asked += 1
        assert sum(1 for n in healthz_counts().values() if n) == 2, "one worker took every connection"
        # A worker counts a request once its response is sent: the client may read the last one
        # before it is counted (a scrape then saw 3 of 4). Wait for the workers' files to say so.
        counted = time.monotonic() + 30
        while sum(healthz_counts().values()) < asked and time.monotonic() < counted:
            time.sleep(0.05)
        for _ in range(6):
            text = scrape()
            line = next(line for line in text.splitlines()
                        if line.startswith('chatbot_http_requests_total{method="GET",route="/healthz",status="200"}'))
            assert float(line.split()[-1]) == asked
            assert "chatbot_model_ready 1.0" in text
            assert "chatbot_compiled_programs 0.0" in text  # --no-warm-up: nothing compiled before a reply
            assert "process_resident_memory_bytes" not in text  # one worker's memory is not the server's
    finally:
        server.terminate()
        server.wait(30)


def test_a_flood_of_one_event_loop_error_is_logged_once_per_interval(monkeypatch):
    """Slow clients holding every file descriptor made the event loop log each failed accept
    with its traceback, millions of lines a minute: once per interval, then a count."""
    import logging

    from chatbot.cli import serve

    clock = [100.0]
    monkeypatch.setattr(serve.time, "monotonic", lambda: clock[0])
    records = []
    only = serve.OncePerInterval(10.0)
    for _ in range(1000):
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                                   None, None)
        if only.filter(record):
            records.append(record.getMessage())
    clock[0] += 10.0
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                               None, None)
    assert only.filter(record)
    records.append(record.getMessage())
    assert records == ["socket.accept() out of system resource",
                       "socket.accept() out of system resource (999 more like it held back)"]


def test_a_dead_workers_live_gauges_stop_counting(tmp_path):
    """uvicorn restarts a killed worker under a new pid: the dead one's queue and readiness
    files must go, or its last values would count for ever; counters stay (what it served)."""
    from chatbot.serving.metrics import forget_dead_workers

    dead, alive = subprocess.Popen([sys.executable, "-c", "pass"]), os.getpid()
    dead.wait()  # its pid is free now
    for name in (f"gauge_livesum_{dead.pid}.db", f"gauge_livemin_{dead.pid}.db", f"counter_{dead.pid}.db",
                 f"gauge_livesum_{alive}.db"):
        (tmp_path / name).write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{dead.pid}.db", f"gauge_livesum_{alive}.db"]


def test_json_logs_are_one_object_a_line_with_the_requests_id(capsys, monkeypatch, tiny_bundle_path):
    """--log-format json: uvicorn's lines and the server's own are JSON objects that a log
    collector indexes, each line written while a request is handled with its ID."""
    import contextvars
    import logging

    import uvicorn

    from chatbot.cli.json_logs import FORMATTER, JsonFormatter
    from chatbot.cli.serve import ENV_LOG_FORMAT, ENV_SETTINGS, _formatter
    from chatbot.serving import request_ids

    for name in (ENV_SETTINGS, "CHATBOT_SERVE_MODEL", "CHATBOT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_LOG_FORMAT, "text")  # restored (unset) after the test
    given = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: given.update(kwargs))
    port = free_port()
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", port,
                           "--db", "sqlite://", "--log-format", "json")
    assert code == 0, err
    started = json.loads(err.strip().splitlines()[0])
    assert started["level"] == "INFO" and f"http://127.0.0.1:{port}/" in started["message"]
    assert {f["()"] for f in given["log_config"]["formatters"].values()} == {FORMATTER}
    assert isinstance(_formatter(), JsonFormatter)  # what each worker's own messages go through

    def logged_in_a_request(record):
        request_ids._CURRENT.set("req-7")
        return JsonFormatter().format(record)

    access = logging.makeLogRecord({"name": "uvicorn.access", "levelname": "INFO", "msg": '%s - "%s %s HTTP/%s" %d',
                                    "args": ("127.0.0.1:5000", "GET", "/healthz", "1.1", 200)})
    line = json.loads(contextvars.copy_context().run(logged_in_a_request, access))
    assert line["request_id"] == "req-7" and line["path"] == "/healthz" and line["status"] == 200
    try:
        1 / 0
    except ZeroDivisionError:
        failed = logging.makeLogRecord({"name": "chatbot.serving", "levelname": "ERROR", "msg": "unexpected error",
                                        "exc_info": sys.exc_info()})
    text = JsonFormatter().format(failed)  # outside a request: no ID; the traceback within the one line
    assert "\n" not in text and "request_id" not in json.loads(text)
    assert "ZeroDivisionError" in json.loads(text)["exception"]

    given.clear()  # text again: uvicorn's own format, and the workers' plain lines
    code, _, err = run_cli(capsys, monkeypatch, "serve", "--model", tiny_bundle_path, "--port", port, "--db", "sqlite://")
    assert code == 0 and err.startswith("chatbot serve: http://") and "log_config" not in given
    assert ENV_LOG_FORMAT not in os.environ and not isinstance(_formatter(), JsonFormatter)
