"""``chatbot chat``: the REPL driven through prompt-toolkit's real prompt loop (pipe input,
dummy output), its plain line mode through the CLI, and once through a pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory

from chatbot.version import __version__
from chatbot.dialogue.bot import ChatBot
from chatbot.data.corpus import load_corpus
from chatbot.cli.console import Spinner, color_wanted, history_path
from chatbot.cli.repl import SETTINGS, ChatRepl, SlashCompleter
from conftest import ROOT
from helpers import CTRL_C, CTRL_D, UP, chatbot, drive


def new_repl(bot, session=None, **kw) -> ChatRepl:
    return ChatRepl(bot, session, output=io.StringIO(), **kw)


def texts(bot, session) -> list[str]:
    return [m.text for m in bot.history(session)]


# --- the prompt loop ------------------------------------------------------------------------------
def test_prompt_loop_replies_and_stores_every_turn(bot, tiny_pairs):
    (q1, a1), (q2, a2) = tiny_pairs[0], tiny_pairs[6]
    repl = new_repl(bot)
    out = drive(repl, f"{q1}\r\r{q2}\r/quit\rnot read\r")
    assert out.startswith(f"chatbot {__version__} - model tiny (greedy, max 40)")
    assert f"tiny> {a1}\ntiny> {a2}\n" in out
    [session] = bot.sessions()  # one new session, created by the first message
    assert texts(bot, session.id) == [q1, a1, q2, a2]
    stored = bot.history(session.id)[1]
    assert stored.role == "bot" and stored.model_name == "tiny"


def test_opening_and_leaving_stores_nothing_and_ctrl_d_or_closed_input_exit(bot):
    drive(new_repl(bot), CTRL_D)
    drive(new_repl(bot), "/help\r", close=True)  # input ends: like Ctrl-D
    assert bot.sessions() == []


def test_ctrl_c_during_the_first_reply_keeps_the_message_in_the_session_the_next_one_joins(
        bot, tiny_pairs, monkeypatch):
    """A Ctrl-C during a new session's first decode: the message was stored, in a session the
    REPL did not know yet, so the next message started another and split the conversation."""
    (q1, _), (q2, a2) = tiny_pairs[0], tiny_pairs[6]
    generate = bot.generator.generate
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(bot.generator, "generate", interrupted_once)
    repl = new_repl(bot)
    out = drive(repl, f"{q1}\r{q2}\r{CTRL_D}")
    assert "interrupted: your message is kept, without a reply" in out
    [session] = bot.sessions()
    assert texts(bot, session.id) == [q1, q2, a2]


def test_a_rating_judges_the_reply_shown_here_not_the_newest_of_the_session(bot, tiny_pairs):
    """Two REPLs on one session: /bad in the first must not rate the second one's reply."""
    (q1, a1), (q2, a2) = tiny_pairs[0], tiny_pairs[6]
    first, second = new_repl(bot, "duo"), new_repl(bot, "duo")
    first.handle(q1)
    second.handle(q2)
    first.handle("/bad")
    second.handle("/correct a better answer")
    rated = {m.text: bot.store.get_feedback(m.id) for m in bot.history("duo") if m.role == "bot"}
    assert rated[a1].rating == "bad" and rated[a1].correction is None
    assert rated[a2].correction == "a better answer"
    resumed = new_repl(bot, "duo")  # a REPL that showed no reply judges the newest, as before
    resumed.handle("/good")
    assert bot.store.get_feedback(bot.history("duo")[-1].id).rating == "good"


