"""Corpus readers: ChatterBot YAML, TSV sentence pairs, JSONL, chitchat-dataset JSON, and
directories of them.

Every reader produces ``Dialogue`` records (a list of utterances with the place each came
from); ``make_examples`` turns dialogues into ``Example`` records with a context window.
Whole-file problems (unreadable, invalid UTF-8 or YAML, wrong top-level shape) raise
``CorpusError``; a malformed entry is skipped with a warning unless ``strict`` is set, and
every skip is counted in ``Corpus.skipped``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from chatbot.data.text import clean_text
from chatbot.errors import CorpusError

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yml", ".yaml")
TSV_SUFFIXES = (".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl",)
CHITCHAT_SUFFIXES = (".json",)
CORPUS_SUFFIXES = YAML_SUFFIXES + TSV_SUFFIXES + JSONL_SUFFIXES + CHITCHAT_SUFFIXES
# Corpora known by name (``--corpus chitchat``): the module of an optional package and its file.
NAMED_CORPORA = {"chitchat": ("chitchat_dataset", "dataset.json", "chitchat")}


@dataclass(frozen=True)
class Utterance:
    text: str
    source: str  # "file:line", for error messages and corpus tools


@dataclass(frozen=True)
class Dialogue:
    utterances: tuple[Utterance, ...]
    category: str = ""


@dataclass(frozen=True)
class Example:
    """One training pair: previous turns (oldest first) + question -> answer."""

    context: tuple[str, ...]
    question: str
    answer: str
    source: str = ""

    def to_json(self) -> dict:
        return {"context": list(self.context), "question": self.question,
                "answer": self.answer, "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> "Example":
        """The inverse of ``to_json``; ``ValueError`` naming what is wrong for anything else
        (the files it reads, in a bundle, may have been edited by hand)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        context = data.get("context", [])
        texts = [data.get("question"), data.get("answer"), data.get("source", "")]
        if not isinstance(context, list) or not all(isinstance(t, str) for t in context + texts):
            raise ValueError("'question', 'answer', 'source' must be strings and 'context' a list of strings")
        return cls(tuple(context), *texts)


@dataclass
class Corpus:
    dialogues: list[Dialogue] | DialogueFiles  # DialogueFiles: re-read on each pass
    files: list[Path]
    sha256: str  # of every file's name and bytes: identifies the data a model was trained on
    skipped: list[CorpusError] = field(default_factory=list)
    root: Path | None = None  # the file or directory it was loaded from
    name: str | None = None  # the name it was loaded by (``NAMED_CORPORA``), if any

    def examples(self, context_turns: int = 0, deduplicate: bool = True) -> list[Example]:
        return make_examples(self.dialogues, context_turns, deduplicate)


# --- JSON from files we did not write ---------------------------------------------------------
MAX_JSON_DEPTH = 64  # nesting deeper than any file of ours; far below Python's recursion limit


class JSONTooDeep(ValueError):
    """A JSON text nests arrays/objects deeper than ``MAX_JSON_DEPTH``."""


