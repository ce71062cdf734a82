"""One loaded model per bundle on disk, per process, shared by every ``ChatBot.load`` of it.

TensorFlow never frees a compiled XLA program: its compilation cache has no eviction, and a
program is found there by the name of the function that traced it, which is new for every
loaded model. So each ChatBot that loaded a bundle anew and compiled its decode loops left its
programs behind (about 30-60 MB on the default model), and a process that loaded and closed
bots in turn (a test suite, a notebook cell run again, a web app making a bot per request)
grew until TensorFlow crashed it, with SIGSEGV after about 35 bots. Sharing the ``Bundle``
and the ``Generator`` that holds its decode loops between bots of the same files ends that:
the second bot costs no memory and no compilation, and loads at once.

A bundle is known by its resolved directory and the size, modification time and inode of
each of its files: retraining into the same directory (a new directory renamed into place)
or editing a file by hand loads it again, and the stale entry is dropped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from chatbot.data.spelling import speller_for
from chatbot.inference.generator import Generator
from chatbot.inference.retrieval import memory_for
from chatbot.model.bundle import Bundle


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    generator: Generator


def new_generator(bundle: Bundle) -> Generator:
    """A generator of its own for ``bundle``: its decode loops, retrieval memory and speller."""
    return Generator(bundle.model, bundle.tokenizer, bundle.config.data, bundle.config.decoding,
                     memory=memory_for(bundle.config.data, bundle.train, bundle.question_vectors),
                     speller=speller_for(bundle.config.data, bundle.train))


_loaded: dict[Path, tuple[tuple, LoadedModel]] = {}
_lock = threading.Lock()  # held while loading: two threads loading one bundle load it once


def _stamp(path: Path) -> tuple:
    """What changes when a file of the bundle is replaced or edited (its files lie at its top;
    folders beside them, TensorBoard's logs, are not read by loading)."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.relative_to(path).as_posix(), s.st_size, s.st_mtime_ns, s.st_ino)
                 for p, s in ((p, p.stat()) for p in files))


def shared_model(path: Path) -> LoadedModel:
    """The bundle at ``path`` and its generator: loaded once per process while its files stay
    the same (``Bundle.load`` checks them the first time)."""
    key = path.resolve()
    with _lock:
        try:
            stamp = _stamp(key)
        except OSError:  # vanished meanwhile: let Bundle.load say what is wrong
            stamp = None
        known = _loaded.get(key)
        if stamp is not None and known is not None and known[0] == stamp:
            return known[1]
        _loaded.pop(key, None)  # stale: its bots keep their own reference
        bundle = Bundle.load(path)
        loaded = LoadedModel(bundle, new_generator(bundle))
        if stamp is not None and _stamp(key) == stamp:  # not rewritten while it loaded
            _loaded[key] = (stamp, loaded)
        return loaded

