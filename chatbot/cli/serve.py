"""``chatbot serve``: the HTTP server (uvicorn running ``chatbot.serving.app.create_app``).

Uvicorn's worker processes import ``app_from_environment`` on their own, so the command
hands its settings over in environment variables; each worker loads the model once and all
share the session database (PostgreSQL for several workers, see the README)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time

ENV_MODEL, ENV_DB, ENV_SETTINGS = "CHATBOT_SERVE_MODEL", "CHATBOT_DB", "CHATBOT_SERVE_SETTINGS"
ENV_LOG_FORMAT = "CHATBOT_SERVE_LOG_FORMAT"  # "json" for --log-format json
ENV_WARM_UP = "CHATBOT_SERVE_WARM_UP"  # "0" for --no-warm-up


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """Raise ``OSError`` (naming the address) when nothing could listen on ``host:port`` now: in
    use, or not an address of this machine. Bound as uvicorn binds, with ``SO_REUSEADDR``."""
    try:
        for family, kind, protocol, _, address in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
            return
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), f"{host}:{port}") from None


class OncePerInterval(logging.Filter):
    """Lets a message through once per ``seconds``; the next one says how many were held back."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.last: dict[str, tuple[float, int]] = {}  # message -> (when last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg), time.monotonic()
        shown, held = self.last.get(key, (-self.seconds, 0))
        if now - shown < self.seconds:
            self.last[key] = (shown, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} ({held} more like it held back)"
        self.last[key] = (now, 0)
        return True


def app_from_environment():
    """The app as ``chatbot serve`` configured it (a uvicorn factory, one call per worker)."""
    from chatbot.cli.main import _stderr_quiet_import

    _stderr_quiet_import()
    _other_libraries_log_json()
    # Out of file descriptors (slow clients holding connections), the event loop logs every
    # failed accept with its traceback: 3.7 million lines in 40 s. Once per 10 s is enough.
    logging.getLogger("asyncio").addFilter(OncePerInterval(10.0))
    # The server's own messages (the model ready or failed, errors) reach the terminal even
    # without -v, which leaves uvicorn's access log out.
    messages = logging.getLogger("chatbot.serving")
    if not messages.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_formatter())
        messages.addHandler(handler)
        messages.setLevel(logging.INFO)
        messages.propagate = False
    from chatbot.serving.app import create_app
    from chatbot.serving.settings import ServerSettings, keys_from_environment

    overrides = json.loads(os.environ.get(ENV_SETTINGS) or "{}")
    for name in ("cors_origins", "allowed_hosts"):  # JSON gave lists
        overrides[name] = tuple(overrides.get(name, ()))
    settings = ServerSettings(api_keys=keys_from_environment(), **overrides)
    return create_app(os.environ.get(ENV_MODEL) or None, os.environ.get(ENV_DB) or None, settings=settings,
                      warm_up=os.environ.get(ENV_WARM_UP) != "0")


def _formatter() -> logging.Formatter:
    if os.environ.get(ENV_LOG_FORMAT) == "json":
        from chatbot.cli.json_logs import JsonFormatter

        return JsonFormatter()
    return logging.Formatter("chatbot serve [%(process)d]: %(message)s")


def _other_libraries_log_json() -> None:
    """With --log-format json, the lines of every other library (Alembic, TensorFlow's Python
    side) are JSON too: the command's root handler in its own process, a new one in a worker
    process uvicorn started (which has none)."""
    if os.environ.get(ENV_LOG_FORMAT) != "json":
        return
    from chatbot.cli.main import CommandFormatter

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:  # the command's own, or the new one: not those of a host (pytest's)
        if handler.formatter is None or isinstance(handler.formatter, CommandFormatter):
            handler.setFormatter(_formatter())


