"""Issue 19 (items 2, 3, 8): race-free named sessions, foreign databases left alone, read-only
storage. Store-level tests and the read-only ``chatbot sessions`` / ``models list`` commands
(which load no model, so they stay fast)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatbot.dialogue.store import SessionStore, StoreError
from conftest import ROOT
from helpers import all_at_once, chatbot, run_cli
from test_migrations import legacy_database


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a digest of its bytes: what "untouched" means."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                              if path.is_file() else "dir")
    return found


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def table_names(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def our_database(path: Path) -> Path:
    """A database of this project with one named session holding one exchange."""
    with SessionStore(path) as store:
        sid = store.create_session("kept").id
        user = store.add_message(sid, "user", "hello")
        store.add_message(sid, "bot", "hi there", in_reply_to=user.id, score=-0.1)
    return path


# --- item 2: get-or-create is atomic ---------------------------------------------------------
def test_threads_get_or_create_one_named_session(tmp_path):
    with SessionStore(tmp_path / "chat.db") as store:
        got, errors = all_at_once(lambda: store.get_or_create_session("racy").id)
        assert errors == [] and len(got) == 16 and len(set(got)) == 1
        assert [s.name for s in store.list_sessions()] == ["racy"]


def test_get_or_create_reads_the_winner_after_losing_the_insert(tmp_path, monkeypatch):
    """The path a server database takes: the name is free when read, taken when inserted
    (the unique constraint refuses it), and the winner is read back."""
    with SessionStore(tmp_path / "chat.db") as store:
        winner = store.create_session("taken")
        real_find = store.find_session
        monkeypatch.setattr(store, "find_session", lambda name, **_: None)  # "not there yet" when read
        try:
            assert store.get_or_create_session("taken") == real_find("taken") == store.get_session(winner.id)
        finally:
            monkeypatch.setattr(store, "find_session", real_find)


@pytest.mark.parametrize("call", [
    lambda st: st.create_session("caf\udce9"),  # a command line's undecodable byte
    lambda st: st.get_session("caf\udce9"),
    lambda st: st.find_session("x\ud800"),
    lambda st: st.create_session("ok", metadata={"k": "\ud800"}),
    lambda st: st.create_session("ok", owner="\ud800"),
    lambda st: st.add_message(st.get_or_create_session("s").id, "user", "a\ud800"),
], ids=["new name", "name looked up", "name found", "metadata", "owner", "message"])
def test_text_with_no_utf8_form_is_the_callers_mistake(call):
    """A lone surrogate is refused before any write as StoreArgumentError (it was a raw
    UnicodeEncodeError, and in metadata it was stored and broke every later listing)."""
    from chatbot.errors import StoreArgumentError

    store = SessionStore("sqlite://")
    with pytest.raises(StoreArgumentError, match="not valid Unicode"):
        call(store)
    assert [s.name for s in store.list_sessions()] in ([], ["s"])  # the message's own session
    assert [store.history(s.id) for s in store.list_sessions()] in ([], [[]])


def test_get_or_create_refuses_a_digit_name(tmp_path):
    with SessionStore(tmp_path / "chat.db") as store:
        with pytest.raises(StoreError, match="all digits"):
            store.get_or_create_session("42")


# Imported before the start signal, so that every process opens the store (and creates the
# schema of the brand-new file) at the same instant.
FIRST_RUN = """
import sys, time
from pathlib import Path
from chatbot.dialogue.store import SessionStore
url, go, tag, n = sys.argv[1:]
Path(f"{go}.{tag}").touch()  # ready
while not Path(go).exists():
    time.sleep(0.0005)
store = SessionStore(url, busy_timeout_ms=120_000)
session = store.get_or_create_session("shared")
for i in range(int(n)):
    question = store.add_message(session.id, "user", f"{tag} {i}")
    store.add_message(session.id, "bot", f"re {tag} {i}", in_reply_to=question.id, score=-1.0)