def test_a_reply_the_database_refused_is_not_rated_by_rating_the_one_before(bot, tiny_pairs, monkeypatch):
    """The second reply was shown but not stored: /correct wrote its correction onto the first
    reply (the newest stored), a wrong training pair for --feedback exports."""
    from chatbot.errors import StoreError

    (q1, a1), (q2, _) = tiny_pairs[0], tiny_pairs[6]
    repl = new_repl(bot, "flaky")
    repl.handle(q1)
    add_message = bot.store.add_message

    def refuse_replies(session, role, text, **fields):
        if role == "bot":
            raise StoreError("simulated: database is locked")
        return add_message(session, role, text, **fields)

    monkeypatch.setattr(bot.store, "add_message", refuse_replies)
    repl.handle(q2)
    monkeypatch.setattr(bot.store, "add_message", add_message)
    repl.handle("/correct a better answer")
    assert "the last reply was not stored, so it cannot be rated" in repl.output.getvalue()
    [first] = [m for m in bot.history("flaky") if m.role == "bot"]
    assert first.text == a1 and bot.store.get_feedback(first.id) is None


def test_switch_takes_an_id_as_sessions_lists_it(bot):
    bot.new_session("one")
    repl = new_repl(bot)
    repl.handle("/switch #1")
    assert repl.session_id == 1 and "switched to session one (#1), 0 messages" in repl.output.getvalue()
    repl.handle("/sessions")
    assert " 0 messages" in repl.output.getvalue().splitlines()[-1]
    bot.store.add_message(1, "user", "hi")
    repl.handle("/sessions")
    assert " 1 message " in repl.output.getvalue().splitlines()[-1]


def test_export_never_replaces_another_database(bot, tmp_path):
    from chatbot.dialogue.store import SessionStore

    other = tmp_path / "other.db"
    with SessionStore(f"sqlite:///{other}") as store:
        store.create_session("kept")
    before = other.read_bytes()
    repl = new_repl(bot)
    bot.store.add_message(bot.new_session("s").id, "user", "hi")
    repl.handle("/switch s")
    repl.handle(f"/export {other}")
    assert f"{other}: that is a SQLite database; export to another file" in repl.output.getvalue()
    assert other.read_bytes() == before


def test_ctrl_c_clears_the_line_and_the_loop_goes_on(bot, tiny_pairs):
    question, answer = tiny_pairs[4]
    repl = new_repl(bot)
    out = drive(repl, f"half a thought{CTRL_C}{question}\r{CTRL_D}")
    assert f"tiny> {answer}" in out
    assert texts(bot, repl.session_id) == [question, answer]  # the cleared line never went out


def test_sessions_new_switch_history_and_reset_naming(bot, tiny_pairs):
    (q1, a1), (q2, a2), (q3, a3) = tiny_pairs[:3]
    repl = new_repl(bot)
    out = drive(repl, f"{q1}\r/new bob\r{q2}\r/sessions\r/switch 1\r/history 1\r"
                      f"/switch bob\r/reset\r/reset\r{q3}\r/switch nobody\r/history\r/quit\r")
    first, bob, bob2 = sorted(bot.sessions(), key=lambda s: s.id)
    assert (first.name, bob.name, bob2.name) == (None, "bob", "bob-2")  # no empty bob-2 left behind
    assert texts(bot, first.id) == [q1, a1] and texts(bot, "bob") == [q2, a2]
    assert texts(bot, "bob-2") == [q3, a3]
    assert "new session bob (#2)" in out
    assert re.search(r"^\* #2 +bob +2 messages", out, re.M)  # /sessions marks the current one
    assert re.search(r"^  #1 +- +2 messages", out, re.M)
    assert f"switched to session #1, 2 messages\n  you: {q1}\n  tiny: {a1}\n" in out  # recent turns
    assert f"\n  tiny: {a1}\nswitched to session bob (#2), 2 messages\n" in out  # after /history 1
    assert "new session bob-2 (#3)\nsession bob-2 (#3) has no messages yet: it is a fresh start already\n" in out
    assert "error: no session named 'nobody'\n" in out
    assert out.endswith(f"  you: {q3}\n  tiny: {a3}\n")  # /switch failed: still in bob-2
    assert repl.session_name == "bob-2"
    drive(repl, f"/reset\r{CTRL_D}")  # a session with messages resets to the next free name
    assert repl.session_name == "bob-3"


