"""``train(corpus, config, out)``: corpus -> tokenizer -> dataset -> fitted model -> bundle.

Training state lives in a hidden work directory beside the output (``.NAME.training/``):
the tokenizer and split fixed at the start, checkpoints to the step (``backup``), the best
weights and the CSV log. A kill at any moment leaves that directory resumable with
``resume=True`` and leaves the bundle at ``out`` untouched; the bundle is only written, atomically,
once training has finished.

On resume, the config given is compared with the saved one: the settings in ``RESUMABLE`` (the
length of the run, its stopping rules, dropout, decoding and dialogue) take their new values,
and a change to any other (the data, the tokenizer, the network's shapes, the optimizer state
kept in the checkpoints) is refused with a ``TrainingError`` naming them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from chatbot.config import Config, DialogueConfig, apply_dotted
from chatbot.data.corpus import Corpus, Example, load_corpus, loads_bounded
from chatbot.data.examples import CorpusSplit, split_corpus
from chatbot.data.noise import noisy
from chatbot.data.spelling import Speller, english_words, mostly_english, speller_for
from chatbot.data.tokenizer import ENCODE_CHUNK, TextTokenizer
from chatbot.errors import PlotError, TrainingError
from chatbot.evaluation.evaluate import exact_match
from chatbot.evaluation.golden import as_chatbot, check_golden, load_golden
from chatbot.evaluation.metrics import input_key, perplexity
from chatbot.inference.retrieval import AnswerMemory, memory_for
from chatbot.model.bundle import FORMAT_VERSION, Bundle, check_replaceable
from chatbot.training import distribute
from chatbot.version import __version__

log = logging.getLogger(__name__)

STATE = "state.json"
# The training summary's exact match replies to at most this many pairs of each split, chosen
# at random: every pair of a 100k-pair corpus would add many minutes to training.
SUMMARY_PAIRS = 2000
UNKNOWN_RATE_WARNING = 0.02  # above this share of unknown tokens, suggest a new vocabulary
UNKNOWN_RATE_TEXTS = 200_000  # the rate is measured on the first texts: a big corpus needs no full pass
LANGUAGE_SAMPLE = 20_000  # pairs read to tell whether a corpus is mostly English, for the fallback text
# What ``resume`` may change: settings read only after the saved state is restored. Every other
# one fixes what the checkpoints hold: the data and its split (data.*, training.seed,
# training.batch_size: steps per epoch, which a mid-epoch checkpoint counts in), the tokenizer,
# the network's shapes (model.* but dropout), or the optimizer state (training.learning_rate is
# restored from the checkpoint, decayed as it was) and the best weights so far (training.monitor).
# training.distribute only spreads the same global batches over devices and workers.
RESUMABLE = ("training.epochs", "training.early_stopping", "training.patience", "training.lr_decay_patience",
             "training.clipnorm", "training.checkpoint_every_steps", "training.checkpoint_every_minutes",
             "training.distribute", "model.dropout",
             "decoding.*", "dialogue.*")

COSINE_FLOOR = 0.01  # lr_schedule "cosine" ends near this fraction of the learning rate


def cosine_learning_rate(epoch: int, epochs: int, base: float) -> float:
    """The rate epoch ``epoch`` (from 0) trains with under ``training.lr_schedule = "cosine"``:
    Keras' cosine decay counted in epochs, from ``base`` at the first toward ``base`` x
    ``COSINE_FLOOR`` after the last. A function of the epoch alone, so a resumed training goes
    on where it was."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(base, decay_steps=max(epochs, 1), alpha=COSINE_FLOOR)
    return float(keras.ops.convert_to_numpy(schedule(epoch)))


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


@dataclass
class Plan:
    """Everything a run decided before fitting: the data, its split, the tokenizer, the base."""

    config: Config
    corpus: Corpus
    out: Path  # where the bundle is installed
    split: CorpusSplit  # the corpus' examples, read again from its files when the corpus is big
    train: Iterable[Example]  # re-iterable, with a len(): a list, or the split's ``Examples``
    validation: list[Example]
    reference: list[Example] | None  # every accepted answer, for exact match; None: the corpus'
    new_pairs: Iterable[Example]  # the corpus' own training pairs (mixed-in ones left out)
    tokenizer: TextTokenizer | None = None
    base: Bundle | None = None
    mix_base_corpus: bool = False
    rebuild_vocab: bool = False
    memory: AnswerMemory | None = None  # what retrieval searches, built with the datasets
    speller: Speller | None = None  # the spelling normalisation of data.spelling, likewise
    # A work directory of its own: a non-chief worker's (distribute.Cluster.private), a dry run's
    private_work: Path | None = None
    epoch: int = 0  # the epoch ``fit`` is in: each epoch's order of the training batches is drawn from it

    @property
    def work(self) -> Path:
        """The hidden work directory beside ``out`` that holds the resumable training state
        (a non-chief worker writes its copy of it to ``private_work`` instead, a dry run its own)."""
        return self.private_work or work_dir_for(self.out)

    @property
    def fine_tuning(self) -> bool:
        return self.base is not None and not self.rebuild_vocab


