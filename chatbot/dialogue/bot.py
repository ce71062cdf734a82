"""``ChatBot``: the dialogue manager, and the object applications embed.

It owns a model bundle (for replies) and, once a session is used, a ``SessionStore`` (for
history). A reply in a session follows one order so that a failure never loses input:
store the user's message (committed) -> build the context from stored history -> decode ->
store the reply -> return it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from chatbot.config import DECODING_STRATEGIES, DecodingConfig, DialogueConfig
from chatbot.data.text import clean_text, model_tail, sanitize_message
from chatbot.ids import MAX_ID
from chatbot.model.bundle import Bundle, resolve_model_path
from chatbot.errors import (
    DatabaseCorrupt, DecodingError, InputError, MessageNotStored, ReplyNotStored, SessionNotFound, StoreArgumentError, StoreError,
)
from chatbot.inference.generator import COMMON_WIDTHS, Generation, Generator, check_sample_number
from chatbot.dialogue.loaded import new_generator, shared_model

if TYPE_CHECKING:
    from chatbot.dialogue.store import SessionStore

log = logging.getLogger(__name__)


def retrieved_json(retrieved) -> list[dict]:
    """What retrieval showed the model, as stored with a reply and printed by ``ask --json``."""
    return [{"question": q, "answer": a, "similarity": round(s, 4)} for q, a, s in retrieved]


@dataclass(frozen=True)
class Reply:
    text: str
    score: float
    session_id: int | None
    message_id: int | None  # the stored bot message
    latency_ms: float
    fallback: bool = False
    user_message_id: int | None = None
    alternatives: tuple[tuple[str, float], ...] = ()  # the n-best list (text, score), best first
    confidence: float = 0.0  # see Generation.confidence; under dialogue.min_confidence: fallback
    retrieved: tuple[tuple[str, str, float], ...] = ()  # what the model was shown (question, answer, similarity)
    read_as: str = ""  # the question as the model read it (spelling corrected, see data.spelling)
    tokens: int = 0  # tokens the decoder generated for the reply ([END] included)
    ended: bool = True  # the decoder reached [END]; False: the reply was cut at the length limit
    input_tokens: int = 0  # tokens the model read: the question, context turns and retrieved pairs


@dataclass(frozen=True)
class ReplyRequest:
    """One message to answer, for ``ChatBot.reply_many``.

    ``store`` True: in ``session`` (an id or a name; None starts a new session; with
    ``create``, a missing name is created once the message and settings pass their checks),
    both turns stored, the context read from the stored history. ``store`` False: stateless,
    the context is ``context`` (earlier turns, oldest first) and nothing is stored. ``owner``
    restricts the session to one owner's (the server's API keys); None, no restriction."""

    text: str
    session: int | str | None = None
    decoding: DecodingConfig | dict[str, Any] | None = None
    max_length: int | None = None
    context: Sequence[str] | None = None
    store: bool = True
    owner: str | None = None
    create: bool = False
    sample: int | None = None  # with seeded sampling, which sample of this request (0, 1, ...): see Generator.row_keys


@dataclass
class PreparedReply:
    """A request checked (and its message stored) and waiting for its decode."""

    message: str
    config: DecodingConfig
    context: list[str]
    session_id: int | None = None
    previous: str | None = None  # the bot's previous reply, when avoid_repeat needs it
    user: Any = None  # the stored user message, in a session
    sample: int | None = None  # ReplyRequest.sample

    def decoding_failed(self, exc: Exception) -> Exception:
        where = (f"; your message was stored as message {self.user.id} of session {self.session_id}"
                 if self.user is not None else "")
        error = DecodingError(f"could not generate a reply ({exc}){where}")
        error.__cause__ = exc
        return error


# --- argument checks: a wrong type is a one-line InputError, never a raw TypeError -----------
def _type_name(value) -> str:
    return type(value).__name__


def _session_ref(value: int | str) -> int | str:
    """A session id (an int; not a bool, ``True`` is not session 1) or a name (a str)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"a session is an id (int) or a name (str), not {_type_name(value)}")
    return _stored_id(value, "session")


