"""Replies for inputs: read (spelling), retrieve, encode, decode, re-rank, and the confidence.

``Generator.generate`` is the one path every reply takes. It reads each input as the model was
trained to (``data.spelling``), looks up what retrieval shows the model beside it, encodes both,
and runs one of the compiled loops of ``chatbot.inference.decoding`` on the batch: greedy,
sampling or beam search, in XLA where the shapes allow. A beam's hypotheses may then be re-ranked
(by what retrieval found, or by mutual information), never replaced; each reply keeps the text the
loop produced. ``Generation.score`` is the mean log-probability per generated token, end token
included, and the confidence is derived from it (``confidence_of``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from chatbot.config import DataConfig, DecodingConfig
from chatbot.data.spelling import Speller
from chatbot.data.text import normalise_answer
from chatbot.errors import DecodingError, InputError
from chatbot.inference.decoding import SCORE_BATCH, XLA_MAX_BATCH, DecodeLoops, padded_rows, xla_batch, xla_width
from chatbot.inference.retrieval import AnswerMemory
from chatbot.model.network import EncoderDecoder
from chatbot.data.tokenizer import END, PAD, START, TextTokenizer

COMMON_WIDTHS = (32, 64, 128, 256)  # what most inputs with retrieved pairs pad to
SERVER_WIDTHS = (32, 64, 128, 256, 512)  # ... and the longest (a code answer retrieved): a server's
SERVER_BATCHES = (1, 2, 4, 8)  # the batches a server's XLA loops decode (up to XLA_MAX_BATCH)


@dataclass(frozen=True)
class Generation:
    text: str
    score: float  # mean log-probability per generated token ([END] included); 0 is certain
    tokens: int
    latency_ms: float
    # The n-best list as (text, score), best first, the chosen reply included; one entry for
    # greedy decoding and sampling.
    alternatives: tuple[tuple[str, float], ...] = ()
    token_ids: tuple[int, ...] = ()  # the generated ids, [END] included when it was reached
    # How likely the reply is right, 0..1, from the model alone: the mean token probability,
    # exp(score) (``confidence_of``), times, with ``decoding.unaided_weight`` w, the reply's mean
    # token probability given the input without retrieved pairs to the power w.
    confidence: float = 0.0
    # What retrieval showed the model beside the input: (question, answer, similarity), most
    # alike first; empty when retrieval is off or the model does not read it.
    retrieved: tuple[tuple[str, str, float], ...] = ()
    # The question as the model read it: after spelling normalisation (``data.spelling``).
    read_as: str = ""
    # Each alternative's confidence, in the same order (empty: exp of its score).
    confidences: tuple[float, ...] = ()
    lengths: tuple[int, ...] = ()  # each alternative's generated tokens, in the same order
    input_tokens: int = 0  # tokens the model read: the question, context turns and retrieved pairs

    @property
    def ended(self) -> bool:
        """Whether the reply reached [END] rather than the length limit (an alternative chosen
        by ``choose``, whose ids are not kept, counts as ended)."""
        return not self.token_ids or self.token_ids[-1] == END

    def choose(self, index: int) -> "Generation":
        """This generation with its ``index``-th alternative as the reply: text, score and
        confidence all come from that hypothesis (never the first one's)."""
        text, score = self.alternatives[index]
        confidence = self.confidences[index] if self.confidences else confidence_of(score)
        tokens = self.lengths[index] if self.lengths else self.tokens
        return dataclasses.replace(self, text=text, score=score, confidence=confidence, tokens=tokens,
                                   token_ids=() if index else self.token_ids)


class Hypothesis(NamedTuple):
    """One decoded reply of an input, before it becomes a ``Generation``."""
    text: str
    ids: np.ndarray  # the generated ids, [END] included when it was reached
    score: float  # mean log-probability per token
    length: int
    unaided: float | None  # mean log-probability per token given the bare input; None: not computed


def distinct_first(hypotheses: Sequence[Hypothesis]) -> list[Hypothesis]:
    """The same hypotheses, the first of each text (up to surrounding white space) before the
    rest: a beam often holds a reply twice, once with a space token before [END], and an n-best
    list (``n`` choices of the API) should not offer it twice while other replies wait below."""
    seen: set[str] = set()
    first, again = [], []
    for hypothesis in hypotheses:
        text = hypothesis.text.strip()
        (again if text in seen else first).append(hypothesis)
        seen.add(text)
    return first + again


def confidence_of(score: float, unaided_score: float = 0.0, unaided_weight: float = 0.0) -> float:
    """A 0..1 confidence from a mean log-probability per token (the mean token probability),
    lowered by the reply's mean log-probability without retrieved pairs, weighted."""
    return float(np.exp(score + unaided_weight * unaided_score))


def decode_threads() -> int:
    """How many inputs that decode alone run at once: as many as TensorFlow's intra-op threads
    (``TF_NUM_INTRAOP_THREADS``, else the cores). XLA's CPU programs run on that pool, so with
    one thread (the CLI's, best for one reply) a second input would only queue, and with two a
    server's queue of beam searches is decoded 1.8x faster (bench/README.md, serve_load.py)."""
    for configured in (tf.config.threading.get_intra_op_parallelism_threads(),
                       os.environ.get("TF_NUM_INTRAOP_THREADS", "")):
        try:
            if int(configured) > 0:
                return int(configured)
        except ValueError:
            continue
    return os.cpu_count() or 1


def check_sample_number(sample: int | None) -> None:
    """``InputError`` unless ``sample`` is None or an int from 0 to 2**31 - 1 (a bool is not)."""
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < 2 ** 31):
        raise InputError(f"a sample number must be an int from 0 to 2**31 - 1, not {sample!r}")


