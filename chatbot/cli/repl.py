"""``chatbot chat``: an interactive conversation in the terminal.

``ChatRepl`` holds the logic: ``handle(line)`` takes one line of input (a message or a slash
command), writes what it has to say to its output stream and returns False when the user
asked to leave. It needs no terminal, so it is tested directly. Two loops drive it:

* ``run_interactive``: a prompt-toolkit ``PromptSession`` with persistent history (a file next
  to the database), Ctrl-R search, suggestions from history, tab completion of slash commands
  and a bottom toolbar (session, model, decoding). Ctrl-C clears the line; Ctrl-D or ``/quit``
  leaves.
* ``run_plain``: for standard input that is not a terminal. Exactly one output line per input
  line (a multi-line reply or command output is joined onto one line), flushed per line,
  without banner, prompt or toolbar.

This module is an interface, so it prints; it never exits the process.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application.current import get_app
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.styles import Style

from chatbot.cli.console import column, keys_not_echoed, open_history, write_export
from chatbot.config import DecodingConfig, Spec, specs
from chatbot.data.text import escape_unshowable
from chatbot.version import __version__
from chatbot.errors import ChatbotError, InputError, MessageNotStored, ReplyNotStored, SessionNotFound, StoreError

RECENT_MESSAGES = 6  # shown when a session is resumed or switched to (3 turns)
DEFAULT_HISTORY = 10  # /history without N

STYLE = Style.from_dict({
    "prompt": "ansigreen bold",
    "bot": "ansicyan bold",
    "user": "ansigreen",
    "meta": "ansibrightblack",
    "error": "ansired",
    "info": "",
    "bottom-toolbar": "reverse",
})

Fragments = list  # of (style, text) pairs
# ``seen_reply`` of a reply shown but not stored (the database refused it): not a message id.
UNSTORED = -1


# --- settings: what /set can change ---------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A decoding setting ``/set`` may change: ``parse`` turns the typed text into a value or
    raises ``ValueError`` with a message for the user."""

    parse: Callable[[str], Any]
    help: str


