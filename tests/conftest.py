"""Shared fixtures: one tiny model trained once per test session (about a minute on 2 cores),
shared by the pytest-xdist workers of a run."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from chatbot import compile_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Two workers share two cores, and the tests' models are tiny: one intra-op thread each (also
# in the CLI's subprocesses, which inherit it) keeps them from fighting over the cores.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
# Compiled decode loops are kept on disk as `chatbot` keeps them, here for the tests of this
# user: the CLI's subprocesses and both workers load what one of them compiled (inherited
# through TF_XLA_FLAGS), and nothing is written to the home directory.
compile_cache.enable(Path(tempfile.gettempdir()) / f"chatbot-tests-xla-{os.getuid()}")

import pytest

from chatbot.config import Config

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
TINY_PAIRS = DATA / "tiny_pairs.tsv"


def tiny_config(**overrides) -> Config:
    """A model small enough to memorise 20 pairs in seconds."""
    base = {
        "tokenizer.level": "subword", "tokenizer.vocab_size": 300,
        "model.embedding_dim": 32, "model.units": 64, "model.attention": "dot",
        "training.epochs": 40, "training.batch_size": 10, "training.learning_rate": 0.02,
        "training.monitor": "loss", "training.patience": 15, "training.seed": 7,
        "data.validation_fraction": 0.0, "data.max_output_tokens": 40, "decoding.max_length": 40,
        # The decoder alone, as fast as it gets: tests of training, bundles and faults do not need
        # retrieval. The shared tiny model (``tiny_bundle_path``) reads retrieved pairs.
        "data.retrieved_pairs": 0, "data.noisy_copies": 0,
        # The tests were written against these (the defaults until the default recipe's became them).
        "data.substitute_words": False, "data.leave_out_own": 0.25, "training.lr_decay_patience": 3,
    }
    base.update(overrides)
    return Config().with_overrides(base)


def _train_tiny(out: Path) -> None:
    from chatbot.training.pipeline import train

    # Retrieve and refine, as the default recipe: two retrieved pairs and two noisy copies per
    # pair, enough mistyped questions to learn to copy what retrieval shows; 60 epochs, so that it
    # answers all 20 training questions exactly (40 left one of them garbled).
    config = tiny_config(**{"data.retrieved_pairs": 2, "data.noisy_copies": 2, "training.epochs": 60})
    train(TINY_PAIRS, config, out, verbose=0)


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory) -> Path:
    """The tiny model's bundle, read-only (copy it to change it). Under pytest-xdist, the first
    worker to need it trains it in the run's shared temporary directory while the others wait."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp("models") / "tiny"
        _train_tiny(out)
        return out
    shared = tmp_path_factory.getbasetemp().parent  # this run's, above each worker's own
    out = shared / "models" / "tiny"  # alone in its folder, as tests/test_training_and_bundle.py checks
    with open(shared / "tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if training fails
        if not (shared / "tiny.done").exists():
            _train_tiny(out)
            (shared / "tiny.done").touch()
    return out


@pytest.fixture(scope="session")
def tiny_bot(tiny_bundle_path):
    from chatbot.dialogue.bot import ChatBot

    return ChatBot.load(tiny_bundle_path)


@pytest.fixture(scope="session")
def tiny_pairs() -> list[tuple[str, str]]:
    return [tuple(line.split("\t")[:2]) for line in TINY_PAIRS.read_text().splitlines() if line]


@pytest.fixture
def bot(tiny_bot, tmp_path):
    """The tiny model with a fresh database per test (the model is shared, not reloaded)."""
    from chatbot.dialogue.bot import ChatBot

    b = ChatBot(tiny_bot.bundle, db=f"sqlite:///{tmp_path / 'chat.db'}", warm_up=False, generator=tiny_bot.generator)
    yield b
    b.close()


# Seconds each of the longest modules takes in a run (2 workers on 2 cores, measured with
# --durations=0; the rest take less). Among modules of the same kind the longest go first, so a
# worker is not left running a long one at the end while the other has nothing to do.
MODULE_SECONDS = {
    "test_model.py": 184, "test_retraining.py": 143, "test_resume_flags.py": 135, "test_transformer.py": 112,
    "test_faults.py": 96, "test_bot.py": 96, "test_distribute.py": 83, "test_decoding.py": 83,
    "test_training_and_bundle.py": 83, "test_evaluate.py": 64, "test_gates.py": 63, "test_fallback_choice.py": 37,
    "test_cli.py": 36, "test_serve.py": 32, "test_train_progress.py": 30, "test_repl.py": 29,
    "test_retrieval.py": 27, "test_web_page.py": 27, "test_serve_cli.py": 26, "test_lr_schedule.py": 25,
}


def pytest_collection_modifyitems(config, items):
    """The order modules run in (pytest-xdist, --dist loadfile, hands whole modules to its
    workers in this order): the first module that needs the tiny model, so that one worker
    trains it at once, then the modules that do not need it, which the other worker runs
    meanwhile, then the rest; the longest first within each (``MODULE_SECONDS``). Within a
    module, the order is the file's."""
    def needs_tiny(item) -> bool:
        return bool({"tiny_bundle_path", "tiny_bot", "bot"} & set(getattr(item, "fixturenames", ())))

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    tiny = [name for name, its in modules.items() if any(map(needs_tiny, its))]
    first = tiny[:1]
    rank = {name: 0 if name in first else 2 if name in tiny else 1 for name in modules}
    order = sorted(modules, key=lambda name: (rank[name], -MODULE_SECONDS.get(Path(name).name, 0)))
    items[:] = [item for name in order for item in modules[name]]
