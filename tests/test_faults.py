"""Faults injected for real, in subprocesses: kill -9 during training and while chatting, a
disk that fills up, a read-only database, a database locked by another process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import chatbot.cli.main as cli
from chatbot.dialogue.bot import ChatBot
from chatbot.model.bundle import CONFIG, FORMAT_VERSION, MANIFEST, TOKENIZER, WEIGHTS, Bundle, file_sha256
from chatbot.errors import MessageNotStored, StoreError
from chatbot.cli.repl import ChatRepl
from chatbot.dialogue.store import SessionStore
from chatbot.data.tokenizer import TextTokenizer
from chatbot.training.pipeline import work_dir_for
from conftest import ROOT, TINY_PAIRS
from helpers import CTRL_D, drive, run_cli

CLI = [sys.executable, str(ROOT / "cli.py")]
TINY_FLAGS = ["--units", "64", "--embedding-dim", "32", "--vocab-size", "300", "--learning-rate", "0.02",
              "--batch-size", "10", "--validation-fraction", "0", "--quiet"]


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll until ``condition()``; ``timeout`` is a hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_9(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL


def logged_epochs(out: Path) -> int:
    log = work_dir_for(out) / "training_log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


def test_kill_9_during_training_keeps_the_old_bundle_and_resume_finishes(tiny_bundle_path, tmp_path, capsys,
                                                                         monkeypatch):
    """Killed after its third epoch of six; then resumed in-process (the same code, without
    importing TensorFlow again), as the same command with --resume."""
    out = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, out)
    before = (out / WEIGHTS).read_bytes()
    args = ["train", "--corpus", str(TINY_PAIRS), "--out", str(out), "--epochs", "6", *TINY_FLAGS]
    command = CLI + args
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: logged_epochs(out) >= 3 or child.poll() is not None, 120, "three epochs")
        time.sleep(0.3)  # mid-epoch, most likely
        kill_9(child)
    finally:
        child.kill()
    # The installed bundle never changed and still loads; nothing half-written can be loaded.
    assert (out / WEIGHTS).read_bytes() == before
    Bundle.load(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")] == []

    code, _, err = run_cli(capsys, monkeypatch, *args, "--resume")
    assert code == 0, err
    assert "resuming training" in err
    bundle = Bundle.load(out)
    assert 0 < bundle.metrics["epochs_run"] < 6  # the epochs done before the kill were not redone
    assert not work_dir_for(out).exists()


def test_ctrl_c_during_training_stops_at_the_end_of_a_step_and_installs_nothing(tiny_bundle_path, tmp_path):
    """SIGINT mid-training: exit 130 and one line, the installed bundle unchanged. The signal
    only asks; training stops once the running step ends (a KeyboardInterrupt raised wherever
    Python was could land in TensorFlow's clean-up code, be ignored there, and training went on
    to install its model)."""
    out = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, out)
    before = (out / WEIGHTS).read_bytes()
    child = subprocess.Popen(CLI + ["train", "--corpus", str(TINY_PAIRS), "--out", str(out), "--epochs", "200",
                                    *TINY_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: logged_epochs(out) >= 2 or child.poll() is not None, 120, "two epochs")
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    assert last == "chatbot: interrupted (the same command with --resume continues it)" and stdout == b""
    assert (out / WEIGHTS).read_bytes() == before
    assert logged_epochs(out) < 200 and work_dir_for(out).is_dir()  # resumable


CHATTER = """
import sys
from chatbot.dialogue.store import SessionStore
store = SessionStore(sys.argv[1])
sid = store.create_session("victim").id
n = 0
while True:
    user = store.add_message(sid, "user", f"question {n}")
    store.add_message(sid, "bot", f"answer {n}", score=-0.1, in_reply_to=user.id)
    print(n, flush=True)  # printed only once both are committed
    n += 1
