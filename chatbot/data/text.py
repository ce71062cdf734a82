"""Text normalisation, in one place: what every layer does to text before using it.

* ``unicode_error`` / ``sanitize_message``: what may be stored (valid Unicode, no control
  characters, not empty);
* ``clean_text``: the canonical form of an utterance, for corpora and model inputs alike;
* ``model_tail``: the end of a message that a model reading its last N tokens can see, cut
  before cleaning and tokenising so that a huge message costs what a short one does;
* ``strip_special_marks``: removes the noncharacters that spell the tokenizer's special tokens,
  so typed text never becomes a control id;
* ``match_key``: the folded form retrieval compares questions on (case, punctuation, vowel
  points, contractions and chat spellings folded away);
* ``normalise_answer``: the form in which a reply and an answer are compared for exact
  match (``chatbot.evaluation.metrics.is_exact``);
* ``characters_apart``: where words cannot be told apart (Chinese, Japanese, Thai), each
  character as a word (corpus stats, BLEU, distinct-n).
"""

from __future__ import annotations

import re
import unicodedata

import regex

from chatbot.errors import InputError

# The tokenizer spells its special tokens with U+FDD0..U+FDEF, Unicode noncharacters.
SPECIAL_MARKS = {code: None for code in range(0xFDD0, 0xFDF0)}

# Contractions and chat spellings that change a question's characters a lot but not its
# meaning; expanded before matching (only for matching: the model sees what was typed).
EXPANSIONS = {
    "what's": "what is", "whats": "what is", "who's": "who is", "whos": "who is",
    "where's": "where is", "how's": "how is", "it's": "it is", "that's": "that is",
    "there's": "there is", "i'm": "i am", "im": "i am", "you're": "you are", "youre": "you are",
    "we're": "we are", "they're": "they are", "don't": "do not", "dont": "do not",
    "doesn't": "does not", "doesnt": "does not", "didn't": "did not", "didnt": "did not",
    "can't": "can not", "cant": "can not", "cannot": "can not", "won't": "will not",
    "wont": "will not", "isn't": "is not", "isnt": "is not", "aren't": "are not",
    "arent": "are not", "i've": "i have", "you've": "you have", "i'll": "i will",
    "you'll": "you will", "i'd": "i would", "you'd": "you would", "u": "you", "ur": "your",
    "r": "are", "pls": "please", "plz": "please", "wat": "what",
}
# "Other" characters that belong to the text: newline and tab; the zero-width joiner of emoji
# sequences (a family is one emoji, not four) and the non-joiner of Persian spelling; the marks
# of writing direction.
_KEPT_OTHER = frozenset("\n\t\u200c\u200d\u200e\u200f\u061c")
# A Chinese or Japanese character: those scripts put no space between words, so a word
# counts as a character (BLEU's tokens, streamed chunks).
CJK_CHARACTER = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")
# A character, with its marks, of a script written without spaces between words (Chinese,
# Japanese, Thai, Lao, Khmer, Burmese): where words cannot be told apart, each counts as one.
UNSPACED_CHARACTER = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]\p{M}*")
# Optional vowel points, which writers add or leave out freely: Arabic harakat, Quranic marks
# and tatweel, Hebrew niqqud and cantillation. A question with and without them is one question.
_VOWEL_POINTS = re.compile("[\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0610-\u061a\u0640"
                           "\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed]")
_SYMBOL = regex.compile(r"\p{S}[\p{M}\u200d]*")  # emoji with their variation selectors and joiners
_WORD = regex.compile(r"(?:[\p{L}\p{N}_']\p{M}*)+")  # with their combining marks (Hindi, Arabic vowels)
# Whole-message checks run in C (re), not character by character in Python: a message may be
# megabytes long. Category Cc is exactly U+0000-U+001F and U+007F-U+009F.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Cc less newline and tab
_SURROGATES = re.compile("[\ud800-\udfff]")
# What a one-line name must not hold: control characters (escape codes, newlines), line and
# paragraph separators, and the bidirectional overrides that make text read as other text.
UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTENT = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]")  # neither whitespace nor Cc (\s is str.isspace)
_ASCII_CONTROLS = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"
# A token covers a few characters, rarely 20; 64 per token (and 4,096 at least) is a margin that
# no tokenizer of ours exhausts short of one unknown "word" thousands of characters long.
TAIL_CHARS_PER_TOKEN = 64
MIN_TAIL_CHARS = 4096


def unicode_error(text: str, what: str) -> InputError | None:
    """An ``InputError`` when ``text`` has no UTF-8 form (a lone surrogate such as "\\ud800"
    can be neither stored nor tokenized), else None."""
    if text.isascii():  # O(1): CPython knows
        return None
    found = _SURROGATES.search(text)
    if found is not None:
        return InputError(f"{what} is not valid Unicode: a lone surrogate U+{ord(found.group()):04X} "
                          f"at position {found.start()}")
    return None