def test_set_max_length_shortens_the_next_replies_and_bad_input_gets_one_line(bot, tiny_pairs):
    question, answer = tiny_pairs[12]  # the longest answer
    repl = new_repl(bot)
    keys = ["/SET MAX_LENGTH 2", "/set strategy Greedy", question, "/set max_length 0", "/set max_length many", "/set width 4",
            "/set max_length", "/frobnicate now", "/history x", "/set", "/score", question, "/quit"]
    out = drive(repl, "".join(k + "\r" for k in keys))
    short, full = bot.history(repl.session_id)[1].text, bot.history(repl.session_id)[3].text
    assert len(short) < len(answer) and answer.startswith(short.rstrip(".!?"))
    assert full == short  # settings stay until changed
    assert bot.generator.decoding.max_length == 40  # the shared generator is left as it was
    for message in ["max_length = 2 for the next replies", "strategy = greedy for the next replies",
                    "invalid value for 'decoding.max_length': must be between 1 and 10000, got 0",
                    "invalid value for max_length: expected a positive integer, got 'many'",
                    "unknown setting 'width' (settable: " + ", ".join(SETTINGS) + ")",
                    "usage: /set max_length VALUE",
                    "unknown command '/frobnicate'; /help lists the commands",
                    "usage: /history [N]: expected a positive integer, got 'x'",
                    "max_length = 2  tokens generated at most per reply",
                    "scores on"]:
        assert f"\n{message}\n" in out
    assert re.search(rf"tiny> {re.escape(short)}  \[score -?\d\.\d{{3}}, \d+ ms\]\n$", out)
    assert "greedy, max 2" in repl.toolbar()[0][1]


def test_export_yaml_is_a_trainable_corpus_and_jsonl_has_every_message(bot, tiny_pairs, tmp_path):
    (q1, a1), (q2, a2) = tiny_pairs[7], tiny_pairs[8]
    repl = new_repl(bot, "carol")  # a missing name is created
    out = drive(repl, f"/export {tmp_path / 'empty.yml'}\r{q1}\r{q2}\r/export {tmp_path / 'c.yaml'}\r"
                      f"/export {tmp_path / 'c.jsonl'}\r/export {tmp_path / 'no' / 'dir.yml'}\r{CTRL_D}")
    assert "wrote session carol (#1) to" in out and "(yaml)" in out and "(jsonl)" in out
    assert f"cannot write {tmp_path / 'no' / 'dir.yml'}: No such file or directory" in out
    corpus = load_corpus(tmp_path / "c.yaml")
    assert [[u.text for u in d.utterances] for d in corpus.dialogues] == [[q1, a1], [q2, a2]]  # question, reply
    assert {d.category for d in corpus.dialogues} == {"carol"}
    assert (tmp_path / "c.jsonl").read_text().count("\n") == 4


def test_model_and_help(bot):
    out = drive(new_repl(bot), "/model\r/help\r/?\r/set beam 3\r/model\r/exit\r")
    params = bot.bundle.manifest["parameters"]
    assert "  gru, 1 layer of 64 units, attention dot, embeddings 32\n" in out
    assert f"  tokenizer subword, vocab 300, {params:,} parameters\n" in out
    assert "  decoding greedy, max 40, context turns 0\n" in out
    # After /set, what changed beside the model's own (it named only max_length before).
    assert "  decoding beam 3, max 40 (model default: greedy, max 40), context turns 0\n" in out
    for command in ("/new [NAME]", "/sessions", "/switch ID_OR_NAME", "/history [N]", "/reset", "/model",
                    "/set [KEY VALUE]", "/score", "/export PATH", "/quit"):
        assert out.count(f"\n{command} ") == 2