"""


def test_kill_9_while_writing_loses_no_committed_message(tmp_path):
    db = tmp_path / "chat.db"
    child = subprocess.Popen([sys.executable, "-c", CHATTER, str(db)], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    confirmed = -1
    try:
        for line in child.stdout:
            confirmed = int(line)
            if confirmed >= 150:
                break
        kill_9(child)
    finally:
        child.kill()
    with SessionStore(db) as store:
        assert store.integrity_check()
        texts = [m.text for m in store.history("victim")]
    pairs = len(texts) // 2
    assert pairs > confirmed  # every exchange reported as committed is there (maybe one more)
    expected = [t for n in range(pairs) for t in (f"question {n}", f"answer {n}")]
    assert texts[:2 * pairs] == expected and texts[2 * pairs:] in ([], [f"question {pairs}"])


def test_kill_9_of_chatbot_chat_leaves_a_clean_database(tiny_bundle_path, tiny_pairs, tmp_path):
    db = tmp_path / "chat.db"
    child = subprocess.Popen(CLI + ["chat", "--model", str(tiny_bundle_path), "--db", str(db), "--session", "s"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    replies = 0
    try:
        for question, _ in tiny_pairs[:6]:
            child.stdin.write(question + "\n")
            child.stdin.flush()
            child.stdout.readline()
            replies += 1
        child.stdin.write(tiny_pairs[6][0] + "\n")  # killed while this one is handled
        child.stdin.flush()
        kill_9(child)
    finally:
        child.kill()
    with SessionStore(db) as store:
        assert store.integrity_check()
        history = store.history("s")
    asked = [q for q, _ in tiny_pairs[:7]]
    assert [m.text for m in history if m.role == "user"] in (asked[:6], asked)
    assert sum(m.role == "bot" for m in history) >= replies


def test_a_locked_database_is_a_clear_error_and_nothing_half_written(tmp_path):
    db = tmp_path / "chat.db"
    with SessionStore(db) as store:
        sid = store.create_session("s").id
        store.add_message(sid, "user", "before the lock")
    store = SessionStore(db, busy_timeout_ms=300)
    with store.engine.connect() as conn:  # SQLite waits this long for the lock before giving up
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 300
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match="database is locked") as caught:
            store.add_message(sid, "user", "during the lock")
        assert "\n" not in str(caught.value)
        # An up-to-date database opens without writing (Alembic only reads its revision), so it
        # opens and reads under the lock; its first write waits, then says so too.
        with SessionStore(db, busy_timeout_ms=300) as other:
            assert [m.text for m in other.history("s")] == ["before the lock"]
            with pytest.raises(StoreError, match="database is locked"):
                other.create_session("t")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        store.close()
    with SessionStore(db) as store:  # reported, not half-stored; the store works again
        assert [m.text for m in store.history("s")] == ["before the lock"]
        store.add_message(sid, "user", "after the lock")


@contextmanager
def write_locked(db: Path):
    """Another process's view of the database: a write transaction held open."""
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield locker
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()


@pytest.fixture
def impatient_bot(tiny_bot, tmp_path):
    """The tiny model on a database that gives up on a lock after 300 ms."""
    store = SessionStore(tmp_path / "chat.db", busy_timeout_ms=300)
    bot = ChatBot(tiny_bot.bundle, db=store, warm_up=False, generator=tiny_bot.generator)
    yield bot
    bot.close()
    store.close()


def test_a_locked_database_refuses_the_message_plainly_and_it_can_be_sent_again(impatient_bot, tiny_pairs,
                                                                                 tmp_path):
    question, answer = tiny_pairs[0]
    session = impatient_bot.new_session("s").id
    with write_locked(tmp_path / "chat.db"):
        with pytest.raises(MessageNotStored, match="database is locked; your message was not stored") as caught:
            impatient_bot.reply(question, session=session)
    assert caught.value.text == question and impatient_bot.history(session) == []
    assert impatient_bot.reply(caught.value.text, session=session).text == answer  # the lock is gone
    assert [m.text for m in impatient_bot.history(session)] == [question, answer]


def test_a_database_locked_while_decoding_keeps_the_question_and_returns_the_reply(impatient_bot, tiny_pairs,
                                                                                   tmp_path, monkeypatch):
    question, answer = tiny_pairs[1]
    session = impatient_bot.new_session("s").id
    with contextlib.ExitStack() as stack:
        decode = impatient_bot.generator.generate

        def decode_then_lock(*args, **kwargs):
            replies = decode(*args, **kwargs)
            stack.enter_context(write_locked(tmp_path / "chat.db"))  # taken while the bot thinks
            return replies

        monkeypatch.setattr(impatient_bot.generator, "generate", decode_then_lock)
        repl = ChatRepl(impatient_bot, session, output=io.StringIO())
        repl.handle(question)
    out = repl.output.getvalue().splitlines()
    assert out[0] == f"tiny> {answer}"  # what the bot said is shown, though it could not be stored
    assert out[1].startswith("error: database error") and "database is locked; the reply was not stored" in out[1]
    [stored] = impatient_bot.history(session)
    assert stored.text == question and f"your message was, as message {stored.id} " in out[1]


