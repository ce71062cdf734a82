"""``chatbot serve``'s app on a real loopback port (uvicorn in a thread), for tests that need
a real HTTP client: the browser, the official openai client."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(base: str, alive, timeout: float = 30) -> None:
    """Poll ``base``/readyz until it answers 200; RuntimeError if ``alive()`` turns false or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline or not alive():
            raise RuntimeError("the server did not become ready")
        time.sleep(0.05)


@contextmanager
def serving(bot, **settings):
    """The app on a free loopback port under uvicorn in a thread; yields its base URL."""
    import uvicorn

    from chatbot.serving.app import create_app
    from chatbot.serving.settings import ServerSettings

    app = create_app(bot=bot, settings=ServerSettings(**settings), warm_up=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, thread.is_alive)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