def train(corpus: str | Path | Corpus, config: Config, out: str | Path, resume: bool = False,
          verbose: int = 0, extra_callbacks: list | None = None,
          on_stage: Callable[[str], None] | None = None, base: str | Path | Bundle | None = None,
          mix_base_corpus: bool = False, rebuild_vocab: bool = False,
          golden: str | Path | None = None) -> Bundle | None:
    """Train a model and save it as a bundle at ``out``; returns the saved bundle. ``verbose``:
    Keras' progress on stdout (0, the default: none; 1: a bar; 2: a line per epoch).

    Fine-tuning: with ``base`` (a bundle or its path), training starts from that model's
    weights and keeps its tokenizer, so ``config`` must keep its tokenizer and model
    sections. ``mix_base_corpus`` adds the base model's own training pairs (its validation
    pairs stay held out), so the new model does not forget what the old one knew.
    ``rebuild_vocab`` fits a new tokenizer and starts from fresh weights instead, for a
    corpus that the base vocabulary does not cover.

    ``golden``: a file of question -> expected answer checks (see ``golden.load_golden``).
    A model that fails any is not installed at ``out`` (an existing bundle there stays);
    it is saved beside it as ``OUT.rejected`` and ``GoldenCheckFailed`` is raised.

    ``config.training.distribute`` (``distribute.py``): under ``multi-worker``, every worker calls
    this with the same arguments; only the chief writes the work directory, measures the model
    and installs the bundle; the others return None once it has.
    """
    stage = on_stage or (lambda message: log.info(message))
    out = Path(out)
    check_replaceable(out)  # before any work: what --out names must be a bundle, or nothing
    golden_cases = load_golden(golden) if golden is not None else None  # a bad file fails now
    config = config.validate()
    cluster = distribute.start(config.training.distribute)  # before TensorFlow runs anything
    stack = contextlib.ExitStack()
    try:
        if cluster.chief:
            stack.enter_context(_output_lock(out))
        plan = plan_run(corpus, config, out, resume, base, mix_base_corpus, rebuild_vocab, stage, cluster)
        unknown_rate = prepare_tokenizer(plan, stage) if cluster.chief else 0.0
        cluster.barrier()  # the chief has restored or cleared the work directory and fixed the tokenizer
        if not cluster.chief:
            plan.tokenizer = TextTokenizer.load(work_dir_for(out) / "tokenizer.json")
            distribute.share_backup(cluster, work_dir_for(out))
        model, train_set, val_set = build(plan, stage, cluster)
        history, seconds = fit(model, train_set, val_set, plan, resume, verbose, extra_callbacks, cluster)
        if not cluster.chief:
            cluster.barrier()  # a worker that left now would abort the chief's measurements
            return None
        try:
            if cluster.multi_worker:  # the mirrored model would wait for the others at each step
                model = _local_copy(model, plan)
            stage("measuring the trained model")
            bundle = assemble(model, plan, history, seconds, unknown_rate, val_set)
            return install(bundle, plan, golden, golden_cases)
        finally:
            cluster.barrier()  # the other workers may leave
    finally:
        stack.close()
        cluster.close()


@dataclass(frozen=True)
class DryRun:
    """What ``dry_run`` found: the training ``train`` would run with the same arguments."""

    pairs: int  # the corpus' examples
    train: int  # training pairs (mixed-in ones included)
    validation: int
    skipped_entries: int  # malformed corpus entries left out, each warned of
    vocabulary: int
    unknown_token_rate: float  # in the corpus' own training pairs
    training_inputs: int  # what an epoch trains on: noisy copies and retrieval included
    parameters: int


def dry_run(corpus: str | Path | Corpus, config: Config, out: str | Path, *,
            on_stage: Callable[[str], None] | None = None, base: str | Path | Bundle | None = None,
            mix_base_corpus: bool = False, rebuild_vocab: bool = False,
            golden: str | Path | None = None) -> DryRun:
    """``train``'s checks and steps up to its first batch, with the same warnings and errors:
    the corpus read and split, the tokenizer fitted, the training inputs encoded, the network
    built. For a mistake found in seconds rather than after an hour of training. The steps run
    in a temporary directory (``$TMPDIR``; a big corpus' encoded inputs take as much room there
    as in a training's work directory), removed at the end: nothing at ``out`` or in its work
    directory is touched or trained."""
    stage = on_stage or (lambda message: log.info(message))
    out = Path(out)
    check_replaceable(out)
    if golden is not None:
        load_golden(golden)
    config = config.validate()
    if config.training.distribute == "multi-worker":
        distribute.read_tf_config(os.environ.get("TF_CONFIG"))  # what ``distribute.start`` reads first
    _check_writable(out.parent)
    _check_not_busy(out)
    if work_dir_for(out).exists():
        log.warning("a training of %s would discard the unfinished training in %s (--resume continues it)",
                    out, work_dir_for(out))
    with tempfile.TemporaryDirectory(prefix="chatbot-dry-run-") as scratch:
        plan = plan_run(corpus, config, out, False, base, mix_base_corpus, rebuild_vocab, stage,
                        work=Path(scratch) / "work")
        unknown_rate = prepare_tokenizer(plan, stage)
        model, _, _ = build(plan, stage)
        inputs = token_cache(plan, stage).count
    return DryRun(plan.split.total, len(plan.train), len(plan.validation), len(plan.corpus.skipped),
                  plan.tokenizer.vocab_size, round(unknown_rate, 5), inputs, model.count_params())


def _check_writable(folder: Path) -> None:
    """What a training would meet first when it makes ``folder`` (for its lock and work
    directory): the nearest existing folder must take a new entry (tried with an empty one,
    removed at once; permission bits cannot tell, root may write anywhere but /proc)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".chatbot-dry-run-", dir=existing))
    except OSError as exc:
        raise TrainingError(f"{folder}: cannot write there ({_os_reason(exc)})") from None


def _check_not_busy(out: Path) -> None:
    """The refusal of ``_output_lock``, without taking the lock or making its file."""
    try:
        import fcntl

        with open(_lock_path(out), "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as the file closes
    except (ImportError, FileNotFoundError, PermissionError):
        return  # not POSIX, no lock file, or none we may read: nothing tells
    except BlockingIOError:
        raise _busy(out) from None


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _busy(out: Path) -> TrainingError:
    return TrainingError(f"{out}: another training is writing this model now (it holds {_lock_path(out)}); "
                         "wait for it to end, or train into another --out")


@contextlib.contextmanager
def _output_lock(out: Path):
    """Held while a training writes ``out`` and its work directory: a second training of the
    same ``out`` would discard the first one's work directory under it. An advisory lock on
    ``.OUT.lock`` beside it (POSIX ``flock``; released by the system when the process dies),
    removed by its holder; a lock taken on a file that was removed meanwhile does not count."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = _lock_path(out)
    busy = _busy(out)
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(lock_path).st_ino != os.fstat(handle.fileno()).st_ino:
                raise BlockingIOError  # the holder removed it between our open and our lock
        except (BlockingIOError, FileNotFoundError):
            raise busy from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # still held: no one can take the old file now