def _message_ref(value: int) -> int:
    """A stored message's id (``Reply.message_id``): an int that fits in 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"a message id is an int, not {_type_name(value)}")
    return _stored_id(value, "message")


def _stored_id(value: int, what: str) -> int:
    if not -MAX_ID <= value <= MAX_ID:
        raise InputError(f"{what} id out of range: a {value.bit_length()}-bit number (ids fit in 64 bits)")
    return value


def _last_count(last: int | None) -> int | None:
    """How many of the newest messages: None (all) or an int >= 0; beyond any id, all."""
    if last is None:
        return None
    if isinstance(last, bool) or not isinstance(last, int):
        raise InputError(f"last must be an int, not {_type_name(last)}")
    if last < 0:
        raise InputError(f"last must be >= 0, not {last}")
    return None if last > MAX_ID else last


def _text_list(values, what: str) -> list:
    """A list from a sequence of texts. A str (or bytes) is refused: iterating over it would
    make one input per character."""
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, Iterable):
        raise InputError(f"{what} must be a list of strings, not {_type_name(values)}")
    return list(values)


def _contexts(contexts, count: int) -> list[list[str]]:
    """One list of previous turns (strings) per question."""
    if contexts is None:
        return [[] for _ in range(count)]
    contexts = _text_list(contexts, "contexts")
    if len(contexts) != count:
        raise InputError(f"got {len(contexts)} contexts for {count} questions (one list of turns each)")
    turns = [_text_list(context, "each context") for context in contexts]
    for context in turns:
        for turn in context:
            if not isinstance(turn, str):
                raise InputError(f"a context turn must be a string, not {_type_name(turn)}")
    return turns


class ChatBot:
    def __init__(self, bundle: Bundle, db: "str | SessionStore | None" = None, warm_up: bool = True,
                 dialogue: DialogueConfig | dict[str, Any] | None = None, generator: Generator | None = None):
        """``dialogue`` overrides the bundle's ``dialogue`` settings (a whole ``DialogueConfig``
        or a dict of some of its fields, validated like a config file); the settings in force
        are stored with every reply. ``generator``: one of this bundle's to share (``load``
        does), else the bot makes its own."""
        self.bundle = bundle
        self.generator = generator if generator is not None else new_generator(bundle)
        self.dialogue = bundle.config.dialogue.with_overrides(dialogue)
        self._db = db
        self._store = None
        self._store_lock = threading.Lock()
        self._closed = False  # close() was called: the database is not opened again
        # Tracing the compiled decode loop takes seconds: do it in the background, so loading
        # returns once the bundle is checked and the first reply waits only for what is left.
        self._warming: threading.Thread | None = None
        self._warm_error: BaseException | None = None
        if warm_up:
            # Not a daemon: the interpreter must not tear TensorFlow down under a running trace
            # (that aborts the process), so an early exit waits for the trace to finish.
            self._warming = threading.Thread(target=self._warm_up_in_background, daemon=False,
                                             name="chatbot-warm-up")
            self._warming.start()

    def _warm_up_in_background(self) -> None:
        try:
            self.generator.warm_up()
        except BaseException as exc:  # surfaced by wait_ready() in the caller's thread
            self._warm_error = exc

    def wait_ready(self) -> None:
        """Block until the compiled decoder is traced (replies call this themselves)."""
        warming = self._warming
        if warming is not None:
            warming.join()
            self._warming = None
        if self._warm_error is not None:
            raise DecodingError(f"the decoder failed to compile ({self._warm_error})") from self._warm_error

    def warm_up(self, strategies=("greedy",), decoding: DecodingConfig | dict[str, Any] | None = None) -> None:
        """Trace the decode loops of these strategies now ("greedy", "sample", "beam"); a beam
        search's as ``decoding`` sets it (its width and replies kept), else the model's own."""
        strategies = tuple(_text_list(strategies, "strategies"))
        unknown = [s for s in strategies if s not in DECODING_STRATEGIES]
        if unknown:
            raise InputError(f"unknown decoding strategy {unknown[0]!r} (expected {', '.join(DECODING_STRATEGIES)})")
        self.wait_ready()
        self.generator.warm_up(strategies, decoding)

    def warm_widths(self, batches: Sequence[int] = (1,), widths: Sequence[int] | None = None,
                    decoding: DecodingConfig | dict[str, Any] | None = None,
                    until: threading.Event | None = None, most_replies: int = 1) -> None:
        """Compile the loop of the model's own decoding, or of ``decoding``, for the input widths
        most replies need (``Generator.warm_widths``), and for these batch sizes (a server's):
        an interactive front end calls it in the background while the first message is typed,
        so that no early reply waits for a compilation. Warming the model's own decoding for
        batches also traces greedy decoding's loops for every batch size
        (``Generator.trace_greedy_batches``) and beam search's for requests of 1 to
        ``most_replies`` replies (``Generator.trace_beam_searches``), so that their programs
        are found on disk. Stops between two programs once ``until`` is set."""
        self.wait_ready()
        self.generator.warm_widths(widths or COMMON_WIDTHS, batches, decoding, until)
        if decoding is None and max(batches, default=1) > 1:
            self.generator.trace_greedy_batches()
            self.generator.trace_beam_searches(most_replies)

    @property
    def compiled_programs(self) -> int:
        """How many compiled decode-loop programs this bot holds (one per batch size and input
        width met): a count still rising under steady load means replies waiting for XLA."""
        return self.generator.compiled_programs

    @classmethod
    def load(cls, model: str | Path | None = None, db: "str | SessionStore | None" = None, warm_up: bool = True,
             dialogue: DialogueConfig | dict[str, Any] | None = None) -> "ChatBot":
        """Load a bundle (default: ``models/default``); ``model`` may be a path or a name.
        Every bot loaded from the same files in this process shares one model and its compiled
        decoder (``chatbot.dialogue.loaded``: TensorFlow never frees a compiled program), so a
        second bot loads at once; ``ChatBot(Bundle.load(path))`` makes one of its own.

        ``db`` is any SQLAlchemy URL (default: ``$CHATBOT_DB`` or a SQLite file in the user's
        data directory), opened when a session is first used; or a ``SessionStore`` to share
        (with its own ``busy_timeout_ms``, say), which the caller closes.
        """
        loaded = shared_model(resolve_model_path(model))
        return cls(loaded.bundle, db=db, warm_up=warm_up, dialogue=dialogue, generator=loaded.generator)

    @property
    def name(self) -> str:
        return self.bundle.name

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this ChatBot is closed: its session database is no longer open")

    @property
    def store(self):
        """The session store, opened on first use (stateless ``ask`` never touches a database)."""
        with self._store_lock:
            self._check_open()
            if self._store is None:
                from chatbot.dialogue.store import SessionStore

                self._store = self._db if isinstance(self._db, SessionStore) else SessionStore(self._db)
            return self._store

    @property
    def decoding(self) -> DecodingConfig:
        """The model's own decoding settings (what a call without overrides uses)."""
        return self.generator.decoding

    def resolve_decoding(self, decoding: DecodingConfig | dict[str, Any] | None = None,
                         max_length: int | None = None) -> DecodingConfig:
        """The settings a call would use: the model's, overridden by ``decoding`` (a whole
        config or a dict of some fields) and ``max_length``; ``ConfigError`` for a bad value."""
        return self.generator.resolve(decoding, max_length)

    # --- stateless ---------------------------------------------------------------------------
    def ask(self, question: str, context: Sequence[str] = (),
            decoding: DecodingConfig | dict[str, Any] | None = None) -> str:
        """A stateless reply to one question, optionally after some previous turns."""
        return self.generate([question], [_text_list(context, "context")], decoding=decoding)[0].text

    def generate(self, questions: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
                 max_length: int | None = None,
                 decoding: DecodingConfig | dict[str, Any] | None = None) -> list[Generation]:
        """Replies with scores and latency for many questions, decoded in batches.

        ``decoding`` overrides the model's decoding settings for this call: a whole
        ``DecodingConfig`` or a dict of some of its fields, e.g. ``{"beam": 5, "n_best": 3}``
        (validated: a bad value raises ``ConfigError`` naming the key).

        ``questions`` is a list of strings; ``contexts``, when given, one list of previous turns
        per question. Wrong types and messages over ``dialogue.max_message_chars`` raise
        ``InputError`` before any decoding."""
        questions = _text_list(questions, "questions")
        contexts = _contexts(contexts, len(questions))
        config = self.resolve_decoding(decoding, max_length)  # fails before any decoding
        messages = [self.check_message(question) for question in questions]
        return self._generate(messages, contexts, config)

    def check_message(self, text: str) -> str:
        """A message as it may be stored and answered (``sanitize_message``), after the length
        limit: a message over ``dialogue.max_message_chars`` costs nothing to refuse."""
        if not isinstance(text, str):
            raise InputError(f"a message must be text, not {_type_name(text)}")
        limit = self.dialogue.max_message_chars
        if len(text) > limit:
            raise InputError(f"the message is {len(text):,} characters long, over the limit of {limit:,} "
                             "(dialogue.max_message_chars)")
        return sanitize_message(text)

    def _generate(self, messages: list[str], contexts: list[list[str]], config: DecodingConfig,
                  samples: list[int | None] | None = None) -> list[Generation]:
        """Decode checked messages. Only the end of each text that the model can read is
        cleaned and tokenised (``model_tail``): the work is bounded by the model, not by the
        message."""
        self.wait_ready()
        data = self.bundle.config.data
        turns_per_input = data.context_turns

        def prepared(text: str) -> str:
            return clean_text(model_tail(text, data.max_input_tokens))

        def recent(context) -> list[str]:
            """The last ``turns_per_input`` turns that say something, oldest first: an empty one
            (an API client's tool-call message, an image alone) takes no turn's place."""
            kept: list[str] = []
            for text in reversed(context):
                if len(kept) == turns_per_input:
                    break
                if cleaned := prepared(text):
                    kept.append(cleaned)
            return kept[::-1]

        inputs = [recent(context) + [prepared(message)] for message, context in zip(messages, contexts)]
        return self.generator.generate(inputs, decoding=config, samples=samples)

    def count_tokens(self, text: str) -> int:
        """How many tokens the model's tokenizer makes of ``text`` (usage counts of the API)."""
        return len(self.generator.tokenizer.encode(text))

    # --- sessions ----------------------------------------------------------------------------
    # Every session method takes ``owner``: the server's API keys each own their sessions and
    # see no other (``SessionNotFound``, as for a missing one). None: no restriction, and names
    # are those of sessions made without an owner (the library's, the CLI's).
    def new_session(self, name: str | None = None, metadata: dict | None = None, owner: str | None = None):
        return self.store.create_session(name, metadata, owner=owner or "")

    def session(self, id_or_name: int | str, create: bool = True, owner: str | None = None):
        """An existing session by id or name; a missing *name* is created when ``create``,
        atomically: threads and processes asking for the same new name get the same session."""
        from chatbot.dialogue.store import is_session_id

        id_or_name = _session_ref(id_or_name)
        if create and not is_session_id(id_or_name):
            return self.store.get_or_create_session(id_or_name, owner=owner or "")
        return self.store.get_session(id_or_name, owner=owner)

    def holds_database(self, path) -> bool:
        """Whether ``path`` is the session database's own file (``SessionStore.holds``)."""
        return self.store.holds(path)

    def find_session(self, name: str, owner: str | None = None):
        """The session called ``name``, or None (never creates one)."""
        if not isinstance(name, str):
            raise InputError(f"a session name is a str, not {_type_name(name)}")
        return self.store.find_session(name, owner=owner or "")

    def sessions(self, owner: str | None = None):
        return self.store.list_sessions(owner=owner)

    def export_session(self, session: int | str, format: str = "jsonl", owner: str | None = None) -> str:
        """A session as JSON lines (every message with its details) or corpus YAML."""
        return self.store.export_session(_session_ref(session), format=format, owner=owner)

    def check_database(self) -> None:
        """Open the session database if it is not open yet (creating and migrating it), and ask
        it something: ``StoreError`` when it does not answer. For health checks."""
        self.store.schema_revision()

    @property
    def database_url(self) -> str:
        """The session database's URL, its password hidden (opening it now, so a bad one fails here)."""
        return self.store.url

    @property
    def database_in_memory(self) -> bool:
        """Whether the session database lives in memory only (``sqlite://``): nothing is kept."""
        return self.store.in_memory

    def history(self, session: int | str, last: int | None = None, owner: str | None = None):
        """The session's messages, oldest first; only the newest ``last`` when given."""
        return self.store.history(_session_ref(session), last=_last_count(last), owner=owner)

    def history_page(self, session: int | str, limit: int = 50, before: int | None = None,
                     owner: str | None = None):
        """A page of a long session, for clients that scroll back: the newest ``limit``
        messages before message id ``before`` (oldest first), the ``before`` of the next older
        page (None at the start), and the stored feedback of the page's replies by message id."""
        session = _session_ref(session)
        messages, next_before = self.store.history_page(session, limit=limit, before=before, owner=owner)
        feedback = self.store.session_feedback(session, owner=owner)
        return messages, next_before, {m.id: feedback[m.id] for m in messages if m.id in feedback}

    def delete_session(self, session: int | str, owner: str | None = None) -> None:
        self.store.delete_session(_session_ref(session), owner=owner)

    def reply(self, text: str, session: int | str | None = None, max_length: int | None = None,
              decoding: DecodingConfig | dict[str, Any] | None = None) -> Reply:
        """Reply within a session (a new one when ``session`` is None), storing both turns.

        ``max_length`` and ``decoding`` (a ``DecodingConfig`` or a dict of some of its
        fields) override the model's decoding settings for this reply only; the settings
        used are stored with the reply. With ``avoid_repeat``, the reply is the best of the
        n-best list that differs from the bot's previous reply in the session.

        Raises ``InputError`` (an empty or too long message), ``ConfigError`` (a bad decoding
        setting), ``SessionNotFound`` (no such session id), ``MessageNotStored`` (the message
        could not be stored: nothing was decoded; ``exc.text`` holds it), ``ReplyNotStored``
        (the reply was made but not stored: ``exc.reply``), ``DecodingError``; all are
        ``ChatbotError``s, importable from ``chatbot``.
        """
        request = ReplyRequest(text, session=session, decoding=decoding, max_length=max_length)
        reply = self.reply_many([request])[0]
        assert isinstance(reply, Reply)  # reply_many raises, unless told to return exceptions
        return reply

    def reply_many(self, requests: Sequence["ReplyRequest"],
                   return_exceptions: bool = False) -> list["Reply | Exception"]:
        """Replies to many requests (sessions or stateless), decoded together: one batched
        decode per distinct decoding setting. This is what a server does with the requests
        that arrived during the previous decode.

        Every request's message is stored and its context read first, then the decodes run,
        then the replies are stored: two requests to one session in one call both read the
        history as it was before either reply (send them one after the other to have the
        second read the first's reply). A request that fails does not fail the others. With
        ``return_exceptions`` its exception takes its place in the result, as in
        ``asyncio.gather``; otherwise the first one is raised after every request is done.

        The three steps are ``prepare_replies`` (the database), ``decode_prepared`` (the
        model) and ``finish_replies`` (the database again), which a server runs on threads of
        their own: a database that stops answering then holds no decoder."""
        prepared = self.prepare_replies(requests)
        results = self.finish_replies(prepared, self.decode_prepared(prepared))
        if not return_exceptions:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def prepare_replies(self, requests: Sequence["ReplyRequest"]) -> list["PreparedReply | Exception"]:
        """``reply_many``'s first step: each request checked, its message stored and its
        context read; a request that fails has its exception in its place."""
        prepared: list[PreparedReply | Exception] = []
        for request in requests:
            try:
                prepared.append(self._prepare(request))
            except Exception as exc:  # noqa: BLE001 - it is that request's result
                prepared.append(exc)
        return prepared

    def decode_prepared(self, prepared: Sequence["PreparedReply | Exception"]) -> list["Generation | Exception"]:
        """``reply_many``'s second step: one batched decode per distinct decoding setting; no
        database work. Exceptions stay in their places; a failed decode is each of its
        requests' ``DecodingError``."""
        results: list[Generation | Exception] = list(prepared)  # type: ignore[arg-type]
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(prepared):
            if isinstance(item, PreparedReply):
                groups.setdefault(repr(item.config), []).append(index)
        for indices in groups.values():
            batch = [prepared[i] for i in indices]
            try:
                generated = self._generate([p.message for p in batch], [p.context for p in batch],
                                           batch[0].config, [p.sample for p in batch])
            except Exception as exc:  # noqa: BLE001
                for i, p in zip(indices, batch):
                    results[i] = p.decoding_failed(exc)
                continue
            for i, g in zip(indices, generated, strict=True):  # a result per request, or a bug
                results[i] = g
        return results

    def finish_replies(self, prepared: Sequence["PreparedReply | Exception"],
                       generated: Sequence["Generation | Exception"]) -> list["Reply | Exception"]:
        """``reply_many``'s last step: the fallback decisions and the stored replies."""
        results: list[Reply | Exception] = []
        for p, g in zip(prepared, generated, strict=True):
            if isinstance(g, Exception) or not isinstance(p, PreparedReply):
                results.append(g if isinstance(g, Exception) else p)
                continue
            try:
                results.append(self._finish(p, g))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results

    def _prepare(self, request: "ReplyRequest") -> "PreparedReply":
        """Checks, then every database step before decoding (nothing is stored for a request
        that fails its checks)."""
        if not isinstance(request, ReplyRequest):
            raise InputError(f"a reply request is a ReplyRequest, not {_type_name(request)}")
        message = self.check_message(request.text)
        config = self.resolve_decoding(request.decoding, request.max_length)  # a bad setting stores nothing
        check_sample_number(request.sample)  # a bad sample number stores nothing either
        if not request.store:
            context = _contexts([request.context or []], 1)[0]
            return PreparedReply(message, config, context, sample=request.sample)
        session = _session_ref(request.session) if request.session is not None else None
        session_id, context, previous, user = self._store_question(session, message, config, request.owner,
                                                                   request.create)
        return PreparedReply(message, config, context, session_id, previous, user, request.sample)

    def _finish(self, pending: "PreparedReply", generated: Generation) -> Reply:
        """The fallback decision, then the stored reply (when the request is in a session)."""
        previous = pending.previous
        if previous is not None and generated.text == previous:
            different = [i for i, (t, _) in enumerate(generated.alternatives) if t != previous]
            if different:
                generated = generated.choose(different[0])  # its own score and confidence
        fallback = (generated.score < self.dialogue.fallback_threshold
                    or generated.confidence < self.dialogue.min_confidence)
        text_out = self.dialogue.fallback_text if fallback else generated.text
        user = pending.user
        reply = Reply(text_out, generated.score, pending.session_id, None, generated.latency_ms, fallback,
                      user.id if user else None, generated.alternatives, generated.confidence,
                      generated.retrieved, generated.read_as, generated.tokens, generated.ended,
                      generated.input_tokens)
        if user is None:
            return reply
        try:
            bot = self.store.add_message(pending.session_id, "bot", text_out, model_name=self.name,
                                         model_version=self.bundle.manifest.get("created", ""),
                                         decoding=dataclasses.asdict(pending.config), score=generated.score,
                                         confidence=generated.confidence,
                                         details={"dialogue": dataclasses.asdict(self.dialogue),
                                                  "retrieved": retrieved_json(generated.retrieved),
                                                  "read_as": generated.read_as},
                                         latency_ms=generated.latency_ms, fallback=fallback,
                                         in_reply_to=user.id)
        except SessionNotFound as exc:  # deleted while the reply was decoded, the question with it
            raise SessionNotFound(f"session {pending.session_id} was deleted while its reply was made") from exc
        except StoreError as exc:
            raise ReplyNotStored(f"{exc}; the reply was not stored (your message was, as message {user.id} "
                                 f"of session {pending.session_id})", reply) from exc
        return dataclasses.replace(reply, message_id=bot.id)

    def _store_question(self, session, message: str, config: DecodingConfig, owner: str | None = None,
                        create: bool = False):
        """Every database step before decoding: find (or create) the session, read the recent
        turns, store the user's message. Returns (session id, context, the bot's previous reply
        when ``avoid_repeat`` needs it, the stored message). If any step fails, the message was
        not stored: ``MessageNotStored`` says so and carries the text to send again. With an
        ``owner``, only that owner's sessions are found and new ones are made for it."""
        owned = {} if owner is None else {"owner": owner}
        self._check_open()  # before the try: not a message to send again (MessageNotStored)
        try:
            store = self.store
            if session is None:
                session_id = store.create_session(**owned).id
            elif isinstance(session, int) and owner is None:
                session_id = session  # add_message checks it exists; saves a lookup per reply
            elif create and isinstance(session, str):
                session_id = store.get_or_create_session(session, owner=owner or "").id
            else:
                session_id = store.get_session(session, **owned).id
            turns = self.bundle.config.data.context_turns
            recent = store.history(session_id, last=max(turns, 2)) if turns or config.avoid_repeat else []
            user = store.add_message(session_id, "user", message)
        except (SessionNotFound, StoreArgumentError, DatabaseCorrupt):
            raise  # the caller's mistake (an InputError), or a damaged file: sending again cannot help
        except StoreError as exc:
            raise MessageNotStored(f"{exc}; your message was not stored", message) from exc
        context = [m.text for m in recent[-turns:]] if turns else []
        previous = (next((m.text for m in reversed(recent) if m.role == "bot"), None)
                    if config.avoid_repeat else None)
        return session_id, context, previous, user

    # --- feedback ----------------------------------------------------------------------------
    def rate(self, message_id: int, rating: str, owner: str | None = None):
        """Mark a stored reply "good" or "bad" (``Reply.message_id``); "good" also withdraws a
        correction given before (the reply was right after all)."""
        return self.store.set_feedback(_message_ref(message_id), rating=rating, owner=owner)

    def correct(self, message_id: int, better_answer: str, owner: str | None = None):
        """Record the answer a reply should have been; it is exported as a training pair."""
        if not isinstance(better_answer, str):  # None would read as "no feedback given" below
            raise InputError(f"a correction must be a non-empty string, not {type(better_answer).__name__}")
        return self.give_feedback(message_id, correction=better_answer, owner=owner)

    def give_feedback(self, message_id: int, rating: str | None = None, correction: str | None = None,
                      owner: str | None = None):
        """A rating and/or a correction in one write (what the HTTP API takes)."""
        message_id = _message_ref(message_id)
        if isinstance(correction, str) and not correction.strip():
            raise InputError("a correction must not be empty")
        if correction is not None:
            correction = self.check_message(correction)
        return self.store.set_feedback(message_id, rating=rating, correction=correction, owner=owner)

    def close(self) -> None:
        """Close the session database. The model stays loaded (``generate`` and ``ask`` go on),
        but anything that needs the database raises ``StoreError``: it is not opened again."""
        if self._warming is not None:
            self._warming.join()
        self.generator.release_threads()
        with self._store_lock:
            if self._store is not None:
                if self._store is not self._db:  # a store handed in belongs to the caller
                    self._store.close()
                self._store = None
            self._closed = True

    def __enter__(self) -> "ChatBot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