def test_the_repl_offers_a_refused_message_again_and_enter_sends_it(impatient_bot, tiny_pairs, tmp_path,
                                                                    monkeypatch):
    question, answer = tiny_pairs[2]
    repl = ChatRepl(impatient_bot, "s", output=io.StringIO())
    add_message = impatient_bot.store.add_message
    with write_locked(tmp_path / "chat.db") as locker:

        def first_attempt_meets_the_lock(*args, **kwargs):
            try:
                return add_message(*args, **kwargs)
            finally:
                if locker.in_transaction:
                    locker.execute("ROLLBACK")  # released after the first refusal

        monkeypatch.setattr(impatient_bot.store, "add_message", first_attempt_meets_the_lock)
        out = drive(repl, f"{question}\r\r{CTRL_D}")  # type the question, then only press Enter
    assert "database is locked; your message was not stored: press Enter to send it again" in out
    assert f"tiny> {answer}" in out
    assert [m.text for m in impatient_bot.history("s")] == [question, answer]


def test_a_refused_message_offered_again_does_not_trap_the_user(impatient_bot, tiny_pairs, tmp_path):
    """While the database refuses messages, the offered text must not swallow what is typed
    after it: a command typed there runs, and Ctrl-D on the offered text alone leaves."""
    question, _ = tiny_pairs[2]
    repl, again = (ChatRepl(impatient_bot, "s", output=io.StringIO()) for _ in range(2))
    with write_locked(tmp_path / "chat.db"):
        out = drive(repl, f"{question}\r/history\r{CTRL_D}")
        assert out.count("your message was not stored") == 1 and "no messages in this session yet" in out
        out = drive(again, f"{question}\r{CTRL_D}not read\r")
        assert out.count("your message was not stored") == 1 and "not read" not in out
    assert impatient_bot.history("s") == []