def loads_bounded(text: str, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` for untrusted files: nesting deeper than ``max_depth`` raises
    ``JSONTooDeep`` (as does what would hit the recursion limit), an integer too long to read
    ``ValueError``, bad syntax ``json.JSONDecodeError``. Bounding the depth here keeps every
    later step (repr in an error message, a recursive walk, ``json.dumps``) far from a
    ``RecursionError``, whatever the file holds."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise JSONTooDeep(f"nested more than {max_depth} levels deep") from None
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack:  # iterative: a deep value cannot overflow the walk itself
        value, depth = stack.pop()
        if depth > max_depth:
            raise JSONTooDeep(f"nested more than {max_depth} levels deep")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return data


# --- loading ---------------------------------------------------------------------------------
def load_corpus(path: str | Path, strict: bool = False, in_memory: bool = True, quiet: bool = False) -> Corpus:
    """Read a corpus file or a directory of them (recursively, in sorted order). ``quiet``: log
    nothing of what is skipped (a corpus read again whose reading was reported before).

    ``in_memory=False`` checks the whole corpus now (its skipped entries, its digest) but keeps
    no dialogue: ``Corpus.dialogues`` is then a ``DialogueFiles`` that reads the files again on
    every pass, so that a corpus of millions of pairs costs memory for one line at a time."""
    reader = CorpusReader(path, strict, quiet)
    if in_memory:
        dialogues = list(reader)
    else:
        for _ in reader:
            pass
        dialogues = DialogueFiles(reader.root, reader.sha256, reader.dialogues)
    name = str(path) if str(path) in NAMED_CORPORA and reader.root != Path(path) else None
    return Corpus(dialogues, reader.files, reader.sha256, reader.skipped, reader.root, name)


class DialogueFiles:
    """A corpus' dialogues, read from its files again on each pass (``load_corpus(in_memory=False)``).
    A pass that finds the files changed since the first raises ``CorpusError``: a training must
    not mix two versions of its data."""

    def __init__(self, root: Path, sha256: str, count: int):
        self.root, self.sha256, self.count = root, sha256, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Dialogue]:
        reader = CorpusReader(self.root, quiet=True)  # the first pass reported what it skipped
        yield from reader
        if reader.sha256 != self.sha256:
            raise CorpusError(self.root, None, "the corpus changed while it was being read; "
                                               "train again once it no longer changes")


class CorpusReader:
    """A corpus read one dialogue at a time: iterating yields its dialogues in file order, as
    ``load_corpus`` (which keeps them all) would hold them, so that a pass over a big corpus
    (``chatbot corpus stats``) needs memory for one file's text, not for every dialogue.

    Malformed entries are logged and collected in ``skipped`` (or raised, with ``strict``);
    ``quiet`` leaves the logging out, for a second pass over the same files. After a full pass,
    ``sha256`` identifies the data read; a pass that found no dialogue raises ``CorpusError``."""

    def __init__(self, path: str | Path, strict: bool = False, quiet: bool = False):
        self.root = resolve_corpus(path)
        self.files = corpus_files(self.root, quiet)
        self.strict = strict
        self.quiet = quiet
        self.skipped: list[CorpusError] = []
        self.dialogues = 0
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[Dialogue]:
        for file in self.files:
            name = file.relative_to(self.root).as_posix() if self.root.is_dir() else file.name
            self._digest.update(os.fsencode(name))  # a name in no UTF-8 (an old zip's) as its bytes
            file_digest = hashlib.sha256()
            try:
                for item in _read_file(file, file_digest):
                    if isinstance(item, CorpusError):
                        self._skip(item)
                    else:
                        self.dialogues += 1
                        yield item
            except OSError as exc:
                raise CorpusError(file, None, f"cannot read file ({exc.strerror})") from None
            self._digest.update(file_digest.digest())
        if not self.dialogues:
            raise CorpusError(self.root, None, "empty corpus: no question/answer pairs found")
        if self.skipped and not self.quiet:
            log.warning("skipped %d malformed entr%s in %s", len(self.skipped),
                        "y" if len(self.skipped) == 1 else "ies", self.root)

    def _skip(self, error: CorpusError) -> None:
        if self.strict:
            raise error
        if not self.quiet:
            log.warning("skipped %s", error)
        self.skipped.append(error)


def _project_dir() -> Path:
    """Where the bundled corpora are, as ``corpora/NAME``: the source checkout, else the
    installed package, which carries a copy (``chatbot/corpora``)."""
    package = Path(__file__).resolve().parents[1]
    return package.parent if (package.parent / "corpora" / "english").is_dir() else package


PROJECT_DIR = _project_dir()


def resolve_corpus(path: str | Path) -> Path:
    """A corpus path, or the file a corpus name (``NAMED_CORPORA``) stands for: a path that
    exists wins, so a folder called ``chitchat`` is still read as itself. A relative path that
    is not here but is a bundled corpus (``corpora/english``) is that corpus, wherever the
    command runs: the default model records it so, and is fine-tuned from it."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (PROJECT_DIR / path).exists():
        return PROJECT_DIR / path
    if path.exists() or str(path) not in NAMED_CORPORA:
        return path
    module, file, extra = NAMED_CORPORA[str(path)]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CorpusError(path, None, f"the '{path}' corpus comes with an optional package: "
                                      f"pip install \"chatbot[{extra}]\" (in a checkout: pip install -e \".[{extra}]\")")
    return Path(spec.origin).parent / file


def corpus_files(root: Path, quiet: bool = False) -> list[Path]:
    """The files a corpus path stands for: the file itself, or every corpus file under a
    directory (recursively, sorted); ``CorpusError`` for a path that holds none."""
    if not root.exists():
        raise CorpusError(root, None, "no such file or directory")
    if root.is_dir():
        files = _files_under(root, quiet)
        if not files:
            raise CorpusError(root, None, f"no corpus files ({', '.join(CORPUS_SUFFIXES)}) in directory")
        return files
    if root.suffix.lower() not in CORPUS_SUFFIXES:
        raise CorpusError(root, None, f"unknown corpus format '{root.suffix}' "
                                      f"(expected one of {', '.join(CORPUS_SUFFIXES)})")
    return [root]


def _files_under(root: Path, quiet: bool = False) -> list[Path]:
    """The corpus files under a directory, sorted. Hidden folders and model bundles are not
    corpora (a bundle trained into the corpus folder holds train.jsonl, a copy of the corpus,
    and an unfinished training's .NAME.training/ state); data files in a format no reader
    knows (a spreadsheet's .csv) are named once, not passed over in silence."""
    found, unread = [], []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                               and not (Path(folder) / d / "bundle.json").is_file())
        for name in names:
            path = Path(folder) / name
            if _is_corpus_file(path):
                found.append(path)
            elif path.suffix.lower() in UNREAD_DATA_SUFFIXES:
                unread.append(path)
    if unread and not quiet:
        log.warning("%s: %d file%s in a format no corpus reader knows left out (first: %s; a spreadsheet "
                    "saves as tab-separated .tsv)", root, len(unread), "s" if len(unread) > 1 else "", min(unread))
    return sorted(found)


UNREAD_DATA_SUFFIXES = (".csv", ".xlsx", ".xls", ".ods", ".parquet")


def _is_corpus_file(path: Path) -> bool:
    """In a directory: files with a corpus suffix, except licence and read-me files."""
    name = path.name.upper()
    return path.suffix.lower() in CORPUS_SUFFIXES and not name.startswith(("LICENSE", "LICENCE", "README"))


LINE_READERS = JSONL_SUFFIXES + TSV_SUFFIXES  # read line by line: any size in little memory


def _read_file(file: Path, digest) -> Iterator[Dialogue | CorpusError]:
    """The entries of one file; its bytes go through ``digest`` as they are read. A line-based
    file is read one line at a time, the others whole (a YAML or JSON document is one value)."""
    reader = _reader_for(file)
    if file.suffix.lower() not in LINE_READERS:
        raw = file.read_bytes()
        digest.update(raw)
        text = _decode_utf8(file, raw, 1)
        del raw  # one copy of the file at a time
        yield from reader(file, text)
        return
    with open(file, "rb") as f:
        yield from reader(file, _decoded_lines(file, f, digest))


def numbered_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a small UTF-8 text file that is not a corpus (golden checks,
    question lists), lines ending at "\n" or "\r\n" as the corpus readers end them; a file that
    cannot be read or decoded is a ``CorpusError`` naming it (and the line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(path, None, f"cannot read {what} ({exc.strerror})") from None
    for number, line in enumerate(_decode_utf8(path, raw, 1).split("\n"), start=1):
        yield number, line.removesuffix("\r")

def _decoded_lines(file: Path, f, digest) -> Iterator[str]:
    """The lines of a binary file as text (a leading byte order mark dropped), without their
    ``\n``: the same lines ``text.split("\n")`` gives."""
    for number, raw in enumerate(f, start=1):
        digest.update(raw)
        line = _decode_utf8(file, raw, number)
        yield line[:-1] if line.endswith("\n") else line


def _decode_utf8(file: Path, raw: bytes, first_line: int) -> str:
    """``raw`` (which starts at line ``first_line``) as text; invalid UTF-8 names its line."""
    if first_line == 1 and _looks_utf16(raw[:64]):
        # Excel's "Unicode text" is UTF-16; ASCII in UTF-16 without a BOM even decodes as UTF-8
        # (with a NUL after every character) and was read wrong instead of refused.
        raise CorpusError(file, 1, "the file is UTF-16, not UTF-8: save it as UTF-8")
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw[: exc.start].count(b"\n")
        raise CorpusError(file, line, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def _looks_utf16(start: bytes) -> bool:
    """A UTF-16 byte order mark, or every other byte NUL (ASCII in UTF-16, either order)."""
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    return len(start) >= 4 and (not any(start[1::2]) or not any(start[0::2]))


def _reader_for(file: Path):
    suffix = file.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return read_yaml
    if suffix in JSONL_SUFFIXES:
        return read_jsonl
    if suffix in CHITCHAT_SUFFIXES:
        return read_chitchat
    return read_tsv


def _dialogue(file: Path, items: list[tuple[str, int]], line: int, category: str = "") -> Dialogue | CorpusError:
    """Build a dialogue from (text, line) items; the entry starts at ``line``.

    An empty utterance or fewer than two utterances make the entry malformed.
    """
    utterances = []
    for text, line in items:
        cleaned = clean_text(text)
        if not cleaned:
            return CorpusError(file, line, "empty utterance")
        utterances.append(Utterance(cleaned, f"{file}:{line}"))
    if len(utterances) < 2:
        return CorpusError(file, line, "a conversation needs at least two utterances")
    return Dialogue(tuple(utterances), category)


def read_yaml(file: Path, text: str) -> Iterator[Dialogue | CorpusError]:
    """ChatterBot format: ``conversations`` is a list of lists of utterances.

    Parsed with ``yaml.compose`` (the safe node graph) rather than ``safe_load`` so that
    every utterance keeps its line number and stays a string ("Yes" must not become True).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):  # a forbidden character (NUL...): a position, no mark
            line = text.count("\n", 0, exc.position) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, began = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and began is not None and began.line + 1 != line:  # an unclosed quote: where it opened
            problem += f" ({context} on line {began.line + 1})"
        raise CorpusError(file, line, f"invalid YAML: {problem}") from None
    except RecursionError:  # the composer recurses once per nesting level
        raise CorpusError(file, None, "invalid YAML: nested too deeply") from None
    if root is None:
        raise CorpusError(file, None, "empty file: no conversations")
    if not isinstance(root, yaml.MappingNode):
        raise CorpusError(file, 1, "expected a mapping with a 'conversations' list")
    sections, key_lines = {}, {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in sections:  # e.g. two ChatterBot files concatenated: YAML keeps the last alone
                raise CorpusError(file, key.start_mark.line + 1, f"the key '{key.value}' appears twice "
                                  f"(first on line {key_lines[key.value]}); merge the lists or use one file each")
            sections[key.value], key_lines[key.value] = value, key.start_mark.line + 1
    conversations = sections.get("conversations")
    if conversations is None:
        raise CorpusError(file, 1, "missing 'conversations' key")
    if not isinstance(conversations, yaml.SequenceNode):
        raise CorpusError(file, conversations.start_mark.line + 1, "'conversations' must be a list")
    category = ""
    categories = sections.get("categories")
    if isinstance(categories, yaml.SequenceNode) and categories.value:
        first = categories.value[0]
        category = first.value if isinstance(first, yaml.ScalarNode) else ""
    seen: set[int] = set()  # every node read so far; meeting one again means a YAML alias
    for number, conv in enumerate(conversations.value, start=1):
        line = conv.start_mark.line + 1
        if _seen_before(conv, seen):
            # Expanding aliases turns a small file into millions of utterances ("billion laughs").
            yield CorpusError(file, line, f"conversation {number} repeats earlier text through a "
                                          "YAML alias (aliases are not supported in conversations)")
            continue
        if not isinstance(conv, yaml.SequenceNode):
            yield CorpusError(file, line, f"conversation {number} is not a list of utterances")
            continue
        bad = next((u for u in conv.value if not isinstance(u, yaml.ScalarNode)), None)
        if bad is not None:
            yield CorpusError(file, bad.start_mark.line + 1,
                              f"conversation {number}: an utterance must be text, not a {_node_kind(bad)}")
            continue
        yield _dialogue(file, [(u.value, u.start_mark.line + 1) for u in conv.value], line, category)


def _seen_before(conv: yaml.Node, seen: set[int]) -> bool:
    """Whether this conversation node, or one of its items, was already read (an alias);
    records them. Each distinct node is looked at once, so the work is bounded by the file."""
    if id(conv) in seen:
        return True
    seen.add(id(conv))
    for item in conv.value if isinstance(conv, yaml.SequenceNode) else ():
        if id(item) in seen:
            return True
        seen.add(id(item))
    return False


def _node_kind(node: yaml.Node) -> str:
    return "list" if isinstance(node, yaml.SequenceNode) else "mapping"


def _lines(text: str) -> Iterator[str]:
    """``text.split("\\n")`` one line at a time: a file of a million lines is not held twice."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def read_tsv(file: Path, text: str | Iterable[str]) -> Iterator[Dialogue | CorpusError]:
    """``question<TAB>answer[<TAB>anything]`` per line; extra columns (fra.txt's licence) are ignored.
    ``text`` is the file's text or its lines. Only the first non-blank line can be a header row.

    A spreadsheet saved as tab-separated text quotes a cell that holds a quote or a line break
    (``"Click ""Cancel"" twice"``, a cell over several lines): such records are read as the csv
    module's ``excel-tab`` dialect reads them. Only those: a cell that merely starts with a
    quote (``"Hi," he said``) is kept as written."""
    first = True
    lines = enumerate(_lines(text) if isinstance(text, str) else text, start=1)
    held: list[tuple[int, str]] = []  # lines read ahead for a quoted cell that never closed
    while True:
        line_no, line = held.pop(0) if held else next(lines, (0, None))
        if line is None:
            return
        if not line.strip():
            continue
        could_be_header, first = first, False
        line = line.rstrip("\r")
        columns = line.split("\t")
        if _opens_quoted_cell(columns):
            record, more = line, []
            while record.count('"') % 2 and len(more) < MAX_CELL_LINES:
                following = held.pop(0) if held else next(lines, (0, None))
                if following[1] is None:
                    break
                more.append(following)
                record += "\n" + following[1].rstrip("\r")
            if record.count('"') % 2:
                yield CorpusError(file, line_no, "a cell opens a quote that no line closes (a spreadsheet's "
                                                 "multi-line cell cut short?)")
                held = more + held  # read again as lines of their own
                continue
            columns = next(csv.reader(io.StringIO(record), dialect="excel-tab"))
        elif any(spreadsheet_quoted(c) for c in columns[:2]):
            columns = next(csv.reader(io.StringIO(line), dialect="excel-tab"))
        if len(columns) < 2:
            yield CorpusError(file, line_no, "expected 'question<TAB>answer', found no tab")
            continue
        if could_be_header and (columns[0].strip().lower(), columns[1].strip().lower()) in _HEADER_ROWS:
            yield CorpusError(file, line_no, f"a header row ('{columns[0]}<TAB>{columns[1]}'), not a pair")
            continue
        yield _dialogue(file, [(columns[0], line_no), (columns[1], line_no)], line_no)


MAX_CELL_LINES = 200  # lines one quoted cell may run on over


def spreadsheet_quoted(cell: str) -> bool:
    """A spreadsheet's quoted cell on one line: ``"..."`` with its inner quotes doubled, and at
    least one (a cell is quoted for the quotes it holds, not for commas, in tab-separated text)."""
    inner = cell[1:-1]
    return len(cell) > 2 and cell[0] == cell[-1] == '"' and '""' in inner and '"' not in inner.replace('""', "")


def read_back_unquoted(text: str) -> bool:
    """Whether ``text``, written as a TSV cell, would be read as a spreadsheet's quoting and
    come back changed (what ``corpus convert`` to TSV refuses)."""
    return _opens_quoted_cell([text]) or spreadsheet_quoted(text)


def _opens_quoted_cell(columns: list[str]) -> bool:
    """Whether a question or answer cell starts a quote that this line does not close: the
    start of a spreadsheet's cell over several lines."""
    last = len(columns) - 1
    return last <= 1 and columns[last].startswith('"') and columns[last].count('"') % 2 == 1


# A spreadsheet's first row names its columns; trained on, it would teach "question" -> "answer".
_HEADER_ROWS = {(q, a) for q in ("question", "questions", "prompt", "input", "user")
                for a in ("answer", "answers", "response", "reply", "output", "bot")}


def _category(obj: dict) -> str:
    """A JSONL record's category: absent or null is none (null read as the category "None")."""
    category = obj.get("category")
    return "" if category is None else str(category)


def read_jsonl(file: Path, text: str | Iterable[str]) -> Iterator[Dialogue | CorpusError]:
    """One JSON object per line: ``{"question", "answer"}`` or ``{"turns": [...]}``; ``text``
    is the file's text or its lines."""
    for line_no, line in enumerate(_lines(text) if isinstance(text, str) else text, start=1):
        if not line.strip():
            continue
        try:
            obj = loads_bounded(line)
        except json.JSONDecodeError as exc:
            yield CorpusError(file, line_no, f"invalid JSON ({exc.msg})")
            continue
        except JSONTooDeep:
            yield CorpusError(file, line_no, "invalid JSON (nested too deeply)")
            continue
        except ValueError:  # an integer over Python's digit limit (sys.get_int_max_str_digits)
            yield CorpusError(file, line_no, "invalid JSON (a number too long to read)")
            continue
        if not isinstance(obj, dict):
            yield CorpusError(file, line_no, "expected a JSON object")
            continue
        if "turns" in obj:
            turns = obj["turns"]
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                yield CorpusError(file, line_no, "'turns' must be a list of strings")
                continue
            yield _dialogue(file, [(t, line_no) for t in turns], line_no, _category(obj))
        elif "question" in obj and "answer" in obj:
            if not isinstance(obj["question"], str) or not isinstance(obj["answer"], str):
                yield CorpusError(file, line_no, "'question' and 'answer' must be strings")
                continue
            yield _dialogue(file, [(obj["question"], line_no), (obj["answer"], line_no)], line_no,
                            _category(obj))
        else:
            yield CorpusError(file, line_no, "expected keys 'question' and 'answer', or 'turns'")


def read_chitchat(file: Path, text: str) -> Iterator[Dialogue | CorpusError]:
    """The chitchat-dataset format (``pip install chitchat-dataset``, MIT): one JSON object of
    ``{conversation id: {"messages": [[{"text", "sender", ...}, ...], ...]}}``, where each inner
    list is one speaker's consecutive messages. Those are joined into one turn, so a dialogue
    alternates speakers as the pairs it makes must. The file is one line; a problem is located
    by conversation id and turn."""
    try:
        data = loads_bounded(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(file, exc.lineno, f"invalid JSON ({exc.msg})") from None
    except ValueError as exc:  # JSONTooDeep, or a number too long to read
        raise CorpusError(file, None, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorpusError(file, None, "expected a chitchat-dataset object: {conversation id: {\"messages\": [...]}}")
    for conversation, body in data.items():
        runs = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(runs, list):
            yield CorpusError(file, None, f"conversation {conversation}: expected an object with a 'messages' list")
            continue
        turns = [_chitchat_turn(run) for run in runs]
        broken = next((number for number, turn in enumerate(turns, start=1) if turn is None), None)
        if broken is not None:
            yield CorpusError(file, None, f"conversation {conversation}, turn {broken}: expected a list of "
                                          "messages with a 'text' string each")
            continue
        utterances = tuple(Utterance(turn, f"{file.name}:{conversation}/{number}")
                           for number, turn in enumerate(turns, start=1) if turn)
        if len(utterances) >= 2:  # a third of them are one unanswered turn: no pair, no error
            yield Dialogue(utterances)


def _chitchat_turn(run) -> str | None:
    """One speaker's consecutive messages as one cleaned turn; None when malformed."""
    if not isinstance(run, list) or not all(isinstance(m, dict) and isinstance(m.get("text"), str) for m in run):
        return None
    return clean_text(" ".join(m["text"] for m in run))


# --- examples --------------------------------------------------------------------------------
def make_examples(dialogues: Iterable[Dialogue], context_turns: int = 0,
                  deduplicate: bool = True) -> list[Example]:
    """Each consecutive pair of utterances is question -> answer, with up to
    ``context_turns`` earlier utterances of the same dialogue as context."""
    examples: list[Example] = []
    seen: set[tuple] = set()
    for _, example in raw_examples(dialogues, context_turns):
        if deduplicate:
            key = (example.context, example.question, example.answer)
            if key in seen:
                continue
            seen.add(key)
        examples.append(example)
    return examples


def raw_examples(dialogues: Iterable[Dialogue], context_turns: int) -> Iterator[tuple[int, Example]]:
    """(dialogue number, example) for every consecutive pair of every dialogue, repeats kept."""
    for number, dialogue in enumerate(dialogues):
        texts = [u.text for u in dialogue.utterances]
        for i in range(len(texts) - 1):
            context = tuple(texts[max(0, i - context_turns):i]) if context_turns else ()
            yield number, Example(context, texts[i], texts[i + 1], dialogue.utterances[i].source)


def split_examples(examples: list, validation_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split of examples (or of any list, e.g. dialogues), order kept; at
    least one training item is always kept."""
    val_ids = validation_positions(len(examples), validation_fraction, seed)
    train = [e for i, e in enumerate(examples) if i not in val_ids]
    val = [e for i, e in enumerate(examples) if i in val_ids]
    return train, val


def validation_positions(count: int, validation_fraction: float, seed: int) -> set[int]:
    """Which of ``count`` items a seeded split holds out (never all of them)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_val = min(int(round(count * validation_fraction)), count - 1)
    return set(order[:max(n_val, 0)])


def split_by_dialogue(dialogues: list[Dialogue], validation_fraction: float, seed: int,
                      context_turns: int = 0, deduplicate: bool = True) -> tuple[list[Example], list[Example]]:
    """Whole conversations held out: no turn of a validation dialogue, and so none of the
    context its examples read, was seen in training."""
    train, val = split_examples(dialogues, validation_fraction, seed)
    return make_examples(train, context_turns, deduplicate), make_examples(val, context_turns, deduplicate)