def plan_run(corpus, config: Config, out: Path, resume: bool, base, mix_base_corpus: bool,
             rebuild_vocab: bool, stage: Callable[[str], None], cluster: distribute.Cluster | None = None,
             work: Path | None = None) -> Plan:
    """Step 1: read the corpus, restore or start the work directory (``work``, else the one
    beside ``out``), split the examples. Only the chief clears the work directory; a resuming
    worker reads the chief's saved state."""
    import keras  # deferred so that importing the package stays fast

    cluster = cluster or distribute.Cluster()
    own_work = work or cluster.private
    work = work or work_dir_for(out)
    corpus_obj = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, in_memory=False)
    if base is not None and not isinstance(base, Bundle):
        base = Bundle.load(base)
    tokenizer = None
    changes: list[str] = []
    if resume:
        state = _read_state(work)
        _check_same_format(state, work)
        _check_same_run(state, base, mix_base_corpus, rebuild_vocab, work)
        if base is None and state.get("base"):  # the same fine-tuning, even without --from
            base = Bundle.load(state["base"])
        mix_base_corpus = state.get("mix_base_corpus", mix_base_corpus)
        rebuild_vocab = state.get("rebuild_vocab", rebuild_vocab)
        if state.get("corpus_sha256") != corpus_obj.sha256:
            raise TrainingError(f"{work}: the corpus changed since this training started; "
                                "train again without --resume")
        changes = resume_changes(state["config"], config, work)  # refuses what may not change
        tokenizer = TextTokenizer.load(work / "tokenizer.json")
        from chatbot.training.backup import checkpoint_in

        saved = checkpoint_in(work / "backup")
        where = ("" if saved is None else f", stopped early after epoch {saved.epoch}: measuring it" if saved.stopped
                 else f" at step {saved.steps + 1} of epoch {saved.epoch + 1}" if saved.steps
                 else f" at epoch {saved.epoch + 1}")
        stage(f"resuming training in {work}{where}")
        if changes:
            stage(f"resuming with changed settings: {', '.join(changes)}")
    elif cluster.chief:
        if base is not None and not rebuild_vocab:
            _check_same_architecture(base, config)  # a refused fine-tuning leaves no work directory
        if work.exists():
            log.warning("discarding the unfinished training in %s", work)
            shutil.rmtree(work)
        work.mkdir(parents=True)
    if base is not None and not rebuild_vocab:
        _check_same_architecture(base, config)

    keras.utils.set_random_seed(config.training.seed)
    data = config.data
    split = split_corpus(corpus_obj.dialogues, data.context_turns, data.deduplicate, data.split_by,
                         data.validation_fraction, config.training.seed)
    plan = Plan(config, corpus_obj, out, split, split.train, split.validation, None, split.train,
                tokenizer, base, mix_base_corpus, rebuild_vocab, private_work=own_work)
    if changes and cluster.chief:
        _write_state(plan)  # a later resume continues with the changed settings
    if data.validation_fraction > 0 and not split.validation:
        log.warning("data.validation_fraction %s of %d pairs holds out none: training without validation",
                    data.validation_fraction, len(split.train))
    if config.training.monitor.startswith("val_") and not split.validation and not (base and mix_base_corpus):
        log.warning("training.monitor %s needs validation pairs; monitoring loss instead", config.training.monitor)
    if base is not None and mix_base_corpus:
        old = base.training_examples()
        held_out = {_pair(e) for e in base.validation}
        examples = list(split.every_example())
        known = {_pair(e) for e in examples}
        plan.train = list(plan.train) + [e for e in old if _pair(e) not in held_out | known]
        plan.validation += [e for e in base.validation if _pair(e) not in known]
        plan.reference = examples + [e for e in old if _pair(e) not in known]
        stage(f"mixing in {len(old)} pairs of {base.name}'s corpus ({len(held_out)} of them held out)")
    return plan


def prepare_tokenizer(plan: Plan, stage: Callable[[str], None]) -> float:
    """Step 2: the base model's tokenizer, the one saved in the work directory, or a new one
    fitted on the training split. Returns the new pairs' unknown-token rate."""
    config = plan.config
    if plan.tokenizer is None:
        if plan.fine_tuning:
            plan.tokenizer = plan.base.tokenizer
        else:
            stage(f"fitting a {config.tokenizer.level} tokenizer on {len(plan.train)} training pairs")
            plan.tokenizer = TextTokenizer.fit(_texts(plan.train), config.tokenizer.level,
                                               config.tokenizer.vocab_size, config.tokenizer.min_frequency)
        plan.tokenizer.save(plan.work / "tokenizer.json")
        _write_state(plan)
    unknown_rate = plan.tokenizer.unknown_rate(itertools.islice(_texts(plan.new_pairs), UNKNOWN_RATE_TEXTS))
    if plan.fine_tuning:
        stage(f"fine-tuning {plan.base.name} ({plan.base.path}); unknown tokens in the new training pairs: "
              f"{unknown_rate:.1%}")
        if unknown_rate > UNKNOWN_RATE_WARNING:
            log.warning("%.1f%% of the new corpus' tokens are unknown to %s's vocabulary: "
                        "consider --rebuild-vocab", unknown_rate * 100, plan.base.name)
    return unknown_rate