def test_a_read_only_database_is_a_clear_error(tiny_bundle_path, tmp_path, capsys, monkeypatch):
    db = tmp_path / "chat.db"
    with SessionStore(db) as store:
        store.add_message(store.create_session("s").id, "user", "kept")
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    code, _, err = run_cli(capsys, monkeypatch, "ask", "--db", url, "--session", "s", "hello")  # in-process
    assert code == 1
    assert err.startswith("chatbot: error: ") and "readonly database" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with SessionStore(db) as store:
        assert [m.text for m in store.history("s")] == ["kept"]
    # Piped chat answers each line with an error line, and exits 1 as ask does (it exited 0).
    code, out, err = run_cli(capsys, monkeypatch, "chat", "--model", tiny_bundle_path, "--db", url,
                             "--session", "s", stdin="hello\nagain\n")
    assert code == 1 and len(out.splitlines()) == 2 and all("readonly database" in line for line in out.splitlines())
    assert err.splitlines()[-1] == "chatbot: error: 2 lines not answered (see the error lines)"


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["chatbot"] + sys.argv[2:]
import chatbot.cli.main as cli
sys.exit(cli.main())
"""


def test_a_full_disk_while_chatting_is_a_clear_error_and_keeps_what_was_stored(tiny_bundle_path, tmp_path):
    db = tmp_path / "chat.db"
    with SessionStore(db) as store:
        store.add_message(store.create_session("s").id, "user", "stored before the disk filled up")
    questions = "".join(f"question number {n} " + "padding " * 20 + "\n" for n in range(3000))
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(512 * 1024), "ask", "--model", str(tiny_bundle_path),
                             "--db", str(db), "--session", "s"], input=questions, capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.startswith("chatbot: error: ") and result.stderr.count("\n") == 1
    # SQLite says "database or disk is full" for ENOSPC and "disk I/O error" for EFBIG (the limit here)
    assert ("database or disk is full" in result.stderr or "disk I/O error" in result.stderr)
    assert "Traceback" not in result.stderr
    answered = len(result.stdout.splitlines())
    assert answered > 0  # it worked until the disk was full
    with SessionStore(db) as store:  # everything committed is intact and readable
        assert store.integrity_check()
        history = store.history("s")
    assert history[0].text == "stored before the disk filled up"
    # Every reply printed was stored, but for a last one made when the database took no more
    # (printed as the last line; the error says it was not stored).
    unstored = "the reply was not stored" in result.stderr
    assert sum(m.role == "bot" for m in history) >= answered - unstored


def run_with_file_size_limit(limit: int, *cli_args: str, **kwargs) -> subprocess.CompletedProcess:
    """``chatbot ARGS`` with no file allowed to grow past ``limit`` bytes: writes past it fail
    as they do on a full disk."""
    return subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *cli_args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *reasons: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]  # not -11: no crash on the way out
    errors = [line for line in result.stderr.splitlines() if not line.startswith("[chatbot] ")]
    assert len(errors) == 1 and errors[0].startswith("chatbot: error: "), result.stderr[-2000:]
    assert any(reason in errors[0] for reason in reasons), errors[0]
    assert "Traceback" not in result.stderr and "h5py" not in result.stderr


def test_a_full_disk_while_training_is_one_line_keeps_the_old_bundle_and_resume_finishes(tiny_bundle_path,
                                                                                          tmp_path, capsys,
                                                                                          monkeypatch):
    out = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    args = ["train", "--corpus", str(TINY_PAIRS), "--out", str(out), "--epochs", "3", *TINY_FLAGS]
    # Big enough for the tokenizer and the logs, too small for a checkpoint of the weights.
    result = run_with_file_size_limit(150_000, *args)
    assert_one_line_error(result, "File too large", "No space left on device")
    assert "--resume" in result.stderr and f"the model at {out} is unchanged" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    Bundle.load(out)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    code, _, err = run_cli(capsys, monkeypatch, *args, "--resume")  # in-process: the disk has room again
    assert code == 0, err
    assert Bundle.load(out).metrics["epochs_run"] == 3


SAVE_WHEN_FULL = """
import resource, signal, sys
from chatbot.cli.quiet import import_tensorflow_quietly
import_tensorflow_quietly()
from chatbot.model.bundle import Bundle
from chatbot.errors import BundleError
bundle = Bundle.load(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
try:
    bundle.save(sys.argv[2])
except BundleError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def test_a_full_disk_while_saving_a_bundle_keeps_the_old_one(tiny_bundle_path, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(tiny_bundle_path, target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    result = subprocess.run([sys.executable, "-c", SAVE_WHEN_FULL, str(tiny_bundle_path), str(target)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 3, result.stderr[-2000:]  # a BundleError, then a clean exit
    assert result.stderr.strip().splitlines() == [f"{target}: cannot write the bundle (File too large)"]
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# --- damaged or mismatched bundles, as the command line reports them ----------------------------
def resign(bundle: Path, *names: str) -> None:
    """Record new checksums for edited files, as if the damage had been written by the trainer:
    the damage itself, not the checksum, must then be what is caught."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"].update({name: file_sha256(bundle / name) for name in names})
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def edit_json(file: Path, change) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


def truncate_weights(bundle: Path) -> None:
    weights = bundle / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def truncate_weights_resigned(bundle: Path) -> None:
    truncate_weights(bundle)
    resign(bundle, WEIGHTS)


def newer_config(bundle: Path) -> None:
    edit_json(bundle / CONFIG, lambda config: config["model"].update(rotary_positions=True))
    edit_json(bundle / MANIFEST, lambda manifest: manifest.update(chatbot_version="9.0.0"))
    resign(bundle, CONFIG)


def another_models_tokenizer(bundle: Path, *, resigned_vocab: bool) -> None:
    texts = ["a different corpus", "with other words entirely", "so other token ids"] * 20
    TextTokenizer.fit(texts, "subword", 120).save(bundle / TOKENIZER)
    resign(bundle, TOKENIZER)
    if resigned_vocab:  # even the manifest agrees: only the weights' shapes can tell
        edit_json(bundle / MANIFEST, lambda manifest: manifest.update(vocab_size=TextTokenizer.load(
            bundle / TOKENIZER).vocab_size))


DAMAGES = {
    "missing weights": (lambda b: (b / WEIGHTS).unlink(), "missing file"),
    "truncated weights": (truncate_weights, "corrupt file (checksum mismatch)"),
    "truncated weights, re-signed": (truncate_weights_resigned, "cannot load weights"),
    "newer bundle format": (lambda b: edit_json(b / MANIFEST, lambda m: m.update(format_version=FORMAT_VERSION + 1)),
                            "newer than this chatbot supports"),
    "config from a newer chatbot": (newer_config, "made by chatbot 9.0.0, newer than this one"),
    "another model's tokenizer": (lambda b: another_models_tokenizer(b, resigned_vocab=False),
                                  "tokenizer has"),
    "another model's tokenizer, re-signed": (lambda b: another_models_tokenizer(b, resigned_vocab=True),
                                             "cannot load weights"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_bundle_is_one_line_and_leaves_the_database_alone(damage, tiny_bundle_path, tmp_path,
                                                                   capsys, monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # what `chatbot ask` would set, undone afterwards
    bundle = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, bundle)
    damaging, expected = DAMAGES[damage]
    damaging(bundle)
    db = tmp_path / "chat.db"
    with SessionStore(db) as store:
        store.add_message(store.create_session("s").id, "user", "stored before")
    stored = db.read_bytes()

    assert cli.main(["ask", "--model", str(bundle), "--db", str(db), "--session", "s", "hello"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("chatbot: error: "), err
    assert expected in err and "Traceback" not in err
    assert db.read_bytes() == stored