store.close()
print(session.id)
"""


@pytest.mark.parametrize("round_", range(3))
def test_processes_started_together_on_a_brand_new_file(tmp_path, round_):
    """N processes open one new SQLite file at once (schema creation, the switch to WAL) and
    get-or-create the same named session: none fails, nothing is lost (issue 19 saw one of two
    workers exit non-zero on a first run: the journal-mode switch met a lock and gave up)."""
    n, replies = 4, 10
    url, go = f"sqlite:///{tmp_path / 'new' / 'chat.db'}", tmp_path / "go"
    tags = [f"P{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_RUN, url, str(go), tag, str(replies)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in tags]
    give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
    while not all(Path(f"{go}.{tag}").exists() for tag in tags):
        if any(p.poll() is not None for p in procs) or time.monotonic() > give_up:
            break  # the checks below report it
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    assert len({out.strip() for out, _ in outputs}) == 1  # one session id for all
    with SessionStore(url) as store:
        [session] = store.list_sessions()
        assert session.name == "shared" and session.message_count == 2 * n * replies
        history = store.history(session.id)
        for tag in tags:
            mine = [m.text for m in history if m.text.split()[-2] == tag]
            assert mine == [t for i in range(replies) for t in (f"{tag} {i}", f"re {tag} {i}")]
        assert store.integrity_check()


# --- item 3: another application's database is left alone ------------------------------------
def other_app_database(path: Path, kind: str) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        if kind == "users":
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
            conn.execute("INSERT INTO users (email) VALUES ('a@example.com')")
        else:  # tables with our names and other columns
            conn.execute("CREATE TABLE sessions (token TEXT PRIMARY KEY, user_id INTEGER)")
            conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
            conn.execute("INSERT INTO messages (body) VALUES ('theirs')")
    conn.close()
    return path


@pytest.mark.parametrize("kind", ["users", "same_names"])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_foreign_database_is_refused_and_left_untouched(tmp_path, kind, read_only):
    path = other_app_database(tmp_path / "otherapp.db", kind)
    tables, before = table_names(path), snapshot(tmp_path)
    with pytest.raises(StoreError, match="not a chatbot database") as caught:
        SessionStore(path, read_only=read_only)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert snapshot(tmp_path) == before  # the file byte for byte, and no journal files left
    assert table_names(path) == tables and journal_mode(path) == "delete"


def test_an_interrupted_schema_creation_is_finished(tmp_path):
    """Some of our tables with an empty marker table (DDL committed table by table, as MySQL
    does, then a crash) is ours to finish, not a foreign database."""
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_info (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE, "
                     "created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, metadata JSON NOT NULL)")
    conn.close()
    with SessionStore(path) as store:
        store.create_session("works")
        assert store.schema_version() > 0


def test_an_empty_file_becomes_a_chatbot_database(tmp_path):
    path = tmp_path / "chat.db"
    path.touch()
    with SessionStore(path) as store:
        assert store.create_session("new").name == "new"


def test_sessions_list_refuses_a_foreign_database(tmp_path):
    path = other_app_database(tmp_path / "otherapp.db", "users")
    before = snapshot(tmp_path)
    for args in (("list",), ("show", "1"), ("export", "1"), ("delete", "1")):
        result = chatbot("sessions", *args, "--db", path)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1 and "not a chatbot database" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_read_only_commands_never_create_a_database(tmp_path):
    missing = tmp_path / "nowhere" / "chat.db"
    for args in (("list",), ("show", "x"), ("export", "x")):
        result = chatbot("sessions", *args, "--db", missing)
        assert result.returncode == 1 and "no database at" in result.stderr, result
        assert result.stderr.count("\n") == 1
    result = chatbot("models", "list", "--dir", tmp_path / "nowhere" / "models")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    assert list(tmp_path.iterdir()) == []


def test_models_list_and_show_create_and_change_nothing(tmp_path, tiny_bundle_path):
    """Neither in the models folder nor in the home directory (caches, config files)."""
    models, home = tmp_path / "models", tmp_path / "home"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "bundle.json").write_text('{"format_version": 1}', encoding="utf-8")
    shutil.copytree(tiny_bundle_path, models / "tiny")
    home.mkdir()
    before = snapshot(tmp_path)
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": "", "XDG_CACHE_HOME": "", "XDG_CONFIG_HOME": ""}
    for args, shown in ((("list", "--dir", models), "mine"), (("show", models / "tiny"), "every file intact and readable"),
                        (("show", models / "tiny", "--json"), '"config"')):
        result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "models", *map(str, args)],
                                cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0 and shown in result.stdout, result
    assert snapshot(tmp_path) == before


def test_read_only_commands_use_no_default_location_they_would_create(tmp_path):
    """Without --db, the default database is not created either (nor its directory)."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "CHATBOT_DB": ""}
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sessions", "list"], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and "no database at" in result.stderr, result
    assert not (tmp_path / "data").exists()