def build(plan: Plan, stage: Callable[[str], None], cluster: distribute.Cluster | None = None):
    """Step 3: the tf.data pipelines and the compiled network (from the base's weights when
    fine-tuning), built in the strategy's scope. Returns (model, train set, validation set or None)."""
    from chatbot.data.dataset import encode_examples, make_dataset, stream_dataset
    from chatbot.model.network import build_model, compile_model

    cluster = cluster or distribute.Cluster()
    config, tokenizer, data = plan.config, plan.tokenizer, plan.config.data
    if data.retrieved_pairs and not tokenizer.reads_retrieval:
        raise TrainingError("data.retrieved_pairs needs a tokenizer with retrieval markers; this one "
                            "predates them: use --rebuild-vocab, or --set data.retrieved_pairs=0")
    if data.retrieved_pairs or data.noisy_copies:  # these read the training pairs as a whole
        plan.train = plan.train if isinstance(plan.train, list) else list(plan.train)
    _warn_of_cut_answers(plan)
    plan.speller = speller_for(data, plan.train)
    if data.spelling and plan.speller is None and english_words():
        log.warning("data.spelling is on, but most of the corpus' words are not English (the one language "
                    "with a word list): questions are read as typed, not corrected")
    # A speller is only made for a mostly English corpus: the corpus' words are counted again
    # only without one.
    if (data.retrieved_pairs and data.retriever == "hybrid" and plan.train and plan.speller is None
            and not mostly_english(plan.train)):
        # all-MiniLM-L6-v2 knows English: it called different Hindi, Arabic or Japanese questions
        # alike (cosine 0.5-0.8; English ones 0.19), and the model was shown unrelated pairs as near.
        log.warning("data.retriever is hybrid, but most of the corpus' words are not English, the one "
                    "language of its sentence encoder: retrieving by edit distance alone (lexical)")
        plan.config = config = config.with_overrides({"data.retriever": "lexical"})
        data = config.data
    if (config.dialogue.fallback_text == DialogueConfig().fallback_text and plan.speller is None and english_words()
            and not mostly_english(itertools.islice(plan.train, LANGUAGE_SAMPLE))):
        log.warning("dialogue.fallback_text is English, but most of the corpus' words are not: the bot would say "
                    "it to users who write in the corpus' language (set it with --set dialogue.fallback_text=..., or "
                    "after training with chatbot models set MODEL dialogue.fallback_text=...)")
    plan.memory = memory_for(data, plan.train)
    if plan.memory is not None:
        stage(f"answer memory: {len(plan.memory)} questions, {data.retriever} retrieval")
    cache = token_cache(plan, stage)
    stage(f"{cache.count} training inputs from {len(plan.train)} pairs "
          f"({data.noisy_copies} noisy copies each, retrieval {'on' if data.retrieved_pairs else 'off'})")
    if cache.count > data.shuffle_window:
        stage(f"streaming the training inputs from {cache.folder} in shuffled windows of {data.shuffle_window:,}")
        train_set = stream_dataset(cache, config.training.batch_size, data.shuffle_window, config.training.seed,
                                   vocab_size=tokenizer.vocab_size, max_cells=config.training.max_batch_cells,
                                   epoch_of=lambda: plan.epoch)
    else:
        train_set = make_dataset(cache.read("sources"), cache.read("targets"), config.training.batch_size,
                                 shuffle=True, seed=config.training.seed, vocab_size=tokenizer.vocab_size,
                                 max_cells=config.training.max_batch_cells, epoch_of=lambda: plan.epoch)
    val_set = None
    if plan.validation:
        validation = [dataclasses.replace(e, question=spelled(plan, e.question)) for e in plan.validation]
        shown = (plan.memory.retrieve_each([e.question for e in validation], data.retrieved_pairs)
                 if plan.memory is not None else None)
        val_src, val_tgt = encode_examples(validation, tokenizer, data.max_input_tokens,
                                           data.max_output_tokens, shown, data.max_retrieved_answer_tokens)
        val_set = make_dataset(val_src, val_tgt, config.training.batch_size, vocab_size=tokenizer.vocab_size,
                               max_cells=config.training.max_batch_cells)
    if cluster.strategy is not None:  # batch_size is the global batch, split between the replicas
        train_set = distribute.shard_by_data(train_set)
        val_set = distribute.shard_by_data(val_set) if val_set is not None else None

    with cluster.scope():
        model = build_model(tokenizer.vocab_size, config.model, data.max_output_tokens)
        compile_model(model, config.training.learning_rate, config.training.clipnorm, config.training.ema_momentum)
        # The weights, the optimizer's slots and the metrics' variables are made now, from the
        # data's shapes by one symbolic call (no batch is read, no eager pass: 0.6 s of a tiny
        # training). Keras otherwise makes the slots and metrics inside the first trace of the
        # train step (under a strategy it builds from a batch averaged over the replicas, which
        # fails across workers), and TensorFlow then traces that step a second time: about 1 s
        # of a 3-epoch tiny model's 9 s on 2 cores.
        model._symbolic_build(data_batch=train_set.element_spec)
        if plan.fine_tuning:
            model.set_weights(plan.base.model.get_weights())  # resume=True then restores its own backup
    distribute.adapt(model, cluster)
    stage(f"model: {config.model.summary()}, {model.count_params():,} parameters, "
          f"vocabulary {tokenizer.vocab_size}")
    return model, train_set, val_set


def token_cache(plan: Plan, stage: Callable[[str], None]):
    """The training inputs, encoded once into a ``TokenCache`` in the work directory (found
    again by a resumed training, keyed by everything that decides them)."""
    from chatbot.data.dataset import encoded_rows
    from chatbot.data.token_cache import TokenCache, cache_key

    config, data = plan.config, plan.config.data
    key = cache_key(__version__, plan.corpus.sha256, plan.tokenizer.to_json(), config.to_dict()["data"],
                    config.training.seed, str(plan.base.path) if plan.base is not None else None,
                    plan.mix_base_corpus, plan.rebuild_vocab)
    folder = plan.work / "tokens"
    cache = TokenCache.open(folder, key)
    if cache is None:
        stage(f"encoding the training inputs into {folder}")
        cache = TokenCache.build(folder, key, encoded_rows(training_inputs(plan), plan.tokenizer, data.max_input_tokens,
                                                           data.max_output_tokens, data.max_retrieved_answer_tokens))
    return cache