def test_input_history_persists_across_runs(bot, tiny_pairs, tmp_path):
    (q1, a1), (q2, a2) = tiny_pairs[9], tiny_pairs[10]
    path = history_path(bot.store.url)
    assert path == tmp_path / "chatbot_history"
    drive(new_repl(bot), f"{q1}\r{q2}\r/quit\r", history=path)
    assert list(FileHistory(str(path)).load_history_strings()) == ["/quit", q2, q1]
    # A second run over the same file: Up twice recalls q2 (skipping /quit), Enter sends it.
    repl = new_repl(bot)
    out = drive(repl, f"{UP}{UP}\r{CTRL_D}", history=path)
    assert f"tiny> {a2}" in out and texts(bot, repl.session_id) == [q2, a2]


def test_history_file_location(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert history_path(f"sqlite:///{tmp_path / 'd' / 'x.db'}") == tmp_path / "d" / "chatbot_history"
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql://u:p@host/db"):
        assert history_path(url) == tmp_path / "xdg" / "chatbot" / "chatbot_history"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)  # as /tmp: what one user types must not be left where all can read it
    assert history_path(f"sqlite:///{shared / 'x.db'}") == tmp_path / "xdg" / "chatbot" / "chatbot_history"
    monkeypatch.setenv("XDG_DATA_HOME", "relative")  # ignored, per the XDG spec
    assert history_path("sqlite://") == Path.home() / ".local" / "share" / "chatbot" / "chatbot_history"


def test_a_history_file_others_could_read_is_made_private_and_a_link_is_not_followed(tmp_path, capsys):
    import stat

    from chatbot.cli.console import open_history

    loose = tmp_path / "chatbot_history"
    loose.write_text("\n# 2026-01-01\n+earlier\n")
    loose.chmod(0o666)
    assert list(open_history(loose).load_history_strings()) == ["earlier"]
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "linked" / "chatbot_history"
    link.parent.mkdir()
    link.symlink_to(target)
    assert isinstance(open_history(link), InMemoryHistory)
    assert "input history not saved" in capsys.readouterr().err and target.read_text() == ""


def test_tab_completion_of_commands_settings_and_session_names(bot):
    bot.new_session("bob")
    bot.new_session("barbara")
    repl = new_repl(bot)

    def complete(text):
        return [c.text for c in SlashCompleter(repl).get_completions(Document(text), None)]

    assert complete("/s") == ["/sessions", "/switch", "/set", "/score"]
    assert complete("/set ma") == ["max_length"]
    assert complete("/set m") == ["max_length", "min_length", "mmi_weight"]
    assert sorted(complete("/switch b")) == ["barbara", "bob"]
    assert complete("hello /s") == [] and complete("/history 1") == []
    out = drive(repl, "/sw\t", later=" bob\r/quit\r", wait_for="/switch")  # Tab in the real prompt
    assert "switched to session bob (#1)" in out


def test_toolbar_shows_session_model_and_decoding(bot, tiny_pairs):
    repl = new_repl(bot)
    assert repl.toolbar()[0][1].strip().startswith("session new  |  model tiny  |  greedy, max 40")
    repl.handle("/new dora")
    assert "session dora (#1)" in repl.toolbar()[0][1]


def test_resuming_a_session_shows_its_last_turns(bot, tiny_pairs):
    for question, _ in tiny_pairs[:4]:
        bot.reply(question, session=bot.session("erin").id)
    out = drive(new_repl(bot, "erin"), CTRL_D)
    assert "Resuming session erin (#1), the last 6 messages:\n" in out
    assert out.endswith("".join(f"  you: {q}\n  tiny: {a}\n" for q, a in tiny_pairs[1:4]))


def test_handle_is_usable_without_a_terminal(bot, tiny_pairs):
    question, answer = tiny_pairs[2]
    repl = new_repl(bot, plain=True)
    assert repl.handle(question) is True
    assert repl.handle("") is True and repl.handle("/nope") is True and repl.handle("/history") is True
    assert repl.handle("/quit") is False
    assert repl.output.getvalue() == (f"{answer}\n\nunknown command '/nope'; /help lists the commands\n"
                                      f"you: {question} | tiny: {answer}\nbye\n")  # one line out per line in


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert color_wanted(False, Terminal()) and not color_wanted(True, Terminal())
    assert not color_wanted(False, io.StringIO())
    monkeypatch.setenv("TERM", "dumb")  # a terminal that shows escape codes as they are
    assert not color_wanted(False, Terminal())
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_wanted(False, Terminal())