def test_in_memory_database_warns_that_nothing_is_kept():
    result = chatbot("sessions", "list", "--db", "sqlite://")
    assert result.returncode == 0, result
    assert "in memory" in result.stderr and "nothing" in result.stderr
    assert result.stderr.count("\n") == 1


# --- item 8: read-only storage ---------------------------------------------------------------
def test_read_only_store_reads_and_never_writes(tmp_path):
    path = our_database(tmp_path / "chat.db")
    main_file = path.read_bytes()
    with SessionStore(path, read_only=True) as store:
        assert store.read_only
        [info] = store.list_sessions()
        assert [m.text for m in store.history("kept")] == ["hello", "hi there"]
        assert store.export_session("kept").count("\n") == 2
        for write in (lambda: store.create_session("new"), lambda: store.add_message(info.id, "user", "x"),
                      lambda: store.delete_session(info.id), lambda: store.get_or_create_session("other")):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert path.read_bytes() == main_file


def test_read_only_store_refuses_a_missing_file(tmp_path):
    with pytest.raises(StoreError, match="no database at"):
        SessionStore(tmp_path / "missing" / "chat.db", read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_read_only_store_refuses_an_older_schema_instead_of_upgrading_it(tmp_path):
    """A database of schema_info version 1, as chatbot wrote it before Alembic."""
    path = legacy_database(tmp_path / "chat.db", version=1)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="schema version 1, older"):
        SessionStore(path, read_only=True)
    assert path.read_bytes() == before


def _unprivileged_prefix() -> list[str]:
    """How to run a command whose permission bits are enforced: as is for a normal user; as
    root, inside a user namespace as an unprivileged user (root ignores a chmod'ed
    directory). Skips when neither is possible."""
    if os.geteuid() != 0:
        return []
    prefix = ["unshare", "--user", "--map-user=1000"]
    if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without user namespaces: chmod cannot make a directory read-only")
    return prefix


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_read_only_commands_work_in_a_read_only_directory(tmp_path, journal):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = our_database(folder / "chat.db")
    if journal == "delete":
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
    before = snapshot(folder)
    prefix = _unprivileged_prefix()
    folder.chmod(0o555)
    path.chmod(0o444)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import os, sys; "
                                "print(os.access(sys.argv[1], os.W_OK))", str(folder)],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "False":
            pytest.skip("chmod does not make the directory read-only here")

        def run(*args):
            return subprocess.run([*prefix, sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=300)

        listed = run("sessions", "list", "--db", path)
        assert listed.returncode == 0 and "kept" in listed.stdout, listed
        shown = run("sessions", "show", "kept", "--db", path)
        assert shown.returncode == 0 and "hi there" in shown.stdout, shown
        exported = run("sessions", "export", "kept", "--db", path)
        assert exported.returncode == 0 and exported.stdout.count("\n") == 2, exported
        deleted = run("sessions", "delete", "kept", "--db", path)  # writes: a one-line error
        assert deleted.returncode == 1 and deleted.stderr.count("\n") == 1, deleted
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert snapshot(folder) == before


def test_ask_with_a_session_in_memory_warns_too(tiny_bundle_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--db", "sqlite://",
                             "--session", "s", "hello")
    assert code == 0, err
    assert "in memory" in err and out.count("\n") == 1


def test_a_nul_byte_in_a_database_url_is_a_store_error():
    for url in ("sqlite:////tmp/a%00b.db", "sqlite:////tmp/a\x00b.db"):
        with pytest.raises(StoreError, match="NUL byte"):
            SessionStore(url)


def test_a_deeply_nested_config_file_is_a_config_error(tmp_path):
    from chatbot.config import Config
    from chatbot.errors import ConfigError

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="deep.json"):
        Config.load(deep)