def _warn_of_cut_answers(plan: Plan) -> None:
    """Say how many training answers are longer than the model may generate: they are learned
    cut at ``data.max_output_tokens`` (with [END]), and replies to them will stop there too, or
    at ``decoding.max_length`` when that is shorter. And, for a bot that answers from its pairs
    (retrieval on), how many held-out answers no training pair has: it can never give those."""
    data, decoding = plan.config.data, plan.config.decoding
    limit = data.max_output_tokens - 1
    cut = long = 0
    first_cut = first_long = None
    unseen = {e.answer: e.source for e in plan.validation} if data.retrieved_pairs else {}
    examples = iter(plan.train)
    while chunk := list(itertools.islice(examples, ENCODE_CHUNK)):
        for example, ids in zip(chunk, plan.tokenizer.encode_batch([e.answer for e in chunk])):
            unseen.pop(example.answer, None)
            if len(ids) > limit:
                cut += 1
                first_cut = first_cut or example.source
            elif len(ids) > decoding.max_length:
                long += 1
                first_long = first_long or example.source
    if cut:
        log.warning("%d training answer%s longer than data.max_output_tokens (%d tokens with [END]) and "
                    "learned cut there (first: %s)", cut, "s are" if cut > 1 else " is", limit + 1, first_cut)
    if long:
        log.warning("%d training answer%s longer than decoding.max_length (%d tokens): replies stop there "
                    "(first: %s); raise decoding.max_length to %d", long, "s are" if long > 1 else " is",
                    decoding.max_length, first_long, limit)
    if unseen:
        log.warning("%d of %d held-out pairs have an answer no training pair has (first: %s): the bot cannot "
                    "give it; for a corpus answered as written (an FAQ), train with --validation-fraction 0",
                    sum(e.answer in unseen for e in plan.validation), len(plan.validation),
                    next(iter(unseen.values())))


def training_inputs(plan: Plan) -> Iterator[tuple[Example, tuple]]:
    """(example, what retrieval showed) for every training input: ``augment``'s, or, without
    retrieval and noise, each pair as the model reads it, streamed from the corpus."""
    if plan.memory is not None or plan.config.data.noisy_copies:
        yield from zip(*augment(plan))
        return
    for example in plan.train:
        yield dataclasses.replace(example, question=spelled(plan, example.question)), ()


def augment(plan: Plan) -> tuple[list[Example], list[tuple]]:
    """The training inputs, as the model will meet them: each pair's question as written and
    in ``data.noisy_copies`` seeded noisy variants, each once alone (the decoder must answer
    without help) and, with retrieval, once beside what retrieval finds for it. A share
    ``data.leave_out_own`` of those leave the pair itself out of what is shown, so the model
    learns both to trust a close retrieved answer and to answer when none fits."""
    data = plan.config.data
    rng = random.Random(plan.config.training.seed)
    memory = plan.memory
    # Stand-ins for synonyms: the training questions' own words (see ``noisy``).
    substitutes = sorted({word for example in plan.train for word in example.question.split()
                          if any(ch.isalpha() for ch in word)}) if data.substitute_words else ()
    variants = [(example, spelled(plan, question)) for example in plan.train
                for question in [example.question] + [noisy(example.question, rng, substitutes)
                                                      for _ in range(data.noisy_copies)]]
    vectors = memory.embed([question for _, question in variants]) if memory is not None else []
    examples: list[Example] = []
    shown: list[tuple] = []
    for number, (example, question) in enumerate(variants):
        variant = dataclasses.replace(example, question=question)
        examples.append(variant)
        shown.append(())
        if memory is not None:
            exclude = example.question if rng.random() < data.leave_out_own else None
            examples.append(variant)
            shown.append(tuple(memory.retrieve(question, data.retrieved_pairs, exclude=exclude,
                                               prefer=example.answer, vector=vectors[number])))
    return examples, shown


def spelled(plan: Plan, text: str) -> str:
    """``text`` as the model will read it (``data.spelling``), in training as at reply time."""
    return plan.speller.correct(text) if plan.speller is not None else text