def test_spinner_draws_on_a_terminal_and_erases_itself_even_on_error():
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Spinner("loading", stream=stream, enabled=True, interval=0.01):
        time.sleep(0.05)
        raise RuntimeError("boom")
    drawn = stream.getvalue()
    assert "| loading (0 s)" in drawn and drawn.endswith("\r" + " " * len("| loading (0 s)") + "\r")
    quiet = io.StringIO()
    with Spinner("loading", stream=quiet):  # not a terminal: silent
        pass
    assert quiet.getvalue() == ""


# --- the command line ---------------------------------------------------------------------------
def test_cli_plain_mode_one_line_per_input_line_and_session_resume(tiny_bundle_path, tiny_pairs, tmp_path):
    db = tmp_path / "chat.db"
    with ChatBot.load(tiny_bundle_path, db=str(db), warm_up=False) as b:
        b.reply(tiny_pairs[0][0], session=b.session("alice").id)
    lines = [tiny_pairs[1][0], "", "/history 4", "/bogus", tiny_pairs[2][0], "/set max_length x",
             "/quit", tiny_pairs[3][0]]
    result = chatbot("chat", "--model", tiny_bundle_path, "--db", db, "--session", "alice",
                     stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split("\n") == [
        tiny_pairs[1][1], "",
        "you: {} | tiny: {} | you: {} | tiny: {}".format(*tiny_pairs[0], *tiny_pairs[1]),  # resumed
        "unknown command '/bogus'; /help lists the commands",
        tiny_pairs[2][1],
        "invalid value for max_length: expected a positive integer, got 'x'",
        "bye", "",  # /quit has its line too, and the line after it is not read
    ]
    with ChatBot.load(tiny_bundle_path, db=str(db), warm_up=False) as b:
        [alice] = b.sessions()
        assert alice.name == "alice"
        assert texts(b, "alice")[::2] == [q for q, _ in tiny_pairs[:3]]
    assert (tmp_path / "chatbot_history").exists() is False  # plain mode keeps no input history


def test_cli_missing_model_is_one_line_exit_1(tmp_path):
    result = chatbot("chat", "--model", tmp_path / "nope", "--db", tmp_path / "chat.db", stdin="hello\n")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no such model" in result.stderr
    assert result.stdout == ""


def test_a_missing_or_damaged_model_is_said_before_tensorflow_starts(tiny_bundle_path, tmp_path):
    """A wrong --model is said at once, not after TensorFlow's seconds of start-up (or, for a
    server, as a model that never loads)."""
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle_path, damaged)
    (damaged / "tokenizer.json").write_text("{}")
    runs = [["chat", "--model", str(tmp_path / "nope"), "--db", str(tmp_path / "chat.db")],
            ["ask", "--model", str(damaged), "hello"],
            ["evaluate", "--model", str(tiny_bundle_path), "--against", str(tmp_path / "nope")],
            ["serve", "--model", str(damaged), "--db", "sqlite://"]]
    script = ("import json, sys\nfrom chatbot.cli.main import main\n"
              f"codes = [main(argv) for argv in {runs!r}]\n"
              "print(json.dumps([codes, 'tensorflow' in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert json.loads(result.stdout) == [[1, 1, 1, 1], False]
    missing, corrupt, missing_too, corrupt_too = result.stderr.splitlines()
    assert missing.startswith(f"chatbot: error: {tmp_path / 'nope'}: no such model (give a bundle directory")
    assert corrupt == f"chatbot: error: {damaged / 'tokenizer.json'}: corrupt file (checksum mismatch)"
    assert (missing_too, corrupt_too) == (missing, corrupt)


def test_cli_unusable_database_is_one_line_exit_1(tiny_bundle_path, tmp_path, capsys, monkeypatch):
    import chatbot.cli.main as cli

    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code = cli.main(["chat", "--model", str(tiny_bundle_path), "--db", str(tmp_path / "file" / "chat.db")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("chatbot: error: ")
    assert "Traceback" not in err


# --- a real terminal ------------------------------------------------------------------------------
class Screen:
    """Just enough of a VT100 to read what prompt-toolkit draws: text, cursor moves, erases,
    scrolling (kept as scrollback) and answers to cursor position requests."""

    ESCAPE = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z@])|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>78]")

    def __init__(self, rows: int = 24, cols: int = 80):
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.scrollback: list[str] = []
        self.y = self.x = 0
        self.sgr: list[str] = []  # every "select graphic rendition" parameter list seen

    def feed(self, data: str) -> int:
        """Apply output; returns how many cursor position requests it held."""
        requests, pos = 0, 0
        for m in self.ESCAPE.finditer(data):
            self._text(data[pos:m.start()])
            pos = m.end()
            params, op = m.group(1) or "", m.group(2)
            if op is None or params.startswith("?"):
                continue
            nums = [int(p) if p else 0 for p in params.split(";")] if params else []
            n = max(nums[0], 1) if nums else 1
            if op == "A":
                self.y = max(self.y - n, 0)
            elif op == "B":
                self.y = min(self.y + n, self.rows - 1)
            elif op == "C":
                self.x = min(self.x + n, self.cols - 1)
            elif op == "D":
                self.x = max(self.x - n, 0)
            elif op in "Hf":
                self.y = min(max(nums[0] if nums else 1, 1), self.rows) - 1
                self.x = min(max(nums[1] if len(nums) > 1 else 1, 1), self.cols) - 1
            elif op in "JK":
                self.grid[self.y][self.x:] = [" "] * (self.cols - self.x)
                if op == "J":
                    for row in range(self.y + 1, self.rows):
                        self.grid[row] = [" "] * self.cols
            elif op == "m":
                self.sgr.append(params)
            elif op == "n" and nums == [6]:
                requests += 1
        self._text(data[pos:])
        return requests

    def _text(self, text: str) -> None:
        for ch in text:
            if ch == "\r":
                self.x = 0
            elif ch == "\n":
                self._newline()
            elif ch >= " " and ch != "\x7f":
                if self.x >= self.cols:
                    self.x = 0
                    self._newline()
                self.grid[self.y][self.x] = ch
                self.x += 1

    def _newline(self) -> None:
        if self.y == self.rows - 1:
            self.scrollback.append("".join(self.grid.pop(0)).rstrip())
            self.grid.append([" "] * self.cols)
        else:
            self.y += 1

    def text(self) -> str:
        lines = self.scrollback + ["".join(row).rstrip() for row in self.grid]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)