def sanitize_message(text: str) -> str:
    """What is stored for a user message: control characters removed, nothing else changed.

    Raises ``InputError`` for empty or whitespace-only text, and for a lone surrogate
    (``"\\ud800"``: no UTF-8 form, so it can be neither stored nor tokenized).
    """
    if not isinstance(text, str):
        raise InputError(f"a message must be text, not {type(text).__name__}")
    if (error := unicode_error(text, "the message")) is not None:
        raise error
    if not _has_content(text):
        raise InputError("the message is empty")
    return _without_controls(text)


def escape_unshowable(text: str) -> str:
    """``text`` for one line of a terminal: ``UNSHOWABLE`` characters as Python escapes
    (``\x1b``), so a name stored before they were refused cannot run escape codes."""
    return UNSHOWABLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def _dropped(ch: str) -> bool:
    """Whether ``clean_text`` drops the character: controls, format characters (a zero-width
    space, a byte-order mark) but those kept on purpose, surrogates, noncharacters (the
    tokenizer's marks among them). Unassigned code points stay: they are characters newer than
    this Python's Unicode tables (Python 3.11 knows no 🩷), and private-use ones are someone's."""
    code = ord(ch)
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return True
    category = unicodedata.category(ch)
    return (category in ("Cc", "Cf", "Cs") and ch not in _KEPT_OTHER
            and not 0xE0020 <= code <= 0xE007F)  # tag characters: the flag of Scotland


def _has_content(text: str) -> bool:
    """Whether anything but white space, control and format characters is left once
    ``clean_text`` has dropped what ``_dropped`` names: a message of only a zero-width joiner or
    a direction mark would be answered as an empty input."""
    for found in _CONTENT.finditer(text):  # the first character of real text ends the search
        if not _dropped(found.group()) and unicodedata.category(found.group()) not in ("Cc", "Cf"):
            return True
    return False


def _without_controls(text: str) -> str:
    """``text`` less its control characters; the same object when it has none. ASCII text
    (most of it) goes through ``bytes.translate``, twice as fast as a regex on megabytes."""
    if not text.isascii():
        return _CONTROLS.sub("", text)
    data = text.encode("ascii")
    kept = data.translate(None, _ASCII_CONTROLS)
    return text if len(kept) == len(data) else kept.decode("ascii")


def model_tail(text: str, max_tokens: int) -> str:
    """The end of ``text`` that can reach a model reading only its last ``max_tokens`` tokens,
    with a generous margin (``TAIL_CHARS_PER_TOKEN``); short text is returned as it is.

    Cleaning and tokenising a whole 10 MB message to keep 64 tokens of it would cost seconds
    and gigabytes: cutting first bounds the work by the model instead of by the message.
    Trailing whitespace goes first (cleaning strips it anyway), so it cannot push the words out.
    """
    keep = max(MIN_TAIL_CHARS, TAIL_CHARS_PER_TOKEN * max_tokens)
    if len(text) <= keep:
        return text
    return text.rstrip()[-keep:]


def clean_text(text: str) -> str:
    """Canonical form of an utterance: NFC, Unix newlines, no control characters, stripped.

    Inner spaces and newlines are kept: answers may hold indented code.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isprintable():  # printable text has no control character: most lines skip the scan
        text = "".join(ch for ch in text if not _dropped(ch))
        if not _has_content(text):
            return ""
    # NFC after the filter: a mark that a dropped character kept from its letter composes with
    # it now, so cleaning twice gives what cleaning once did.
    return unicodedata.normalize("NFC", text).replace("\t", " ").strip()


def strip_special_marks(text: str) -> str:
    return text.translate(SPECIAL_MARKS)


def characters_apart(text: str) -> str:
    """``text`` with each character of a script written without spaces (``UNSPACED_CHARACTER``)
    set apart, so that splitting at spaces counts each as a word."""
    return UNSPACED_CHARACTER.sub(r" \g<0> ", text)


def match_key(text: str) -> str:
    """What questions are compared on: case, accents' forms, Arabic and Hebrew vowel points,
    punctuation and contractions folded away."""
    # Unicode's compatibility caseless match: casefold can leave a form NFKC would compose
    # ("ß\u0301" folds to "ss\u0301"), so the key of a key would differ from the key.
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold()).replace("\u2019", "'")
    text = _VOWEL_POINTS.sub("", text.replace("i\u0307", "i"))  # Turkish "İ" folds to "i" and a dot
    words = [EXPANSIONS.get(w, w) for w in _WORD.findall(text)]
    key = " ".join(w.strip("'") for w in words if w.strip("'"))
    return key or "".join(_SYMBOL.findall(text))  # "❤️" has no word, and is still a question to find


def normalise_answer(text: str) -> str:
    """The form in which replies and answers are compared for exact match: case folded (the
    Unicode caseless form: "STRASSE" is "Straße"), whitespace runs as one space, no trailing
    punctuation or whitespace ("Hi." == "hi"; inner and leading punctuation still count:
    "It's" != "Its"), compatibility forms and the typographic apostrophe as what they stand
    for ("ＯＫ" is "OK", "l’entrée" is "l'entrée")."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())  # as match_key
    text = " ".join(folded.replace("\u2019", "'").split())
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]