def fit(model, train_set, val_set, plan: Plan, resume: bool, verbose: int, extra_callbacks: list | None,
        cluster: distribute.Cluster | None = None):
    """Step 4: ``model.fit`` with checkpoints (resumable), the CSV and TensorBoard logs, LR decay
    and early stopping; the best weights are loaded back. Returns (history, seconds)."""
    import keras
    import tensorflow as tf

    from chatbot.training.backup import Backup, MovingAverageSwap, OneTraining, unfinished

    training = plan.config.training
    monitor = training.monitor if val_set is not None else "loss"
    best_weights = plan.work / "best.weights.h5"
    log_file = plan.work / "training_log.csv"
    best_so_far = best_in_log(log_file, monitor) if resume else None
    swap = MovingAverageSwap() if training.ema_momentum else None
    backup = Backup(plan.work / "backup", training.checkpoint_every_steps, swap,
                    every_seconds=checkpoint_seconds(training, cluster))
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor=monitor, save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(log_file), append=resume),
        keras.callbacks.TensorBoard(str(plan.work / "tensorboard"), write_graph=False, profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
        # Before the epoch's data is read: its order is drawn from the epoch, also when resumed.
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: setattr(plan, "epoch", epoch)),
    ]
    if swap is not None:  # before the best-weights file: the average is what the bundle keeps
        callbacks.insert(0, swap)
    if training.lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, _: cosine_learning_rate(epoch, training.epochs, training.learning_rate)))
    elif training.lr_decay_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=training.lr_decay_patience, min_lr=1e-5))
    if training.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=training.patience))
    counters = [c for c in callbacks if isinstance(c, (keras.callbacks.ReduceLROnPlateau, keras.callbacks.EarlyStopping))]
    if resume and counters:  # after them: their on_train_begin resets them
        from chatbot.training.counters import ResumedCounters

        callbacks.append(ResumedCounters(log_file, counters, training.learning_rate))
    # The epoch's checkpoint last (Keras calls callbacks in order): a run killed before it
    # repeats the epoch, logged twice and counted once (``logged_history``).
    callbacks.append(backup)
    callbacks.extend(extra_callbacks or [])

    saved = backup.restore(model)  # a worker's copy of the chief's too (``distribute.share_backup``)
    first_epoch, steps_done = (saved.epoch, saved.steps) if saved is not None else (0, 0)
    # (data, first epoch, end): a checkpoint within an epoch resumes with the rest of its batches
    fits = [(train_set, first_epoch, training.epochs)]
    if saved is not None and saved.stopped:  # early stopping ended it; killed before the bundle was written
        fits = []
        model.optimizer.finalize_variable_values(model.trainable_weights)  # as the end of its fit did
    elif steps_done and first_epoch < training.epochs:
        fits = [(train_set.skip(steps_done), first_epoch, first_epoch + 1), (train_set, first_epoch + 1, training.epochs)]
        steps_per_epoch = int(train_set.cardinality())
        if verbose and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
            callbacks.append(keras.callbacks.ProgbarLogger())  # Keras' own would count the fit's epochs and steps
        callbacks = [OneTraining(callbacks, first_epoch, steps_done, training.epochs,
                                 steps_per_epoch if steps_per_epoch >= 0 else None, verbose)]
        verbose = 0  # the bar is inside
    began = time.perf_counter()
    histories = []
    try:
        for number, (data, initial_epoch, epochs) in enumerate(fits):
            last = number == len(fits) - 1
            with contextlib.nullcontext() if last else unfinished(model):
                histories.append(model.fit(data, validation_data=val_set, initial_epoch=initial_epoch, epochs=epochs,
                                           callbacks=callbacks, verbose=verbose, shuffle=False))  # tf.data shuffles
            if model.stop_training and not last:  # stopped early: end as that fit would have
                model.optimizer.finalize_variable_values(model.trainable_weights)
                break
        if isinstance(callbacks[0], OneTraining):
            callbacks[0].finish()
    except OSError as exc:  # a checkpoint or log could not be written: disk full, quota, permissions
        kept = f"the model at {plan.out} is unchanged; " if plan.out.exists() else ""
        raise TrainingError(f"cannot write the training state in {plan.work} ({_os_reason(exc)}); {kept}"
                            "make room, then run the same command with --resume") from exc
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as exc:
        if cluster is None or not cluster.multi_worker:
            raise
        reason = (exc.message or type(exc).__name__).strip().splitlines()[0]
        raise TrainingError(f"the multi-worker training lost a worker ({reason}); its state is kept in "
                            f"{work_dir_for(plan.out)}: start every worker again with --resume") from None
    seconds = time.perf_counter() - began
    if best_weights.exists():
        model.load_weights(best_weights)
    return _joined(histories), seconds


def checkpoint_seconds(training, cluster: distribute.Cluster | None) -> float:
    """The seconds between checkpoints within an epoch (0: none by time). Workers of a
    multi-worker training must checkpoint at the same steps, and their clocks would not agree:
    with the chief alone checkpointing by time, the other worker failed within the first
    epoch and the chief stalled."""
    return 0.0 if cluster is not None and cluster.multi_worker else training.checkpoint_every_minutes * 60


def _joined(histories: list):
    """One ``History`` of consecutive ``fit`` calls (none: a training resumed after it had stopped early)."""
    import keras

    if len(histories) == 1:
        return histories[0]
    joined = keras.callbacks.History()
    joined.epoch = [epoch for history in histories for epoch in history.epoch]
    keys = dict.fromkeys(key for history in histories for key in history.history)
    joined.history = {key: [v for history in histories for v in history.history.get(key, [])] for key in keys}
    return joined


def _local_copy(model, plan: Plan):
    """The trained network outside the strategy, compiled alike: the chief measures it alone."""
    from chatbot.model.network import build_model, compile_model

    config = plan.config
    local = build_model(plan.tokenizer.vocab_size, config.model, config.data.max_output_tokens)
    local.build_for_inference()
    compile_model(local, config.training.learning_rate, config.training.clipnorm)
    local.set_weights(model.get_weights())
    return local