class Generator:
    def __init__(self, model: EncoderDecoder, tokenizer: TextTokenizer, data: DataConfig,
                 decoding: DecodingConfig, max_batch: int = 64, memory: AnswerMemory | None = None,
                 speller: Speller | None = None):
        self.model = model
        self.process = os.getpid()  # TensorFlow's threads are not copied by fork: see check_process
        self.speller = speller
        self.tokenizer = tokenizer
        self.data = data
        self.decoding = decoding
        self.max_batch = max_batch
        self.memory = memory
        self.loops = DecodeLoops(model, decoding.max_length)
        self._alone_pool: ThreadPoolExecutor | None = None  # ``_map_alone``'s threads
        self._alone_pool_lock = threading.Lock()

    def warm_up(self, strategies: Sequence[str] | None = None,
                decoding: DecodingConfig | dict[str, Any] | None = None) -> None:
        """Trace and run the compiled loops once, so the first real reply does not pay for it.
        "greedy" compiles the XLA loop that one question decodes with, for a question with what
        retrieval finds (a bare one if the model reads none), and for other widths on first use
        (half a second each; ``warm_widths``); the graph loop of batches and sampling is traced here for
        "sample", else on its first use, as is beam search unless "beam" is asked for (the
        model's own beam search compiles its XLA loop, as greedy does; or that of ``decoding``,
        e.g. ``ask --beam 4``'s). None: greedy and the model's own strategy."""
        if strategies is None:
            strategies = ("greedy", self.decoding.effective_strategy)
        source = np.array([[START]], np.int32)
        unaided = self.weighs_unaided(self.decoding)
        if "greedy" in strategies:
            if self.reads_retrieval:  # a question with what retrieval finds is much wider
                read = self.read([["hello"]])
                self.loops.greedy(self.encode_inputs(read, self.retrieve(read)), 2, 0,
                                  self.encode_inputs(read) if unaided else None)
            else:
                self.loops.greedy(source, 2, 0)
        if "sample" in strategies:  # batches trace it on first use: one question never needs it
            self.loops.step(source, DecodingConfig(max_length=2), bare=source if unaided else None)
        if "beam" in strategies:
            own = self.searched(self.resolve(decoding))
            if self.loops.uses_xla_beam(own, 1):  # the model's own beam search: its XLA loop, as greedy's
                config = dataclasses.replace(own, max_length=2, min_length=0)
                self.loops.beam_xla(source, config)
                if self.reads_retrieval:
                    read = self.read([["hello"]])
                    self.loops.beam_xla(self.encode_inputs(read, self.retrieve(read)), config)
            else:
                self.loops.beam(source, DecodingConfig(strategy="beam", beam=2, max_length=2))
            if self.ranks_by_mutual_information(own):
                self.unconditional_scores([np.array([END], np.int32)])
        if unaided and "beam" in strategies:  # its replies are scored after the search
            self.unconditional_scores([np.array([END], np.int32)])  # traces the scoring pass
        if self.reads_retrieval:  # the hybrid retriever's sentence encoder is traced on first use too
            self.memory.embed(["warm up"])

    def warm_widths(self, widths: Sequence[int] = COMMON_WIDTHS, batches: Sequence[int] = (1,),
                    decoding: DecodingConfig | dict[str, Any] | None = None,
                    until: threading.Event | None = None) -> None:
        """Compile the XLA loop of the model's own decoding (greedy, or beam search), or of
        ``decoding`` (a server's requests at temperature 0 decode greedily), for these input
        widths and batch sizes (a server's batches) now, a second or two each, so that no reply
        waits for it later. Stops between two programs once ``until`` is set."""
        config = self.resolve(decoding)
        alone = self.decodes_alone(self.searched(config))
        searched = dataclasses.replace(self.searched(config), max_length=2, min_length=0)  # what a beam compiles
        unaided = self.weighs_unaided(config)
        for batch in dict.fromkeys(xla_batch(b) for b in batches if b <= XLA_MAX_BATCH and (b == 1 or not alone)):
            bare = np.full((batch, 1), START, np.int32) if unaided else None
            # A batch pads to its widest input, so batches of several are seldom as narrow as
            # the narrowest width; the next one is common (one of three batches of 2 of
            # serve_load.py's questions), and compiling it under load stalled every request.
            for width in (widths if batch == 1 else widths[1:] or widths):
                if until is not None and until.is_set():
                    return
                source = np.full((batch, width), START, np.int32)
                if self.loops.uses_xla_beam(config, batch):
                    if (searched.beam, searched.n_best, batch, xla_width(width)) not in self.loops.compiled_beam_shapes:
                        self.loops.beam_xla(source, searched)
                elif self.loops.greedy_shape(batch, width, 1 if unaided else None) not in self.loops.compiled_shapes:
                    self.loops.greedy(source, 2, 0, bare)

    def trace_greedy_batches(self) -> None:
        """Trace greedy decoding's XLA loops for every batch size now (``DecodeLoops.trace_greedy``:
        a server does, before its first request, so that its programs are found on disk)."""
        self.loops.trace_greedy(self.weighs_unaided(self.resolve({"strategy": "greedy"})))

    def trace_beam_searches(self, most_replies: int) -> None:
        """Trace the XLA beam loops of requests for 1 to ``most_replies`` replies (OpenAI's
        ``n``: a beam ``max(n, beam)`` wide keeping ``n``) now, in a fixed order, so that their
        programs are found on disk (``DecodeLoops.trace_beam``)."""
        for n in range(1, most_replies + 1):
            config = self.searched(self.resolve({"strategy": "beam", "beam": max(n, self.decoding.beam), "n_best": n}))
            if self.loops.uses_xla_beam(config, 1):
                self.loops.trace_beam(config)

    @property
    def compiled_programs(self) -> int:
        """The XLA programs of the greedy and beam loops compiled so far (one per shape)."""
        return len(self.loops.compiled_shapes) + len(self.loops.compiled_beam_shapes)

    @property
    def compiled_widths(self) -> set[int]:
        """The input widths ``_greedy_loop`` was compiled for, for one input."""
        return {width for batch, width, _ in self.loops.compiled_shapes if batch == 1}

    @property
    def trace_count(self) -> int:
        """Traces of all compiled loops together (each is traced once, on first use)."""
        return self.loops.trace_count

    # --- scoring given answers ---------------------------------------------------------------
    def score(self, inputs: Sequence[Sequence[str]], answers: Sequence[str],
              max_length: int | None = None, retrieval: bool = True) -> np.ndarray:
        """How likely the model finds each answer for its input (rows pair up), as the mean
        log-probability per token; with ``retrieval`` False, given the input alone. Answers are
        cut to ``max_length`` tokens (default: the decoding max_length), as a decoded reply would be."""
        limit = max_length or self.decoding.max_length
        sources: list[np.ndarray] = []
        for start in range(0, len(inputs), SCORE_BATCH):
            read = self.read(inputs[start:start + SCORE_BATCH])
            sources += list(self.encode_inputs(read, self.retrieve(read) if retrieval else None))
        return self.loops.scores(sources, [self.tokenizer.encode_target(a, limit) for a in answers])

    # --- beam searches decoded alone ---------------------------------------------------------
    def decodes_alone(self, config: DecodingConfig) -> bool:
        """Whether a beam search keeping several hypotheses per input (``n_best`` > 1, as
        re-ranking asks for the whole beam) decodes one input at a time in its XLA loop. Such an
        input is done only when all its hypotheses have ended, which often takes long, and a
        batch runs until its slowest input is done: default model, beam 8, per question, 23.6 ms
        alone, 62.7 ms in batches of 8, 33.4 ms in the graph loop at 64 (bench/README.md,
        serve_load.py). With one hypothesis kept, inputs finish early and batches pay."""
        return config.n_best > 1 and self.loops.uses_xla_beam(config, 1)

    def _map_alone(self, decode, sources: list) -> list:
        """``decode`` over inputs that decode alone, ``decode_threads()`` of them at once (the
        results are those of one after another)."""
        if len(sources) <= 1 or decode_threads() <= 1:
            return [decode(source) for source in sources]
        with self._alone_pool_lock:
            if self._alone_pool is None:
                self._alone_pool = ThreadPoolExecutor(decode_threads(), thread_name_prefix="chatbot-beam")
            pool = self._alone_pool  # release_threads (a close) may clear the attribute meanwhile
        try:
            return list(pool.map(decode, sources))
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown": one after another here
            if "shutdown" not in str(exc):
                raise
            return [decode(source) for source in sources]

    def check_process(self) -> None:
        """A model loaded before a fork (gunicorn --preload, multiprocessing's "fork") hangs in
        the child for ever: TensorFlow's thread pools did not come along. Say so instead."""
        if os.getpid() != self.process:
            raise DecodingError(f"this model was loaded in process {self.process}, before a fork: load the ChatBot "
                                "in each process that uses it (gunicorn: no --preload, or load it in post_fork)")

    def release_threads(self) -> None:
        """Stop ``_map_alone``'s idle threads (``ChatBot.close``); a later call starts them again."""
        with self._alone_pool_lock:
            pool, self._alone_pool = self._alone_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # --- the public side ---------------------------------------------------------------------

    @property
    def reads_retrieval(self) -> bool:
        """Whether the model was trained to read retrieved pairs (and has them to read)."""
        return self.data.retrieved_pairs > 0 and self.memory is not None and len(self.memory) > 0

    def read(self, inputs: Sequence[Sequence[str]]) -> list[list[str]]:
        """The turns as the model reads them (and retrieval searches them): spelling corrected
        when the model was trained so."""
        if self.speller is None:
            return [list(turns) for turns in inputs]
        return [[self.speller.correct(turn) for turn in turns] for turns in inputs]

    def retrieve(self, inputs: Sequence[Sequence[str]], config: DecodingConfig | None = None
                 ) -> list[tuple[tuple[str, str, float], ...]]:
        """What the model is shown beside each input (by its question, the last turn)."""
        if not self.reads_retrieval or not (config or self.decoding).retrieval:
            return [()] * len(inputs)
        return self.memory.retrieve_each([turns[-1] if turns else "" for turns in inputs],
                                         self.data.retrieved_pairs)

    def encode_inputs(self, inputs: Sequence[Sequence[str]],
                      retrieved: Sequence[Sequence[tuple[str, str, float]]] | None = None) -> np.ndarray:
        """Each input is a list of turns (context..., question), with what retrieval found for
        it; returns padded ids."""
        retrieved = retrieved or [()] * len(inputs)
        ids = [self.tokenizer.encode_input(list(turns), self.data.max_input_tokens, shown,
                                           self.data.max_retrieved_answer_tokens) or [PAD]
               for turns, shown in zip(inputs, retrieved)]
        return padded_rows(ids)

    def resolve(self, decoding: DecodingConfig | dict[str, Any] | None = None,
                max_length: int | None = None) -> DecodingConfig:
        """The settings a call uses: this generator's, overridden by ``decoding`` (a whole
        config or a dict of some fields) and ``max_length``; validated (``ConfigError``)."""
        return self.decoding.with_overrides(decoding, max_length)

    def ranks_by_retrieval(self, config: DecodingConfig) -> bool:
        """Whether ``decoding.retrieved_bonus`` re-ranks this search's hypotheses."""
        return (config.effective_strategy == "beam" and config.retrieved_bonus > 0 and config.retrieval
                and self.reads_retrieval)

    @staticmethod
    def ranks_by_mutual_information(config: DecodingConfig) -> bool:
        """Whether ``decoding.mmi_weight`` re-ranks this search's hypotheses."""
        return config.effective_strategy == "beam" and config.mmi_weight > 0

    def searched(self, config: DecodingConfig) -> DecodingConfig:
        """The search actually run for ``config``: to be re-ranked, the whole beam comes back
        (``n_best`` = ``beam``), and ``n_best`` are kept afterwards. Warm-up compiles this one."""
        reranked = self.ranks_by_retrieval(config) or self.ranks_by_mutual_information(config)
        return dataclasses.replace(config, n_best=config.beam) if reranked else config


    def unconditional_scores(self, hypotheses: Sequence[np.ndarray]) -> np.ndarray:
        """Each hypothesis' mean log-probability per token given an empty input: how likely the
        model finds a reply whatever was said, the anti-language model of MMI reranking."""
        nothing = self.encode_inputs([[""]])[0]
        return self.loops.scores([nothing] * len(hypotheses), hypotheses)

    def weighs_unaided(self, config: DecodingConfig) -> bool:
        """Whether ``decoding.unaided_weight`` lowers this call's confidences."""
        return config.unaided_weight > 0 and config.retrieval and self.reads_retrieval

    def _confidences(self, rows: list[list[Hypothesis]], chunk: list[list[str]], config: DecodingConfig
                     ) -> list[tuple[float, ...]]:
        """Each input's hypotheses' confidences (``confidence_of``): with ``unaided_weight``, from
        each hypothesis' score given its input without the retrieved pairs, which the greedy and
        sampling loops computed as they decoded; beam search's hypotheses are scored now, in one
        pass (bare rows would follow every hypothesis of the search, of which only the n-best
        kept are scored here: bench/README.md, "The unaided pass in the loop")."""
        if not self.weighs_unaided(config):
            return [tuple(confidence_of(h.score) for h in hypotheses) for hypotheses in rows]
        missing = [(row, h.ids) for row, hypotheses in enumerate(rows) for h in hypotheses if h.unaided is None]
        if missing:
            bare = self.encode_inputs(chunk)
            scored = iter(self.loops.scores([bare[row] for row, _ in missing], [ids for _, ids in missing]))
            rows = [[h._replace(unaided=float(next(scored))) if h.unaided is None else h for h in hypotheses]
                    for hypotheses in rows]
        return [tuple(confidence_of(h.score, h.unaided, config.unaided_weight) for h in hypotheses)
                for hypotheses in rows]

    def _rerank(self, rows: list[list[Hypothesis]], shown, config: DecodingConfig) -> list[list[Hypothesis]]:
        """Each input's beam hypotheses in a new order (``shown``:
        what retrieval showed for each input); only decoded hypotheses are ranked, none is added,
        and each keeps its own score. The rank key is the
        score, plus (``retrieved_bonus``) B x the similarity of a retrieved pair whose answer the
        hypothesis repeats word for word, minus (``mmi_weight``) w x the hypothesis' score given an
        empty input (maximum mutual information, Li et al. 2016: MMI-antiLM).

        Why the bonus: a beam often holds the right retrieved answer copied whole just below a
        hypothesis that broke off part-way ("no need for material possesssss."); what retrieval
        found tells the two apart (bench/README.md, run 11). Why MMI: trained on open dialogue,
        beam search favours replies likely after anything ("yeah", "i don't know"); subtracting
        how likely a reply is with no input favours replies that fit this one
        (bench/results/chitchat.json)."""
        keys = [[h.score for h in hypotheses] for hypotheses in rows]
        if self.ranks_by_mutual_information(config):  # one forward pass for every input's beam
            generic = iter(self.unconditional_scores([h.ids for hypotheses in rows for h in hypotheses]))
            keys = [[key - config.mmi_weight * float(next(generic)) for key in row] for row in keys]
        if self.ranks_by_retrieval(config):
            for row, (hypotheses, pairs) in enumerate(zip(rows, shown)):
                alike: dict[str, float] = {}
                for _, answer, similarity in pairs:
                    answer = normalise_answer(answer)
                    alike[answer] = max(alike.get(answer, 0.0), similarity)
                keys[row] = [key + config.retrieved_bonus * alike.get(normalise_answer(h.text), 0.0)
                             for key, h in zip(keys[row], hypotheses)]
        return [[hypotheses[i] for i in sorted(range(len(hypotheses)), key=lambda i: -row_keys[i])]  # stable
                for hypotheses, row_keys in zip(rows, keys)]

    @staticmethod
    def row_keys(inputs: Sequence[Sequence[str]], seed: int | None,
                 samples: Sequence[int | None] | None = None) -> np.ndarray:
        """Each input's random key for sampling, ``[inputs, 2]``: (seed, stream). With a seed,
        the stream is the input's sample number (``samples``; where None, how many identical
        inputs come before it in the call, so repeats draw different samples): the same
        input, seed and number sample the same reply in any batch. Without a seed, a fresh
        random seed per input."""
        if samples is not None and len(samples) != len(inputs):
            raise InputError(f"{len(samples)} sample numbers for {len(inputs)} inputs")
        for given in samples or ():  # checked with a seed or without (True was taken without one)
            check_sample_number(given)
        if seed is None:
            return np.array([[random.randrange(2 ** 31), 0] for _ in inputs], np.int32).reshape(-1, 2)
        seen: dict[tuple[str, ...], int] = {}
        streams = []
        for i, turns in enumerate(inputs):
            given = samples[i] if samples is not None else None
            earlier = seen.get(tuple(turns), 0)
            seen[tuple(turns)] = earlier + 1
            streams.append(earlier if given is None else given)
        return np.array([[seed, stream] for stream in streams], np.int32).reshape(-1, 2)

    def generate(self, inputs: Sequence[Sequence[str]], max_length: int | None = None,
                 decoding: DecodingConfig | dict[str, Any] | None = None,
                 samples: Sequence[int] | None = None) -> list[Generation]:
        """Replies for many inputs, read and retrieved for in batches of ``max_batch`` and decoded
        together, except beam searches that keep their whole beam (``decodes_alone``).
        ``samples``: with sampling, each input's sample number (``row_keys``)."""
        self.check_process()
        config = self.resolve(decoding, max_length)
        beam = config.effective_strategy == "beam"
        wanted = config.n_best
        reranked = self.ranks_by_retrieval(config) or self.ranks_by_mutual_information(config)
        config = self.searched(config)
        random_keys = self.row_keys(inputs, config.seed, samples)
        alone = beam and self.decodes_alone(config)
        unaided = self.weighs_unaided(config)
        results: list[Generation] = []
        for start in range(0, len(inputs), self.max_batch):
            began = time.perf_counter()
            chunk = self.read(inputs[start:start + self.max_batch])
            shown = self.retrieve(chunk, config)
            padded_ids = None if alone else self.encode_inputs(chunk, shown)  # alone: each input its own width
            bare_sums = None  # [inputs, 1]: log-prob sums given the bare inputs (the greedy and sampling loops)
            if alone:
                sources = [self.encode_inputs([row], [pairs]) for row, pairs in zip(chunk, shown)]
                outs = self._map_alone(lambda source: self.loops.beam_xla(source, config), sources)
                ids, logprob, lengths, keys = (np.concatenate([out[i].numpy() for out in outs]) for i in range(4))
            elif beam and self.loops.uses_xla_beam(config, len(chunk)):
                ids, logprob, lengths, keys = (t.numpy() for t in self.loops.beam_xla(padded_ids, config))
            elif beam:
                ids, logprob, lengths, keys = (t.numpy() for t in self.loops.beam(padded_ids, config))
            else:  # greedy or sampling: the loop scores each reply given its bare input as well
                bare = self.encode_inputs(chunk) if unaided else None
                if self.loops.uses_xla(config, len(chunk)):
                    run = self.loops.greedy(padded_ids, config.max_length, config.min_length, bare)
                else:
                    run = self.loops.step(padded_ids, config, random_keys[start:start + len(chunk)], bare)
                ids, logprob, lengths, *summed = (t.numpy()[:, None] for t in run)
                keys, bare_sums = logprob, (summed[0] if summed else None)
            read_tokens = [int(n) for source in (sources if alone else [padded_ids])
                           for n in np.count_nonzero(source != PAD, axis=1)]  # what each input's row holds
            rows: list[list[Hypothesis]] = []  # per input, best first
            for row in range(len(chunk)):
                hypotheses = []
                for j in range(ids.shape[1]):
                    n = int(lengths[row, j])
                    if not np.isfinite(keys[row, j]):
                        continue  # an unusable beam slot (fewer possible hypotheses than beams)
                    hypothesis = ids[row, j, :n]
                    hypotheses.append(Hypothesis(
                        self.tokenizer.decode(hypothesis), hypothesis, float(logprob[row, j] / max(n, 1)), n,
                        None if bare_sums is None else float(bare_sums[row, j] / max(n, 1))))
                rows.append(hypotheses)
            if reranked:
                rows = self._rerank(rows, shown, config)
            rows = [distinct_first(hypotheses)[:wanted] for hypotheses in rows]
            confidences = self._confidences(rows, chunk, config)
            latency = (time.perf_counter() - began) * 1000 / len(chunk)
            chunk_results: list[Generation] = []
            for row, hypotheses in enumerate(rows):
                best = hypotheses[0]
                chunk_results.append(Generation(
                    text=best.text,
                    score=best.score,
                    confidence=confidences[row][0],
                    confidences=confidences[row],
                    tokens=best.length,
                    lengths=tuple(h.length for h in hypotheses),
                    input_tokens=read_tokens[row],
                    latency_ms=latency,
                    alternatives=tuple((h.text, h.score) for h in hypotheses),
                    token_ids=tuple(int(t) for t in best.ids),
                    retrieved=shown[row],
                    read_as=chunk[row][-1] if chunk[row] else "",
                ))
            results.extend(chunk_results)
        return results
