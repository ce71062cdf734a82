"""A throwaway PostgreSQL server for the tests, from the machine's own binaries.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` (Debian: ``/usr/lib/postgresql/*/bin``; else
whatever ``initdb`` is on ``PATH``) in a new temporary directory, listening on a Unix socket in
that directory only (no TCP port to collide with), with trust authentication and without
fsync: a server to throw away, started in about a second. PostgreSQL refuses to run as root,
so under root the binaries run as the ``postgres`` system user (``runuser``), which owns the
directory. ``stop()`` stops the server and removes everything.

``unavailable()`` says why no server can be had here (None when one can): the tests skip with
that reason. ``PostgresServer.start`` raises ``PostgresUnavailable`` with the server's log
when a server does not come up.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVER_USER = "postgres"  # the system user Debian's package creates
PORT = 5432  # only names the socket file: the server listens on no TCP port


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def bin_dir() -> Path | None:
    """The newest installed server's ``bin`` directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.parent.name.split(".")])
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def unavailable() -> str | None:
    """Why no server can be started here, or None when one can."""
    binaries = bin_dir()
    if binaries is None or not (binaries / "pg_ctl").exists():
        return "PostgreSQL server binaries not found (Debian: apt-get install -y postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


class PostgresServer:
    """One server in a temporary directory; ``url(db)`` names a database on it."""

    def __init__(self):
        self.bin = bin_dir()
        self.dir: Path | None = None
        self.running = False

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> "PostgresServer":
        why = unavailable()
        if why:
            raise PostgresUnavailable(why)
        # /tmp keeps the socket path short (107 bytes at most) and reachable by the server user.
        self.dir = Path(tempfile.mkdtemp(prefix="chatbot-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        if os.geteuid() == 0:  # the server's user must own its directory (root's is 0700)
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.dir.chmod(0o700)
        data = self.dir / "data"
        init = self._run("initdb", "-D", str(data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8",
                         "--no-locale", "--no-sync", "--no-instructions")
        if init.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {_tail(init.stdout + init.stderr)}")
        options = (f"-k {self.dir} -c listen_addresses='' -p {PORT} -F -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=200")
        started = self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-o", options,
                            "-w", "-t", "60", "start")
        if started.returncode != 0:
            log = (self.dir / "server.log").read_text(errors="replace") if (self.dir / "server.log").exists() else ""
            self.stop()
            raise PostgresUnavailable(f"pg_ctl start failed: {_tail(started.stdout + started.stderr + log)}")
        self.running = True
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.running:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- databases -------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """A ``postgresql+psycopg`` URL of ``database`` through the server's socket."""
        return f"postgresql+psycopg://{SERVER_USER}@/{database}?host={self.dir}&port={PORT}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement outside a transaction (CREATE DATABASE needs that); its rows."""
        import psycopg

        with psycopg.connect(host=str(self.dir), port=PORT, user=SERVER_USER, dbname=database,
                             autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, check=False, capture_output=True, text=True, cwd=self.dir, timeout=120,
                              stdin=subprocess.DEVNULL)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
