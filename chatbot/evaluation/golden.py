"""Golden checks: hand-written question -> expected answer cases a model must pass before it
replaces another (``chatbot train --golden``, ``chatbot evaluate --golden``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from chatbot.data.corpus import JSONL_SUFFIXES, YAML_SUFFIXES, load_corpus, numbered_lines
from chatbot.data.text import clean_text
from chatbot.errors import CorpusError
from chatbot.evaluation.metrics import is_exact


# Judging a model reads corpus questions of any length: the chat limit on a message guards what
# a conversation stores, and the model reads only a message's last tokens anyway. Without this
# a 21,000-character corpus question failed training after its last epoch.
JUDGING_DIALOGUE = {"max_message_chars": 100_000_000}


def as_chatbot(bot):
    """A ``ChatBot``, or a ``Bundle`` wrapped in one (training checks a model before saving it)."""
    from chatbot.dialogue.bot import ChatBot

    return bot if isinstance(bot, ChatBot) else ChatBot(bot, warm_up=False, dialogue=JUDGING_DIALOGUE)


@dataclass(frozen=True)
class GoldenCase:
    question: str
    answers: tuple[str, ...]  # any of them passes
    source: str  # "file:line" of the case's first line


@dataclass(frozen=True)
class GoldenOutcome:
    case: GoldenCase
    reply: str
    score: float

    def summary(self, width: int = 60) -> str:
        """``source: 'question' -> 'reply'`` on one line, each cut to ``width`` characters: a
        one-line error must stay one line when the reply is a 400-token code sample."""
        def short(text: str) -> str:
            flat = " ".join(text.split())
            return flat if len(flat) <= width else flat[:width - 6].rstrip() + " [...]"

        return f"{self.case.source}: {short(self.case.question)!r} -> {short(self.reply)!r}"


@dataclass
class GoldenResult:
    passed: list[GoldenOutcome]
    failed: list[GoldenOutcome]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return {"passed": len(self.passed), "failed": [
            {"question": o.case.question, "reply": o.reply, "expected": list(o.case.answers),
             "source": o.case.source} for o in self.failed]}


def load_golden(path: str | Path) -> list[GoldenCase]:
    """Golden cases from ``question<TAB>expected answer`` lines (``.tsv``/``.txt``; blank
    lines and ``#`` comments skipped; the same question on several lines accepts any of those
    answers), or from a YAML/JSONL corpus (each pair a case; multi-line answers need these).

    Any bad line is a ``CorpusError`` naming the file and line: a golden file must be exact.
    """
    path = Path(path)
    if path.suffix.lower() in YAML_SUFFIXES + JSONL_SUFFIXES:
        pairs = [(e.question, e.answer, e.source) for e in load_corpus(path, strict=True).examples()]
    else:
        pairs = list(_golden_lines(path))
    cases: dict[str, GoldenCase] = {}
    for question, answer, where in pairs:
        case = cases.get(question)
        if case is None:
            cases[question] = GoldenCase(question, (answer,), where)
        elif answer not in case.answers:
            cases[question] = dataclasses.replace(case, answers=case.answers + (answer,))
    if not cases:
        raise CorpusError(path, None, "no golden cases (expected 'question<TAB>expected answer' lines)")
    return list(cases.values())


def _golden_lines(path: Path):
    for number, line in numbered_lines(path, "golden file"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        question, tab, answer = line.partition("\t")
        if not tab:
            raise CorpusError(path, number, "expected 'question<TAB>expected answer', found no tab")
        question, answer = clean_text(question), clean_text(answer)
        if not question or not answer:
            raise CorpusError(path, number, f"empty {'question' if not question else 'expected answer'}")
        yield question, answer, f"{path}:{number}"


def check_golden(bot, cases: Sequence[GoldenCase], decoding=None) -> GoldenResult:
    """Ask a model (a ``ChatBot`` or a ``Bundle``) every golden question in one batch; a case
    passes when the reply equals one of its answers, surrounding whitespace aside."""
    bot = as_chatbot(bot)
    config = bot.resolve_decoding(decoding)
    replies = bot.generate([case.question for case in cases], decoding=config) if cases else []
    result = GoldenResult([], [])
    for case, reply in zip(cases, replies):
        outcome = GoldenOutcome(case, reply.text, reply.score)
        (result.passed if is_exact(reply.text, case.answers) else result.failed).append(outcome)
    return result