def assemble(model, plan: Plan, history, seconds: float, unknown_rate: float, val_set) -> Bundle:
    """Step 5: an inference-only copy of the network in a bundle, with its figures: the
    training history, validation loss, and exact match measured as the bot will reply."""
    from chatbot.model.network import build_model, token_figures

    config, tokenizer = plan.config, plan.tokenizer
    final = build_model(tokenizer.vocab_size, config.model, config.data.max_output_tokens)  # no optimizer state
    final.build_for_inference()
    final.set_weights(model.get_weights())
    every_epoch = logged_history(plan.work / "training_log.csv") or history.history
    metrics = {
        "epochs_run": len(history.history.get("loss", [])),  # by this process: after a resume, the rest
        "train_seconds": round(seconds, 1),  # likewise
        # every epoch the weights went through, also those before a resume
        "epochs": len(every_epoch.get("loss", [])),
        "unknown_token_rate": round(unknown_rate, 5),
        "history": {k: [round(float(v), 5) for v in vs] for k, vs in every_epoch.items()},
    }
    if val_set is not None:
        val_loss, val_acc = token_figures(model, val_set)
        metrics["validation"] = {"loss": round(float(val_loss), 5),
                                 "perplexity": round(perplexity(val_loss), 3),
                                 "token_accuracy": round(float(val_acc), 5)}
    corpus_info = {"path": plan.corpus.name or str(plan.corpus.root), "sha256": plan.corpus.sha256,
                   "examples": plan.split.total, "train": len(plan.train), "validation": len(plan.validation),
                   "skipped_entries": len(plan.corpus.skipped)}
    if plan.base is not None:
        base = plan.base
        corpus_info["base_model"] = {"name": base.name, "path": str(base.path), "created": base.manifest.get("created"),
                                     "mixed_in": plan.mix_base_corpus, "rebuilt_vocab": plan.rebuild_vocab,
                                     "corpus": base.corpus}
    vectors = None
    if plan.memory is not None and plan.memory.vectors is not None:
        vectors = (plan.memory.vectors, plan.memory.fingerprint)
    # The training pairs travel with the model only when replies read them (the answer memory,
    # the spelling vocabulary): 100k chit-chat pairs would outweigh the weights.
    keep_train = config.data.retrieved_pairs > 0 or config.data.spelling
    bundle = Bundle(config, tokenizer, final, metrics, corpus=corpus_info, validation=plan.validation,
                    train=list(plan.train) if keep_train else [], question_vectors=vectors)
    # The public reply path, greedy whatever the recipe's decoding: the summary judges the
    # network (a beam's retrieval bonus could lift a weak one), and greedy is the fast judge
    # (beam 8 took over 4 minutes on the transformer recipe's 1,176 pairs).
    greedy = {"strategy": "greedy"}
    seed = config.training.seed
    train_sample, validation_sample = _sample(plan.train, SUMMARY_PAIRS, seed), _sample(plan.validation, SUMMARY_PAIRS, seed)
    reference = reference_for(plan, train_sample + validation_sample)
    with as_chatbot(bundle) as bot:
        metrics["train_exact_match"] = round(exact_match(bot, train_sample, reference, greedy), 5)
        if plan.validation:
            metrics["validation"]["exact_match"] = round(exact_match(bot, validation_sample, reference, greedy), 5)
    if len(plan.train) > SUMMARY_PAIRS:
        metrics["exact_match_sample"] = SUMMARY_PAIRS
    return bundle


def _sample(examples: Iterable[Example], size: int, seed: int) -> list[Example]:
    """At most ``size`` of ``examples`` (re-iterable, with a len()), a seeded random choice in their order."""
    if len(examples) <= size:
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), size))
    return [e for i, e in enumerate(examples) if i in keep]


def reference_for(plan: Plan, examples: list[Example]) -> list[Example]:
    """Every accepted answer of the inputs of ``examples``, for exact match: read again from the
    corpus, so that a big one is not held in memory for a sample of it."""
    if plan.reference is not None:
        return plan.reference
    wanted = {input_key(e) for e in examples}
    return [e for e in plan.split.every_example() if input_key(e) in wanted]


def install(bundle: Bundle, plan: Plan, golden, golden_cases) -> Bundle:
    """Step 6: the golden checks (a failing model goes to ``OUT.rejected``), then the bundle is
    written atomically at ``plan.out`` and the work directory removed."""
    out = plan.out
    log_file = plan.work / "training_log.csv"
    attachments = {"tensorboard": plan.work / "tensorboard"}
    if _plot_history(log_file, plan.work / "training.png", out.name):
        attachments["training.png"] = plan.work / "training.png"
    if golden_cases is not None:
        checked = check_golden(bundle, golden_cases)
        bundle.metrics["golden"] = {"file": str(golden), "passed": len(checked.passed),
                                    "failed": len(checked.failed)}
        if not checked.ok:
            rejected = out.parent / f"{out.name}.rejected"
            bundle.save(rejected, training_log=log_file, attachments=attachments)
            shutil.rmtree(plan.work, ignore_errors=True)
            first = checked.failed[0]
            raise GoldenCheckFailed(
                f"the new model fails {len(checked.failed)} of {len(golden_cases)} golden checks "
                f"(first: {first.summary()}); "
                + (f"{out} was left as it was; " if out.exists() else "")
                + f"the new model is in {rejected}", checked)
    bundle.save(out, training_log=log_file, attachments=attachments)
    shutil.rmtree(plan.work, ignore_errors=True)
    return bundle


class GoldenCheckFailed(TrainingError):
    """A newly trained model failed its golden checks and was not installed."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # CSVLogger writes "NA" for a value an epoch lacked
        return float("nan")


def logged_epochs(log_file: Path) -> dict[int, dict[str, float]]:
    """Each logged epoch's figures, by epoch number; an epoch logged twice (killed after its row
    was written, before its checkpoint) as last run. {} without a log."""
    if not log_file.exists():
        return {}
    with open(log_file, newline="") as f:
        rows = {row.get("epoch"): row for row in csv.DictReader(f)}
    return {int(epoch): {key: _number(value) for key, value in row.items() if key != "epoch"}
            for epoch, row in rows.items() if epoch is not None and epoch.isdigit()}


def logged_history(log_file: Path) -> dict[str, list[float]]:
    """Every epoch's figures from the CSV log, also those before a ``--resume`` (Keras'
    ``History`` holds only the epochs of its own process); an epoch logged twice (killed after
    its row was written, before its checkpoint) counts once, as last run. {} without a log."""
    rows = list(logged_epochs(log_file).values())
    history = {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}
    return {key: values for key, values in history.items() if not all(math.isnan(v) for v in values)}


def _plot_history(log_file: Path, out_png: Path, title: str) -> bool:
    """training.png from the CSV log (every epoch, also those before a resume); matplotlib
    is optional, so without it there is simply no plot."""
    from chatbot.evaluation.plots import plot_training_history

    history = logged_history(log_file)
    if not history:
        return False
    try:
        plot_training_history(history, out_png, title=title)
    except PlotError as exc:
        log.info("no training plot: %s", exc)
        return False
    return True


def _check_same_architecture(base: Bundle, config: Config) -> None:
    """Continuing from a model's weights needs the same tokenizer and layer shapes."""
    for section in ("tokenizer", "model"):
        ours, theirs = getattr(config, section), getattr(base.config, section)
        for key, value in ours.__dict__.items():
            if key != "dropout" and getattr(theirs, key) != value:
                raise TrainingError(f"fine-tuning {base.name} keeps its {section} settings, but "
                                    f"{section}.{key} is {value!r} here and {getattr(theirs, key)!r} in the "
                                    "base model; drop the override or use --rebuild-vocab to train afresh")