def test_chat_in_a_real_terminal(tiny_bundle_path, tiny_pairs, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    question, answer = tiny_pairs[2]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm", XDG_DATA_HOME=str(tmp_path / "xdg"))
    child = pexpect.spawn(sys.executable, [str(ROOT / "cli.py"), "chat", "--model", str(tiny_bundle_path),
                                           "--db", str(tmp_path / "chat.db"), "--no-color"],
                          cwd=str(ROOT), env=env, dimensions=(24, 80), encoding="utf-8", timeout=120)
    screen = Screen()

    def until(done, timeout: float = 120) -> None:
        """Read (answering cursor position requests, as a terminal does) until ``done(screen)``."""
        deadline = time.monotonic() + timeout
        while not done(screen):
            try:
                data = child.read_nonblocking(65536, timeout=max(deadline - time.monotonic(), 0.1))
            except pexpect.TIMEOUT:
                raise AssertionError(f"timed out; the screen:\n{screen.text()}") from None
            for _ in range(screen.feed(data)):
                child.send(f"\x1b[{screen.y + 1};{screen.x + 1}R")

    def prompt_with_toolbar(s: Screen) -> bool:
        rows = s.text().splitlines()
        return bool(rows) and rows[-1].endswith("/help") and "you> " in "".join(s.grid[s.y])

    try:
        until(prompt_with_toolbar)
        assert screen.text().splitlines()[-1].strip() == "session new  |  model tiny  |  greedy, max 40  |  /help"
        child.send(question + "\r")
        until(lambda s: f"tiny> {answer}" in s.text() and "session #1" in s.text() and prompt_with_toolbar(s))
        before_quit = screen.text()
        child.send("/quit\r")
        child.expect(pexpect.EOF, timeout=30)
        screen.feed(child.before or "")
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, screen.text()
    assert before_quit.startswith(f"chatbot {__version__} - model tiny (greedy, max 40), loaded in ")
    assert f"you> {question}\ntiny> {answer}\nyou>" in before_quit
    assert before_quit.splitlines()[-1].strip() == "session #1  |  model tiny  |  greedy, max 40  |  /help"
    assert "loading the model" not in before_quit  # the spinner erased itself
    assert f"tiny> {answer}\nyou> /quit" in screen.text()  # and the toolbar is gone on exit
    colours = [p for params in screen.sgr for p in params.split(";")
               if p.isdigit() and (30 <= int(p) <= 49 or 90 <= int(p) <= 107)]
    assert colours == []  # --no-color: bold and reverse video at most
    saved = (tmp_path / "chatbot_history").read_text()  # the input history, next to the database
    assert f"+{question}\n" in saved and "+/quit\n" in saved


def test_a_session_deleted_under_the_repl_says_so_and_keeps_the_text(bot, tiny_pairs):
    """Another command deleted the session: the next message is not stored anywhere else, the
    error says what happened and how to go on, and the typed text comes back at the prompt."""
    (q1, a1), (q2, _) = tiny_pairs[0], tiny_pairs[1]
    repl = new_repl(bot, "doomed")
    assert repl.handle(q1) and texts(bot, repl.session_id) == [q1, a1]
    bot.store.delete_session(repl.session_id)
    other = bot.new_session("other").id
    assert repl.handle(q2)
    assert "this session was deleted; /new starts another" in repl.output.getvalue()
    assert repl.retry_text == q2 and repl.unanswered == 1
    assert other != repl.session_id and texts(bot, other) == []


def test_a_message_refused_as_too_long_comes_back_at_the_prompt_to_edit(bot):
    """Refused before anything was stored: the text was gone (Up recalled it, but nothing said so)."""
    bot.dialogue = bot.dialogue.with_overrides({"max_message_chars": 10})
    repl = new_repl(bot, "short")
    assert repl.handle("a message far over ten characters")
    assert "over the limit of 10 (dialogue.max_message_chars); edit it and press Enter" in repl.output.getvalue()
    assert repl.retry_text == "a message far over ten characters" and texts(bot, repl.session_id) == []


def test_a_byte_order_mark_on_piped_input_is_not_part_of_the_first_message():
    from chatbot.cli.repl import input_lines

    assert list(input_lines(io.BytesIO(b"\xef\xbb\xbfWie hei\xc3\x9ft du?\n\xef\xbb\xbfx\n"))) == ["Wie heißt du?", "\ufeffx"]


def test_keys_typed_during_a_reply_are_not_echoed_and_the_terminal_is_restored():
    """Keys typed while a reply was decoded printed before it, then again at the next prompt."""
    import termios

    from chatbot.cli.console import keys_not_echoed

    leader, follower = os.openpty()
    try:
        with open(follower, closefd=False) as terminal:
            before = termios.tcgetattr(follower)
            assert before[3] & termios.ECHO
            with keys_not_echoed(terminal):
                assert not termios.tcgetattr(follower)[3] & termios.ECHO
                assert termios.tcgetattr(follower)[3] & termios.ISIG  # Ctrl-C still interrupts
            assert termios.tcgetattr(follower) == before
        with keys_not_echoed(io.StringIO()):  # no terminal: nothing to do
            pass
    finally:
        os.close(leader)
        os.close(follower)