def _positive_int(raw: str, limit: int) -> int:
    """/history's N."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {raw!r}") from None
    if not 1 <= value <= limit:
        raise ValueError(f"must be between 1 and {limit}, got {value}")
    return value


def _later_set_wins(settings: dict[str, Any], key: str, value: Any) -> tuple[dict[str, Any], str]:
    """The /set overrides after ``key = value``, and a note on what else it changed. The latest
    /set wins over an earlier one it contradicts, whatever their order: ``strategy sample``
    after ``beam 5`` drops the beam width (sampling draws one hypothesis), and ``beam 5`` after
    ``strategy sample`` asks for beam search again."""
    settings = {**settings, key: value}
    if key == "strategy" and value in ("greedy", "sample"):
        dropped = [k for k in ("beam", "n_best") if settings.pop(k, 1) != 1]
        return settings, f" (and {' and '.join(dropped)} back to 1)" if dropped else ""
    if key in ("beam", "n_best") and value > 1 and settings.get("strategy") in ("greedy", "sample"):
        settings["strategy"] = "beam"
        return settings, " (and strategy = beam)"
    return settings, ""


def _parser(spec: Spec) -> Callable[[str], Any]:
    """Typed text to a value of ``spec``'s type. Bounds are not checked here: ``ChatBot``
    validates the whole config against the same metadata (once, in ``resolve_decoding``)."""

    def parse(raw: str) -> Any:
        if spec.optional and raw.lower() in ("none", "random", "off"):
            return None
        if spec.type is bool:
            value = {"on": True, "true": True, "yes": True, "1": True,
                     "off": False, "false": False, "no": False, "0": False}.get(raw.lower())
            if value is None:
                raise ValueError(f"expected on or off, got {raw!r}")
            return value
        if spec.choices:  # as command names: /set strategy Greedy is greedy
            raw = raw.lower()
        try:
            value = spec.type(raw)
        except ValueError:
            expected = {int: "a positive integer" if (spec.min or 0) >= 1 else "an integer",
                        float: "a number"}[spec.type]
            raise ValueError(f"expected {expected}, got {raw!r}") from None
        return value
    return parse


# One per field of ``DecodingConfig``, generated from its metadata. A value that parses is then
# validated with the whole config (its bounds, and rules like n_best <= beam), so it can still be refused.
SETTINGS: dict[str, Setting] = {spec.name: Setting(_parser(spec), spec.help) for spec in specs(DecodingConfig)}


# --- slash commands ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    usage: str
    help: str


COMMANDS: dict[str, Command] = {
    "/help": Command("", "list these commands"),
    "/new": Command("[NAME]", "start a new session, optionally named"),
    "/sessions": Command("", "list the stored sessions (* marks this one)"),
    "/switch": Command("ID_OR_NAME", "continue another stored session"),
    "/history": Command("[N]", f"show the last N messages of this session (default {DEFAULT_HISTORY})"),
    "/reset": Command("", "start over in a new session (alice -> alice-2)"),
    "/model": Command("", "show the model and its configuration"),
    "/set": Command("[KEY VALUE]", "change a decoding setting for the next replies (/set alone lists them)"),
    "/score": Command("", "toggle showing score and latency after each reply"),
    "/export": Command("PATH", "write this session: .yml/.yaml as a corpus, else JSONL"),
    "/good": Command("", "rate the last reply good (kept for retraining)"),
    "/bad": Command("", "rate the last reply bad (left out of retraining)"),
    "/correct": Command("BETTER ANSWER", "record what the last reply should have been"),
    "/quit": Command("", "leave (also Ctrl-D)"),
}
ALIASES = {"/exit": "/quit", "/?": "/help"}


class SlashCompleter(Completer):
    """Completes command names after "/", setting keys after "/set " and session names after
    "/switch " (looked up only when Tab is pressed)."""

    def __init__(self, repl: "ChatRepl"):
        self.repl = repl

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        if " " not in text:
            for name, command in COMMANDS.items():
                if name.startswith(text):
                    yield Completion(name, start_position=-len(text), display_meta=command.help)
            return
        command, _, arg = text.partition(" ")
        if command == "/set" and " " not in arg:
            options = list(SETTINGS)
        elif command == "/switch":
            try:
                options = [s.name for s in self.repl.bot.sessions() if s.name]
            except ChatbotError:
                return
        else:
            return
        for option in options:
            if option.startswith(arg):
                yield Completion(option, start_position=-len(arg))


# --- the REPL ---------------------------------------------------------------------------------
class ChatRepl:
    """One conversation with a ``ChatBot``.

    ``session`` is a ``SessionInfo``, an id or a name to continue (a missing name is created),
    or None: a new session is then created with the first message, so opening and leaving
    stores nothing. ``plain`` selects the one-line-per-input output of ``run_plain``.
    """

    def __init__(self, bot, session=None, output: TextIO | None = None, *, color: bool = False,
                 plain: bool = False, show_score: bool = False):
        self.bot = bot
        self.output = output if output is not None else sys.stdout
        self.color = color
        self.plain = plain
        self.show_score = show_score
        self.settings: dict[str, Any] = {}  # decoding overrides from /set
        self.session_id: int | None = None
        self.session_name: str | None = None
        self._pending: list[Fragments] = []
        # A message the database refused (locked, full): the next prompt starts with it, so
        # Enter sends it again.
        self.retry_text = ""
        self.offered = ""  # the text the current prompt started with (retry_text, offered)
        self.on_terminal = False
        self.seen_reply: int | None = None  # the reply last shown (or UNSTORED): what /good, /bad, /correct judge
        self.unanswered = 0  # lines that got an error line instead of a reply (piped: exit 1)
        if session is not None:
            self._use(session if hasattr(session, "id") else bot.session(session))

    # --- state -----------------------------------------------------------------------------
    def _use(self, info) -> None:
        self.session_id, self.session_name = info.id, info.name
        self.seen_reply = None

    @property
    def session_label(self) -> str:
        if self.session_id is None:
            return "new"
        if not self.session_name:
            return f"#{self.session_id}"
        return f"{escape_unshowable(self.session_name)} (#{self.session_id})"

    def decoding(self):
        """The decoding settings the next reply uses: the model's, with /set overrides."""
        return self.bot.resolve_decoding(self.settings)

    def decoding_label(self, d: DecodingConfig | None = None) -> str:
        """The decoding settings in force (``d``: others), as the toolbar shows them."""
        d = d or self.decoding()
        strategy = d.effective_strategy
        if strategy == "beam":
            label = f"beam {d.beam}" + (f", n-best {d.n_best}" if d.n_best > 1 else "")
        elif strategy == "sample":
            label = f"sample (t {d.temperature:g}, top-k {d.top_k}, top-p {d.top_p:g})"
        else:
            label = strategy
        return f"{label}, max {d.max_length}"

    def toolbar(self) -> FormattedText:
        parts = [f"session {self.session_label}", f"model {self.bot.name}", self.decoding_label()]
        if self.show_score:
            parts.append("scores on")
        return FormattedText([("class:bottom-toolbar", " " + "  |  ".join(parts) + "  |  /help ")])

    # --- output ----------------------------------------------------------------------------
    def _say(self, *fragments: tuple[str, str]) -> None:
        self._pending.append(list(fragments))

    def _info(self, text: str) -> None:
        self._say(("class:info", text))

    def _error(self, text: str) -> None:
        self._say(("class:error", text))

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        if self.plain:
            # One output line per input line: newlines inside, and between lines, become spaces / " | ".
            text = " | ".join(" ".join("".join(t for _, t in line).splitlines()).strip() for line in lines)
            self.output.write(text + "\n")
        elif self.color:
            for line in lines:
                print_formatted_text(FormattedText(line), style=STYLE, file=self.output)
        else:
            for line in lines:
                self.output.write("".join(t for _, t in line) + "\n")
        self.output.flush()

    def _message_line(self, role: str, text: str, extra: str = "", recalled: bool = False) -> tuple:
        """A reply as it is printed ("tiny> ..."), or a stored message recalled ("  tiny: ...")."""
        label = "you" if role == "user" else self.bot.name
        who = (f"class:{'user' if role == 'user' else 'bot'}", f"  {label}: " if recalled else f"{label}> ")
        if recalled and not self.plain:  # a message of several lines reads as one, under its label
            text = text.replace("\n", "\n" + " " * len(who[1]))
        out = [who, ("", text)]
        if extra:
            out.append(("class:meta", extra))
        return tuple(out)

    def _show_recent(self, last: int = RECENT_MESSAGES) -> None:
        if self.session_id is None:
            return
        messages = self.bot.history(self.session_id, last=last)
        for m in messages:
            self._say(*self._message_line(m.role, m.text, recalled=True))

    # --- the one entry point -----------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Act on one line of input and write the result; False when the user asked to leave.

        A line starting with "/" is a command ("//" sends a message that starts with "/").
        Errors (bad command, bad value, a failing database) give a one-line message.
        """
        keep_going = True
        text = line.strip()
        command = text.startswith("/") and not text.startswith("//")
        message = bool(text) and not command
        try:
            if command:
                keep_going = self._command(text)
            elif text:
                self._reply(text[1:] if text.startswith("//") else line)
            elif not self.plain:
                return True  # an empty line at the prompt: nothing to do, nothing to print
        except MessageNotStored as exc:
            self.unanswered += message
            self.retry_text = "" if self.plain else line
            again = "" if self.plain else ": press Enter to send it again"
            self._pending = [[("class:error", f"error: {exc}{again}")]]
        except ReplyNotStored as exc:  # the user's message is stored: show what the bot said
            self._show_reply(exc.reply)
            self._error(f"error: {exc}")
        except ChatbotError as exc:
            self.unanswered += message
            if message and self.session_id is not None and isinstance(exc, SessionNotFound):
                # Deleted under us (sessions delete, another REPL): nothing was stored, so the
                # text comes back at the prompt, and the way on is said.
                self.retry_text = "" if self.plain else line
                self._pending = [[("class:error", f"error: {exc}: this session was deleted; /new starts "
                                                  "another")]]
            elif message and isinstance(exc, InputError) and not self.plain:
                # Refused before anything was stored (too long, say): back at the prompt to edit.
                self.retry_text = line
                self._pending = [[("class:error", f"error: {exc}; edit it and press Enter to send it")]]
            else:
                self._pending = [[("class:error", f"error: {exc}")]]
        if keep_going or self._pending:
            self._flush()
        return keep_going

    def banner(self, load_seconds: float | None = None) -> None:
        loaded = f", loaded in {load_seconds:.1f} s" if load_seconds is not None else ""
        self._say(("class:bot", f"chatbot {__version__}"),
                  ("class:meta", f" - model {self.bot.name} ({self.decoding_label()}){loaded}"))
        self._say(("class:meta", "Type a message. /help lists the commands; Ctrl-D or /quit leaves."))
        if self.session_id is not None:
            count = len(self.bot.history(self.session_id, last=RECENT_MESSAGES + 1))
            more = "" if count <= RECENT_MESSAGES else f", the last {RECENT_MESSAGES} messages"
            self._say(("class:meta", f"Resuming session {self.session_label}{more}:" if count else
                       f"Session {self.session_label}, no messages yet."))
            self._show_recent()
        self._flush()

    # --- replies ---------------------------------------------------------------------------
    def _reply(self, text: str) -> None:
        if self.session_id is None:
            # The first message creates the session, here rather than inside the reply: a
            # Ctrl-C during its decode leaves the message stored, and the next one must go to
            # the same session (it started another).
            self.bot.check_message(text)
            try:
                self._use(self.bot.new_session())
            except StoreError as exc:  # as the message itself refused: offered again
                raise MessageNotStored(f"{exc}; your message was not stored", text) from exc
        self._show_reply(self._decode(text))

    def _show_reply(self, result) -> None:
        if self.session_id is None:
            self.session_id = result.session_id
        self.seen_reply = UNSTORED if result.message_id is None else result.message_id
        extra = ""
        if self.show_score:
            extra = f"  [score {result.score:.3f}, {result.latency_ms:.0f} ms{', fallback' if result.fallback else ''}]"
        if self.plain:  # the reply alone, like `chatbot ask`, so scripts can read it
            self._say(("", result.text), ("class:meta", extra))
        else:
            self._say(*self._message_line("bot", result.text, extra))

    def _decode(self, text: str):
        """``bot.reply`` with the /set overrides, passed per call (the bot may be shared)."""
        return self.bot.reply(text, session=self.session_id, decoding=self.settings)

    # --- commands --------------------------------------------------------------------------
    def _command(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        if name not in COMMANDS:
            self._error(f"unknown command {name!r}; /help lists the commands")
            return True
        if name == "/quit":
            if self.plain:  # one line out per line in, as for every other command
                self._info("bye")
                self._flush()
            return False
        getattr(self, "_cmd_" + name[1:])(arg.strip())
        return True

    def _cmd_help(self, arg: str) -> None:
        width = max(len(f"{n} {c.usage}".strip()) for n, c in COMMANDS.items())
        for name, command in COMMANDS.items():
            self._say(("class:bot", f"{name} {command.usage}".strip().ljust(width)), ("class:meta", f"  {command.help}"))
        self._say(("class:meta", "Ctrl-R searches the input history; Tab completes commands."))

    def _cmd_new(self, arg: str) -> None:
        if arg:
            self._use(self.bot.new_session(arg))
            self._info(f"new session {self.session_label}")
        else:
            self.session_id = self.session_name = None
            self._info("new session (stored with its first message)")

    def _cmd_reset(self, arg: str) -> None:
        if arg:
            self._error("usage: /reset (no arguments; /new NAME names a new session)")
            return
        if not self.session_name:
            self._cmd_new("")
            return
        if not self.bot.history(self.session_id, last=1):  # /reset twice made alice-2 and alice-3
            self._info(f"session {self.session_label} has no messages yet: it is a fresh start already")
            return
        base = re.sub(r"-\d+$", "", self.session_name) or self.session_name
        for n in range(2, 10_000):
            candidate = f"{base}-{n}"
            if self.bot.find_session(candidate) is not None:
                continue
            try:
                self._use(self.bot.new_session(candidate))
            except StoreError:
                if self.bot.find_session(candidate) is None:  # not a lost race for the name
                    raise
                continue
            self._info(f"new session {self.session_label}")
            return
        raise StoreError(f"no free name for a new session after {base!r}")

    def _cmd_sessions(self, arg: str) -> None:
        rows = self.bot.sessions()
        if not rows:
            self._info("no stored sessions yet")
            return
        for s in rows:
            mark = "*" if s.id == self.session_id else " "
            when = s.updated_at.astimezone().strftime("%Y-%m-%d %H:%M")
            self._say(("class:bot" if mark == "*" else "", f"{mark} #{s.id:<4} {column(s.name or '-', 20)}"),
                      ("class:meta", f" {s.message_count:>4} message{'' if s.message_count == 1 else 's'}  {when}"))

    def _cmd_switch(self, arg: str) -> None:
        if not arg:
            self._error("usage: /switch ID_OR_NAME (/sessions lists them)")
            return
        if arg.startswith("#") and arg[1:].isdigit():  # as /sessions and the toolbar write ids
            arg = arg[1:]
        info = self.bot.session(arg, create=False)
        self._use(info)
        self._info(f"switched to session {self.session_label}, {info.message_count} "
                   f"message{'' if info.message_count == 1 else 's'}")
        if not self.plain:
            self._show_recent()

    def _cmd_history(self, arg: str) -> None:
        try:
            last = _positive_int(arg, limit=10**9) if arg else DEFAULT_HISTORY
        except ValueError as exc:
            self._error(f"usage: /history [N]: {exc}")
            return
        messages = self.bot.history(self.session_id, last=last) if self.session_id is not None else []
        if not messages:
            self._info("no messages in this session yet")
        for m in messages:
            self._say(*self._message_line(m.role, m.text, recalled=True))

    def _cmd_model(self, arg: str) -> None:
        bundle = self.bot.bundle
        config, manifest = bundle.config, bundle.manifest
        m = config.model
        params = manifest.get("parameters")
        self._info(f"model {self.bot.name}" + (f" ({bundle.path})" if bundle.path else ""))
        self._info(f"  {m.cell}, {m.layers} layer{'s' if m.layers != 1 else ''} of {m.units} units"
                   f"{', bidirectional encoder' if m.bidirectional else ''}, attention {m.attention}, "
                   f"embeddings {m.embedding_dim}")
        self._info(f"  tokenizer {config.tokenizer.level}, vocab {manifest.get('vocab_size', bundle.tokenizer.vocab_size)}"
                   + (f", {params:,} parameters" if isinstance(params, int) else ""))
        own = self.bot.decoding
        changed = f" (model default: {self.decoding_label(own)})" if self.settings else ""
        self._info(f"  decoding {self.decoding_label()}{changed}, context turns {config.data.context_turns}")
        if manifest.get("created"):
            self._info(f"  trained {manifest['created']}, chatbot {manifest.get('chatbot_version', '?')}")

    def _cmd_set(self, arg: str) -> None:
        if not arg:
            current = self.decoding()
            for key, setting in SETTINGS.items():
                self._say(("class:bot", f"{key} = {getattr(current, key)}"), ("class:meta", f"  {setting.help}"))
            return
        parts = arg.split(None, 1)
        key = parts[0].lower()  # as command names: /SET BEAM 5 is /set beam 5
        if key not in SETTINGS:
            self._error(f"unknown setting {key!r} (settable: {', '.join(SETTINGS)})")
            return
        if len(parts) < 2:
            self._error(f"usage: /set {key} VALUE")
            return
        try:
            value = SETTINGS[key].parse(parts[1].strip())
        except ValueError as exc:
            self._error(f"invalid value for {key}: {exc}")
            return
        settings, note = _later_set_wins(self.settings, key, value)
        try:  # the whole config must stay valid, e.g. n_best <= beam
            resolved = self.bot.resolve_decoding(settings)
        except ChatbotError as exc:
            self._error(str(exc))
            return
        self.settings = settings
        if resolved.effective_strategy == "beam":
            self.bot.warm_up(("beam",))  # trace beam search now, not in the next reply
        self._info(f"{key} = {value} for the next replies{note}")

    def _cmd_score(self, arg: str) -> None:
        self.show_score = not self.show_score
        self._info(f"scores {'on' if self.show_score else 'off'}")

    def _cmd_export(self, arg: str) -> None:
        if not arg:
            self._error("usage: /export PATH (.yml/.yaml: corpus YAML, else JSON lines)")
            return
        if self.session_id is None:
            self._error("nothing to export: this session has no messages yet")
            return
        path = Path(arg).expanduser()
        fmt = "yaml" if path.suffix.lower() in (".yml", ".yaml") else "jsonl"
        text = self.bot.export_session(self.session_id, format=fmt)
        try:
            write_export(path, text, self.bot.holds_database)
        except InputError as exc:
            self._error(str(exc))
            return
        except OSError as exc:
            self._error(f"cannot write {path}: {exc.strerror or exc}")
            return
        self._info(f"wrote session {self.session_label} to {path} ({fmt})")

    def _last_reply_id(self) -> int | None:
        """The reply last shown here; after resuming or switching, the newest of the session.
        Not simply the newest: another REPL on the same session may have been answered since."""
        if self.session_id is None:
            return None
        if self.seen_reply is not None:
            return self.seen_reply
        recent = self.bot.history(self.session_id, last=2)
        return next((m.id for m in reversed(recent) if m.role == "bot"), None)

    def _feedback(self, usage: str, **feedback) -> None:
        message_id = self._last_reply_id()
        if message_id is None:
            self._error(f"{usage}: no reply in this session yet")
            return
        if message_id == UNSTORED:  # rating the newest stored reply instead would judge another
            self._error(f"{usage}: the last reply was not stored, so it cannot be rated or corrected")
            return
        if "correction" in feedback:
            self.bot.correct(message_id, feedback["correction"])
            self._info("correction recorded for the last reply (`chatbot sessions export --feedback` "
                       "turns feedback into a corpus)")
        else:
            self.bot.rate(message_id, feedback["rating"])
            self._info(f"last reply rated {feedback['rating']}")

    def _cmd_good(self, arg: str) -> None:
        self._feedback("/good", rating="good")

    def _cmd_bad(self, arg: str) -> None:
        self._feedback("/bad", rating="bad")

    def _cmd_correct(self, arg: str) -> None:
        if not arg:
            self._error("usage: /correct BETTER ANSWER")
            return
        self._feedback("/correct", correction=arg)

    # --- loops -----------------------------------------------------------------------------
    def prompt_session(self, history: History | None = None, *, input=None, output=None) -> PromptSession:
        return PromptSession(
            message=FormattedText([("class:prompt", "you> ")]),
            history=history if history is not None else InMemoryHistory(),
            auto_suggest=AutoSuggestFromHistory(),
            enable_history_search=True,  # Up/Down search by prefix; Ctrl-R searches anywhere
            key_bindings=self._key_bindings(),
            completer=SlashCompleter(self),
            complete_while_typing=False,
            bottom_toolbar=self.toolbar,
            style=STYLE,
            color_depth=None if self.color else ColorDepth.DEPTH_1_BIT,
            input=input,
            output=output,
        )

    def _key_bindings(self) -> KeyBindings:
        """Ctrl-D leaves at a prompt that holds only the text offered again (Ctrl-D on a line
        with text deletes a character, so it could not leave there)."""
        bindings = KeyBindings()

        @bindings.add("c-d", filter=Condition(lambda: bool(self.offered)
                                              and get_app().current_buffer.text == self.offered))
        def leave(event):
            event.app.exit(exception=EOFError())

        return bindings

    def run_interactive(self, history: History | str | Path | None = None, *, input=None, output=None,
                        load_seconds: float | None = None, banner: bool = True) -> None:
        """Prompt until Ctrl-D or /quit. ``history``: a ``History`` or a file path (None: kept in
        memory). ``input``/``output`` default to the terminal."""
        if isinstance(history, (str, Path)):
            history = open_history(Path(history))
        prompt = self.prompt_session(history, input=input, output=output)
        self.on_terminal = input is None  # the real terminal, whose echo a reply may turn off
        if banner:
            self.banner(load_seconds)
        # While the first message is typed, compile the greedy loop for the input widths most
        # replies need (each would cost its first reply a quarter second or more). Not a
        # daemon: TensorFlow must not be torn down under a running compilation; leaving stops
        # it after the width being compiled (leaving at once waited for all of them: 7 s).
        leaving = threading.Event()
        threading.Thread(target=self._warm_widths, args=(leaving,), name="chatbot-warm-widths").start()
        try:
            self._prompt_loop(prompt)
        finally:
            leaving.set()

    def _prompt_loop(self, prompt: PromptSession) -> None:
        while True:
            offered, self.retry_text = self.retry_text, ""
            self.offered = offered
            try:
                line = prompt.prompt(default=offered)
            except KeyboardInterrupt:
                continue  # Ctrl-C: the line is dropped, a fresh prompt follows
            except EOFError:
                return
            if offered and line.startswith(offered) and line[len(offered):].lstrip().startswith("/"):
                line = line[len(offered):].lstrip()  # a command typed after the offered text: run it
            try:
                with keys_not_echoed() if self.on_terminal else contextlib.nullcontext():
                    keep_going = self.handle(line)
                if not keep_going:
                    return
            except KeyboardInterrupt:  # Ctrl-C while a reply is decoded
                self._pending = []
                self._error(f"interrupted{self._kept_unanswered(line)}")
                self._flush()

    def _kept_unanswered(self, line: str) -> str:
        """After a Ctrl-C, whether the message was stored before its reply was made."""
        try:
            last = self.bot.history(self.session_id, last=1) if self.session_id is not None else []
            sent = self.bot.check_message(line.strip().removeprefix("/"))
        except ChatbotError:
            return ""
        return ": your message is kept, without a reply" if last and (last[0].role, last[0].text) == ("user", sent) else ""

    def _warm_widths(self, until: threading.Event) -> None:
        try:
            self.bot.warm_widths(until=until)
        except Exception as exc:  # the first reply that needs the loop compiles it and reports
            logging.getLogger("chatbot").debug("warming the decode loop up failed: %s", exc)

    def run_plain(self, lines: Iterable["str | UnreadableLine"]) -> int:
        """One output line per input line, flushed after each, until the input ends or /quit.
        A line that is not text (``input_lines``) gets an error line and the loop goes on.
        Returns how many lines got an error line instead of a reply: not text, or a message
        that could not be answered or stored (the command then exits 1, as ``ask`` does)."""
        for line in lines:
            if isinstance(line, UnreadableLine):
                self.unanswered += 1
                self._error(f"error: {line}")
                self._flush()
            elif not self.handle(line.rstrip("\r\n")):
                break
        return self.unanswered


# --- reading standard input -----------------------------------------------------------------
@dataclass(frozen=True)
class UnreadableLine:
    """An input line that is not text, and why, e.g. "line 2: invalid UTF-8 at byte 5 (0xff)"."""

    number: int
    problem: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.problem}"


def input_lines(stream) -> Iterator["str | UnreadableLine"]:
    """The lines of ``stream`` (standard input), each decoded on its own as strict UTF-8, with
    its line ending removed. Decoding per line is what lets ``chat`` and ``ask`` answer the lines
    after a bad one: a line that is not UTF-8 comes as an ``UnreadableLine`` naming the byte,
    where a text stream would stop at it (or pass it on as lone surrogates, which fail later
    with a less useful message). A text-only stream (no ``buffer``: tests) is read as text."""
    source = getattr(stream, "buffer", stream)
    for number, raw in enumerate(source, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a file saved with a BOM
            except UnicodeDecodeError as exc:
                yield UnreadableLine(number, f"invalid UTF-8 at byte {exc.start + 1} (0x{raw[exc.start]:02x})")
                continue
        yield raw.rstrip("\r\n")