def serve(args) -> int:
    import uvicorn

    from chatbot.cli.main import UsageError, _check_model_early
    from chatbot.serving.security import LOOPBACK_NAMES
    from chatbot.serving.settings import KEYS_VARIABLE, ServerSettings, keys_from_environment

    json_logs = args.log_format == "json"
    if json_logs:
        os.environ[ENV_LOG_FORMAT] = "json"
    else:
        os.environ.pop(ENV_LOG_FORMAT, None)
    _other_libraries_log_json()  # before the first check, whose database opening Alembic logs
    keys = tuple(args.api_key or ()) + keys_from_environment()
    settings = {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                "rate_per_minute": args.rate_limit, "cors_origins": tuple(args.cors_origin or ()),
                # A burst as big as a minute's requests at most: --rate-limit 6 must not let 60 through.
                "rate_burst": args.rate_burst or max(1, min(60, int(args.rate_limit)))}
    if not keys and not args.insecure and not is_loopback(args.host):
        raise UsageError(f"--host {args.host}: without API keys (--api-key or ${KEYS_VARIABLE}) the server "
                         "only listens on loopback; give keys, or --insecure to serve everyone without them")
    if not keys and not args.insecure and "*" in settings["cors_origins"]:
        raise UsageError(f"--cors-origin '*' without API keys (--api-key or ${KEYS_VARIABLE}) lets every web "
                         "site read and delete the sessions; name the origins, give keys, or --insecure")
    if not keys and is_loopback(args.host):  # the names a browser uses for loopback, and no other
        settings["allowed_hosts"] = LOOPBACK_NAMES + (args.host,) + tuple(args.allowed_host or ())
    ServerSettings(api_keys=keys, **settings)  # a bad key or value fails here, once, not in each worker
    # A mistyped model, a damaged bundle or a port in use fail now, in one line, rather than as a
    # server that can never answer (the model loads after start-up) or as uvicorn's own error.
    _check_model_early(args.model)
    check_address(args.host, args.port)
    from chatbot.dialogue.store import SessionStore

    SessionStore(args.db).close()  # a mistyped URL, or a database that does not answer, fails now too
    os.environ[KEYS_VARIABLE] = ",".join(keys)
    os.environ[ENV_SETTINGS] = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    if args.model:
        os.environ[ENV_MODEL] = str(args.model)
    if args.db:
        os.environ[ENV_DB] = args.db
    if args.warm_up:
        os.environ.pop(ENV_WARM_UP, None)
    else:
        os.environ[ENV_WARM_UP] = "0"
    # The cores shared out among the workers: one worker decodes the beam searches of a queue of
    # requests on all of them at once (1.8x faster than on one); several are parallel already.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    started = (f"http://{shown_host}:{args.port}/ (chat page; API docs at /docs), "
               f"{args.workers} worker{'s' if args.workers > 1 else ''}; loading the model "
               "(/readyz answers 200 when it is ready); Ctrl-C stops")
    if json_logs:
        from chatbot.cli.json_logs import json_line

        print(json_line("chatbot.serving", logging.INFO, started), file=sys.stderr, flush=True)
    else:
        print(f"chatbot serve: {started}", file=sys.stderr, flush=True)
    log_config = {}
    if json_logs:
        from chatbot.cli.json_logs import uvicorn_log_config

        log_config = {"log_config": uvicorn_log_config()}
    with shared_metrics(args.workers):
        uvicorn.run("chatbot.cli.serve:app_from_environment", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="info" if args.verbose else "warning",
                    timeout_graceful_shutdown=args.drain_seconds, server_header=False,
                    root_path=args.root_path.rstrip("/"), **log_config)
    return 0


@contextlib.contextmanager
def shared_metrics(workers: int):
    """With several workers, a folder through which they share their metrics (any worker's
    /metrics then counts them all), made before they start and removed after they stop. A
    folder the operator named in PROMETHEUS_MULTIPROC_DIR is used as it is and kept."""
    from chatbot.serving.metrics import SHARED_FOLDER, shared_folder

    if workers < 2 or shared_folder():
        yield
        return
    folder = tempfile.mkdtemp(prefix="chatbot-metrics-")
    os.environ[SHARED_FOLDER] = folder
    try:
        yield
    finally:
        del os.environ[SHARED_FOLDER]
        shutil.rmtree(folder, ignore_errors=True)