def resumable(key: str) -> bool:
    """Whether a dotted config key may change when a training is resumed (``RESUMABLE``)."""
    return key in RESUMABLE or f"{key.partition('.')[0]}.*" in RESUMABLE


def saved_config(out: str | Path, overrides: dict | None = None) -> Config:
    """The config of the unfinished training of ``out``, with dotted ``overrides`` applied
    (``{"training.epochs": 50}``): what ``chatbot train --resume`` asks for when no config file is
    given. The overrides go into the saved values before they are validated, so that one can
    correct a saved value that is no longer valid."""
    work = work_dir_for(Path(out))
    state = _read_state(work)
    _check_same_format(state, work)
    data = {**Config().to_dict(), **state["config"]}
    return Config.from_dict(apply_dotted(data, overrides or {}))


def _check_same_format(state: dict, work: Path) -> None:
    """A training started by another bundle format is not resumed: its saved settings would
    take today's defaults for keys it never had (spelling on, a copy bonus its network lacks)
    and its checkpoint may not fit today's network. States written before the format was
    recorded pass when they hold every key of today's config."""
    version = state.get("format_version")
    missing = sorted(set(_flat(Config().to_dict())) - set(_flat(state.get("config", {}))))
    if version == FORMAT_VERSION or (version is None and not missing):
        return
    started = f"bundle format {version}" if version is not None else f"settings without {', '.join(missing[:3])}"
    raise TrainingError(f"{work}: this training was started by another chatbot version ({started}; this one "
                        f"writes format {FORMAT_VERSION}): finish it with that version, or train again without "
                        "--resume")


def resume_changes(saved: dict, config: Config, work: Path) -> list[str]:
    """The settings ``config`` changes from the ``saved`` one, as "key old -> new" (all in
    ``RESUMABLE``); ``TrainingError`` naming every other setting that differs."""
    before = {**_flat(Config().to_dict()), **_flat(saved)}  # keys added since it was saved: their defaults
    after = _flat(config.to_dict())
    changed = [key for key in after if before.get(key) != after[key]]
    refused = [key for key in changed if not resumable(key)]
    if refused:
        listed = ", ".join(f"{key} ({before.get(key)!r} -> {after[key]!r})" for key in refused)
        raise TrainingError(f"--resume cannot change {listed}: these settings fix the data, tokenizer, "
                            f"network shape or optimizer state of the training saved in {work}; leave them "
                            "out, or train again without --resume")
    return [f"{key} {before.get(key)!r} -> {after[key]!r}" for key in changed]


def _flat(config: dict) -> dict:
    """``{"training": {"epochs": 3}}`` -> ``{"training.epochs": 3}``."""
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def _check_same_run(state: dict, base, mix_base_corpus: bool, rebuild_vocab: bool, work: Path) -> None:
    """A resumed run is the same fine-tuning (or none): --from, --mix-old and --rebuild-vocab
    given now must be the saved ones (left out, the saved ones apply)."""
    saved_base = state.get("base")
    if base is not None:
        given = Path(base.path if isinstance(base, Bundle) else base).resolve()
        if saved_base is None or given != Path(saved_base).resolve():
            was = f"fine-tuned {saved_base}" if saved_base else "not a fine-tuning"
            raise TrainingError(f"--resume: the training saved in {work} {'was ' + was}; "
                                f"--from {base if not isinstance(base, Bundle) else base.path} cannot change that")
    for flag, given, key in (("--mix-old", mix_base_corpus, "mix_base_corpus"),
                             ("--rebuild-vocab", rebuild_vocab, "rebuild_vocab")):
        if given and not state.get(key):
            raise TrainingError(f"--resume: the training saved in {work} was started without {flag}; "
                                "leave it out, or train again without --resume")


def _pair(example: Example) -> tuple:
    return example.context, example.question, example.answer


def _write_state(plan: Plan) -> None:
    """What ``resume`` needs to rebuild the same data and model: config, corpus, base model."""
    state = {"format_version": FORMAT_VERSION, "config": plan.config.to_dict(), "corpus_sha256": plan.corpus.sha256,
             "corpus_path": str(plan.corpus.root),
             "base": str(plan.base.path) if plan.base is not None else None,
             "mix_base_corpus": plan.mix_base_corpus, "rebuild_vocab": plan.rebuild_vocab}
    (plan.work / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")


def _os_reason(exc: OSError) -> str:
    """The system's reason, e.g. "No space left on device" (h5py wraps it in a page of text)."""
    if exc.errno:
        return os.strerror(exc.errno)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _texts(examples: list[Example]):
    for ex in examples:
        yield from ex.context
        yield ex.question
        yield ex.answer


def _read_state(work: Path) -> dict:
    try:
        state = loads_bounded((work / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"nothing to resume: no unfinished training in {work}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # bad JSON, too deep, ...
        raise TrainingError(f"{work / STATE}: unreadable training state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise TrainingError(f"{work / STATE}: unreadable training state (no config)")
    return state


def best_in_log(log_file: Path, monitor: str) -> float | None:
    """Best monitored value logged before an interruption, so checkpoints keep improving on it.
    Every row counts, an epoch's first run too (the best-weights file was written before its row,
    so it may hold those weights); an "NA" cell is no value."""
    if not log_file.exists():
        return None
    with open(log_file, newline="") as f:
        values = [_number(row.get(monitor)) for row in csv.DictReader(f)]
    values = [v for v in values if not math.isnan(v)]
    return min(values) if values else None

