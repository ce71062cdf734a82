"""Robustness to rewording and typos: the model next to fuzzy retrieval and ChatterBot.

    python bench/robustness.py                          # models/default, every set, all systems
    python bench/robustness.py --quick                  # smoke run: a seeded sample of each set
    python bench/robustness.py --details /tmp/rb.jsonl  # also every question, reply and verdict
    python bench/robustness.py --decoding '{"strategy": "greedy"}' --results robustness_greedy
                                                        # another decoding (an API request's), every system

Question sets, each question with the ORIGINAL corpus question whose answers count (each dev
file is split in two by a hash of the question: the dev half, and a test half reported beside
it and never tuned on):

* training: the distinct questions of the model's training split (the corpus examples minus
  the bundle's ``validation.jsonl``), each its own original;
* reworded: ``bench/data/reworded.jsonl``, hand-written rewordings (synonym, word order, filler
  words, contractions, case and punctuation);
* typos: ``bench/data/typos.jsonl``, one or two keyboard typos (``bench/make_typos.py``);
* unanswerable: ``bench/data/unanswerable.jsonl``, questions no corpus question answers (facts
  and tasks outside it, personal news, requests a chatbot cannot act on, gibberish), split in
  halves the same way. Every reply to them is wrong; what counts is whether the confidence
  tells them apart from right replies, so that ``dialogue.min_confidence`` falls back on them.

Systems that answer them, all in one run (the first four are the ablations that show what
the model itself contributes):

* model: ``ChatBot.load(model).generate(questions)`` in batches, the public reply path with
  the bundle's own decoding settings (retrieval feeding the decoder): what users get;
* decoder_alone: the same with ``decoding.retrieval`` off: the network reads only the question;
* retrieval_alone: no model: the first answer of the nearest training question found by the
  same retrieval (``AnswerMemory.retrieve`` with the model's ``data.retriever``) for the
  question as the model reads it (spelling corrected when the model has ``data.spelling``);
* untrained: the shipped pipeline (retrieval on) with freshly initialised weights;
* fuzzy: ``difflib.get_close_matches(question, corpus_questions, n=1, cutoff=0.0)`` over the
  corpus' distinct questions, replying with the first answer (in corpus order) of the question
  it picks; ``match_right`` is how often the picked question has a right answer at all;
* chatterbot: ChatterBot (``pip install chatterbot`` into its own virtualenv, default
  ``/tmp/chatterbot-venv``, made on first use; it pins SQLAlchemy and spaCy versions that must
  not meet this project's) trained with its ``ListTrainer`` on every dialogue of the same
  corpus and asked through ``get_response``, in a subprocess running that virtualenv's python.
  When it cannot be installed or run, the JSON says ``{"skipped": "<why>"}``.

A reply is right (exact match) when it equals one of the original's corpus answers after
normalising case, whitespace runs and trailing punctuation; chrF is sacrebleu's corpus chrF
with every answer of the original as a reference. The model's reply ``score`` (mean token
log-probability) is judged as a confidence: the ROC AUC of right vs wrong replies, and the
threshold t maximising the accuracy of "keep the reply if score >= t, else fall back" (what
``dialogue.fallback_threshold`` is set from). Progress goes to stderr; the figures are one
JSON object on the last line of stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import dataclasses
import difflib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from _common import DEFAULT_CORPUS, ROOT, emit, log, peak_rss_mb, results_name


DATA = ROOT / "bench" / "data"
REWORDED = DATA / "reworded.jsonl"
TYPOS = DATA / "typos.jsonl"
UNANSWERABLE = DATA / "unanswerable.jsonl"
# Each dev file is split by a hash of the question: "reworded"/"typos" are the dev halves (look
# at them freely), "reworded_test"/"typos_test" the test halves (report them; never tune on them).
SETS = ("training", "reworded", "typos", "reworded_test", "typos_test")
# The ablations, all in one run: the shipped pipeline; its decoder with retrieval off; retrieval
# alone (the first answer of the nearest training question, no model); the shipped pipeline with
# freshly initialised weights. Then the outside baselines: difflib and ChatterBot.
ABLATIONS = ("model", "decoder_alone", "retrieval_alone", "untrained")
SYSTEMS = (*ABLATIONS, "fuzzy", "chatterbot")
TARGETS = {"training_exact_min": 0.99, "reworded_exact_min": 0.92, "typos_exact_min": 0.98,
           "model_vs_retrieval_alone_max_loss": 0.01, "untrained_exact_max": 0.05,
           "decoder_alone_training_min": 0.99, "decoder_alone_typos_min": 0.85,
           "confidence_auc_min": 0.85}
REWORD_KINDS = ("synonym", "word_order", "filler", "contraction", "case_punct")
TYPO_KINDS = ("adjacent", "drop", "double", "swap")
CHATTERBOT_VENV = Path("/tmp/chatterbot-venv")
QUICK_SIZES = {"training": 60, "reworded": 30, "typos": 30, "reworded_test": 30, "typos_test": 30}


# --- judging replies ---------------------------------------------------------------------------
def normalise(text: str) -> str:
    """The project's one exact-match normalisation (``chatbot.data.text.normalise_answer``):
    lower case, whitespace runs as one space, no trailing punctuation. Also used to tell a dev
    question from a corpus one."""
    from chatbot.data.text import normalise_answer

    return normalise_answer(text)


def is_right(reply: str, answers) -> bool:
    """Exact match, as everywhere in the project (``chatbot.evaluation.metrics.is_exact``)."""
    from chatbot.evaluation.metrics import is_exact

    return is_exact(reply, answers)


def corpus_chrf(replies: list[str], references: list[list[str]]) -> float:
    """sacrebleu corpus chrF (0-100); ``references[i]`` are all accepted answers of reply i.

    sacrebleu takes one stream per reference slot; a reply with fewer answers than the widest
    gets None in the slots it lacks, which sacrebleu skips."""
    from sacrebleu.metrics import CHRF

    if not replies:
        return float("nan")
    width = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    return CHRF().corpus_score(list(replies), streams).score


def threshold_report(scores, labels, threshold: float) -> dict:
    """What a given threshold does on these replies (e.g. the bundle's fallback_threshold)."""
    kept = [s >= threshold for s in scores]
    n_kept = sum(kept)
    tp = sum(k and r for k, r in zip(kept, labels))
    n_right = sum(labels)
    correct = sum(k == r for k, r in zip(kept, labels))
    return {"threshold": threshold, "accuracy": round(correct / len(labels), 4) if labels else None,
            "precision": round(tp / n_kept, 4) if n_kept else None,
            "recall": round(tp / n_right, 4) if n_right else None,
            "kept": round(n_kept / len(labels), 4) if labels else None}


# --- the question sets -------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    set: str
    question: str
    original: str
    kind: str
    category: str


def is_test_half(question: str) -> bool:
    """The fixed half of a dev file kept aside as a test set (a hash, so it never moves)."""
    import hashlib

    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 2 == 1


def load_dev_set(path: str | Path, name: str) -> list[Item]:
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"question", "original", "kind", "category"} - set(row)
        if missing:
            raise ValueError(f"{path}:{number}: missing {', '.join(sorted(missing))}")
        half = f"{name}_test" if is_test_half(row["question"]) else name
        items.append(Item(half, row["question"], row["original"], row["kind"], row["category"]))
    return items


def load_corpus_quietly(corpus: str | Path):
    from chatbot.data.corpus import load_corpus

    return load_corpus(corpus, quiet=True)  # the English corpus has one malformed entry, known


def answers_table(examples) -> dict[str, list[str]]:
    """Every answer of each question, stripped, each once, in corpus order."""
    table: dict[str, list[str]] = {}
    for example in examples:
        answers = table.setdefault(example.question, [])
        if example.answer.strip() not in answers:
            answers.append(example.answer.strip())
    return table


def question_categories(examples) -> dict[str, list[str]]:
    """Every corpus file stem each question appears in, first-seen order."""
    table: dict[str, list[str]] = {}
    for example in examples:
        stem = Path(example.source.rsplit(":", 1)[0]).stem
        if stem not in table.setdefault(example.question, []):
            table[example.question].append(stem)
    return table


def training_questions(bundle, corpus_examples) -> tuple[list[str], str]:
    """The distinct questions of the bundle's training split, in corpus order, and where the
    examples came from. The split is the corpus minus ``validation.jsonl``."""
    source = "bundle"
    try:
        examples = bundle.training_examples()
    except Exception as exc:  # no such method yet, or the corpus moved/changed: use --corpus
        log(f"cannot rebuild the bundle's training corpus ({exc}); using --corpus instead")
        examples, source = corpus_examples, "corpus"
    held_out = {(e.context, e.question, e.answer) for e in bundle.validation}
    train = [e for e in examples if (e.context, e.question, e.answer) not in held_out]
    return list(dict.fromkeys(e.question for e in train)), source


# --- the fuzzy baseline ------------------------------------------------------------------------
def fuzzy_replies(questions: list[str], table: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
    """question -> (the corpus question difflib finds closest, that question's first answer).

    A question that is itself a corpus question is its own match without the search:
    ``get_close_matches`` returns the best ratio, only an identical string reaches 1.0, and the
    candidates are distinct (checked with the ratio itself, as difflib's autojunk heuristic
    can keep long identical strings below 1.0, which then go through the search)."""
    candidates = list(table)  # corpus order
    out = {}
    for i, question in enumerate(questions):
        if question in table and difflib.SequenceMatcher(None, question, question).ratio() == 1.0:
            match = question
        else:
            match = difflib.get_close_matches(question, candidates, n=1, cutoff=0.0)[0]
        out[question] = (match, table[match][0])
        if (i + 1) % 250 == 0:
            log(f"fuzzy: {i + 1}/{len(questions)}")
    return out


# --- ChatterBot, in its own virtualenv ---------------------------------------------------------
def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def ensure_chatterbot(venv: Path, install: bool, timeout: int) -> tuple[Path | None, str]:
    """The virtualenv's python if ``import chatterbot`` works there (installing it first when
    allowed), else (None, why not)."""
    python = venv / "bin" / "python"

    def importable() -> tuple[bool, str]:
        if not python.exists():
            return False, f"no virtualenv at {venv}"
        proc = subprocess.run([str(python), "-c", "import chatterbot, sys; print(chatterbot.__version__)"],
                              capture_output=True, text=True, timeout=300)
        return proc.returncode == 0, (proc.stdout.strip() if proc.returncode == 0 else _last_error_line(proc.stderr))

    ok, why = importable()
    if ok:
        return python, why
    if not install:
        return None, f"ChatterBot not installed ({why}); run without --quick or --no-install to pip install it there"
    log(f"installing ChatterBot into {venv} (pip install chatterbot, at most {timeout} s)")
    began = time.monotonic()
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                           text=True, timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "chatterbot"], capture_output=True,
                              text=True, timeout=max(1, timeout - (time.monotonic() - began)))
    except subprocess.TimeoutExpired:
        return None, f"pip install chatterbot did not finish in {timeout} s"
    except subprocess.CalledProcessError as exc:
        return None, f"cannot create a virtualenv at {venv}: {_last_error_line(exc.stderr or '')}"
    (venv / "pip-install.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        return None, f"pip install chatterbot failed: {_last_error_line(proc.stderr + proc.stdout)}"
    ok, why = importable()
    log(f"ChatterBot install took {time.monotonic() - began:.0f} s: {'ok ' + why if ok else why}")
    return (python, why) if ok else (None, f"installed but cannot import chatterbot: {why}")


def run_chatterbot(python: Path, dialogues: list[list[str]], questions: list[str], workers: int,
                   timeout: int) -> dict:
    """Train ChatterBot on the dialogues and ask it every question, in a subprocess of the
    ChatterBot virtualenv running this file's ``--chatterbot-worker`` mode."""
    with tempfile.TemporaryDirectory(prefix="robustness-chatterbot-") as tmp:
        request, response = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request.write_text(json.dumps({"dialogues": dialogues, "questions": questions, "workers": workers}),
                           encoding="utf-8")
        began = time.monotonic()
        try:
            proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--chatterbot-worker",
                                   str(request), str(response)], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"ChatterBot did not answer {len(questions)} questions in {timeout} s"}
        if proc.returncode != 0 or not response.exists():
            return {"skipped": f"ChatterBot run failed: {_last_error_line(proc.stderr)}"}
        result = json.loads(response.read_text(encoding="utf-8"))
        result["seconds"] = round(time.monotonic() - began, 1)
        return result


def chatterbot_worker(request_path: str, response_path: str) -> None:
    """Runs under the ChatterBot virtualenv's python: only the standard library, ChatterBot
    and its dependencies are available here. Each worker process trains its own in-memory bot
    (a few seconds) and answers every n-th question."""
    import multiprocessing

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    questions = request["questions"]
    workers = max(1, min(int(request.get("workers", 1)), len(questions) or 1))
    jobs = [(request["dialogues"], list(range(w, len(questions), workers)), questions) for w in range(workers)]
    if workers == 1:
        parts = [_chatterbot_answer(*jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(_chatterbot_answer, jobs)
    replies: list = [None] * len(questions)
    for part in parts:
        for index, text, confidence in part["replies"]:
            replies[index] = {"text": text, "confidence": confidence}
    meta = {**parts[0]["meta"], "workers": workers,
            "errors": sum(part["meta"]["errors"] for part in parts),
            "train_s": max(part["meta"]["train_s"] for part in parts)}
    Path(response_path).write_text(json.dumps({"replies": replies, **meta}), encoding="utf-8")


def _chatterbot_answer(dialogues, indices, questions) -> dict:
    import logging

    logging.disable(logging.WARNING)
    import chatterbot
    from chatterbot import ChatBot
    from chatterbot.trainers import ListTrainer

    began = time.monotonic()
    try:  # ChatterBot's default tagger needs spaCy's en_core_web_sm, which is not on PyPI
        bot = ChatBot("robustness", database_uri="sqlite://", read_only=True)
        tagger = "PosLemmaTagger (default)"
    except Exception as exc:
        from chatterbot.tagging import LowercaseTagger

        bot = ChatBot("robustness", database_uri="sqlite://", read_only=True, tagger=LowercaseTagger)
        why = " ".join(str(exc).split())
        if "en_core_web_sm" in why:
            why = "spaCy's en_core_web_sm is not installed; spaCy downloads it from GitHub, not PyPI"
        tagger = f"LowercaseTagger (the default PosLemmaTagger failed: {why[:200]})"
    trainer = ListTrainer(bot, show_training_progress=False)
    for dialogue in dialogues:
        trainer.train(dialogue)
    train_s = time.monotonic() - began
    replies, errors = [], 0
    for index in indices:
        random.seed(index)  # a match-less question gets a random stored statement: make it repeatable
        try:
            reply = bot.get_response(questions[index])
            replies.append((index, reply.text, float(reply.confidence or 0.0)))
        except Exception:
            errors += 1
            replies.append((index, "", 0.0))
    return {"replies": replies,
            "meta": {"version": chatterbot.__version__, "tagger": tagger, "errors": errors,
                     "train_s": round(train_s, 1), "logic_adapter": "BestMatch (default)",
                     "trainer": "ListTrainer, one call per corpus dialogue"}}


# --- figures ---------------------------------------------------------------------------------
def set_figures(items: list[Item], replies: dict[str, str], right: dict[tuple, bool],
                table: dict[str, list[str]], system: str, seen: set[str]) -> dict:
    """Exact match and chrF of one system on one set, with breakdowns by kind and by whether
    the original question is in the model's training split."""
    verdicts = [right[(system, item.set, item.question)] for item in items]
    out = {"n": len(items), "exact": _rate(verdicts), "right": sum(verdicts),
           "chrf": round(corpus_chrf([replies[i.question] for i in items],
                                     [table[i.original] for i in items]), 2)}
    if items and items[0].set != "training":
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for item, verdict in zip(items, verdicts):
            for kind in dict.fromkeys(item.kind.split("+")):  # "swap+swap" counts once
                by_kind[kind].append(verdict)
        if items[0].set.startswith("typos"):
            for item, verdict in zip(items, verdicts):
                by_kind[f"{item.kind.count('+') + 1}_typos"].append(verdict)
        out["by_kind"] = {k: {"n": len(v), "exact": _rate(v)} for k, v in sorted(by_kind.items())}
        seen_v = [v for item, v in zip(items, verdicts) if item.original in seen]
        unseen_v = [v for item, v in zip(items, verdicts) if item.original not in seen]
        out["original_trained"] = {"n": len(seen_v), "exact": _rate(seen_v)}
        out["original_held_out"] = {"n": len(unseen_v), "exact": _rate(unseen_v)}
    return out


def _rate(verdicts: list[bool]) -> float | None:
    return round(sum(verdicts) / len(verdicts), 4) if verdicts else None


def _sample(items: list[Item], count: int, seed: int) -> list[Item]:
    if count >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), count))
    return [item for i, item in enumerate(items) if i in keep]


def load_unanswerable(path: str | Path) -> dict[str, list[Item]]:
    """The questions no corpus answer fits, as its dev and test halves."""
    halves: dict[str, list[Item]] = {"dev": [], "test": []}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if "question" not in row:
                raise ValueError(f"{path}:{number}: missing question")
            half = "test" if is_test_half(row["question"]) else "dev"
            halves[half].append(Item(f"unanswerable_{half}", row["question"], "", row.get("kind", ""), ""))
    return halves


def capped_best_threshold(scores, labels, right_training) -> dict:
    """The rule ``dialogue.min_confidence`` is chosen by (``chatbot evaluate --unanswerable``'s):
    ``best_threshold`` of the scores cut to the lowest score of a right training reply
    (``right_training``), so that none of those falls back."""
    from chatbot.evaluation import fallback  # the rules chatbot evaluate --unanswerable uses

    return fallback.capped_best_threshold(scores, labels, min(right_training) if right_training else 1.0)


def unanswerable_report(unanswerable: dict[str, list[Item]], off_corpus: dict, generated: dict, right: dict,
                        all_items: list[Item], min_confidence: float) -> dict:
    """Per half: how many off-corpus questions still get a reply at ``min_confidence`` (the
    rest fall back), their mean confidence, and the ROC AUC of the confidence between the
    right replies of that half's reworded and typo questions and the off-corpus ones; and the
    threshold that best separates right replies from wrong and off-corpus ones together, also
    capped at the lowest confidence of a right reply to a training question (so that none of
    those falls back): on the dev half, what ``dialogue.min_confidence`` is chosen from."""
    from chatbot.evaluation.fallback import best_threshold, roc_auc

    trained = [generated[i.question].confidence for i in all_items
               if i.set == "training" and right[("model", i.set, i.question)]]
    cap = min(trained) if trained else 1.0
    report: dict = {"lowest_right_training_confidence": round(cap, 4)}
    for half, rows in unanswerable.items():
        sets = ("reworded", "typos") if half == "dev" else ("reworded_test", "typos_test")
        asked = [i for i in all_items if i.set in sets]
        answered = [generated[i.question].confidence for i in asked]
        labels = [right[("model", i.set, i.question)] for i in asked]
        outside = [off_corpus[i.question].confidence for i in rows]
        rights = [c for c, ok in zip(answered, labels) if ok]
        auc = roc_auc(rights + outside, [True] * len(rights) + [False] * len(outside))
        scores, judged = answered + outside, labels + [False] * len(outside)  # off-corpus replies are wrong
        report[half] = {
            "n": len(rows),
            "replied_at_min_confidence": _rate([c >= min_confidence for c in outside]),
            "mean_confidence": round(sum(outside) / len(outside), 4) if outside else None,
            "auc_right_vs_unanswerable": None if auc is None else round(auc, 4),
            "best_threshold_with_wrong": best_threshold(scores, judged),
            "best_threshold_with_wrong_capped": capped_best_threshold(scores, judged, trained),
        }
    return report


def ask_all(bot, questions: list[str], batch_size: int, label: str, decoding=None) -> dict:
    """question -> Generation, in batches through the public API."""
    out = {}
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        out.update(zip(chunk, bot.generate(chunk, decoding=decoding)))
        log(f"{label}: {min(start + batch_size, len(questions))}/{len(questions)}")
    return out


def untrained_bot(bundle):
    """The same config, tokenizer and training pairs, with freshly initialised weights."""
    import keras

    from chatbot.dialogue.bot import ChatBot
    from chatbot.model.bundle import Bundle
    from chatbot.model.network import build_model

    keras.utils.set_random_seed(0)
    model = build_model(bundle.tokenizer.vocab_size, bundle.config.model, bundle.config.data.max_output_tokens)
    model.build_for_inference()
    return ChatBot(Bundle(bundle.config, bundle.tokenizer, model, train=bundle.train), warm_up=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                        help="the corpus the dev sets come from; references, fuzzy and ChatterBot use it [corpora/english]")
    parser.add_argument("--reworded", default=str(REWORDED), help="reworded dev set [bench/data/reworded.jsonl]")
    parser.add_argument("--typos", default=str(TYPOS), help="typo dev set [bench/data/typos.jsonl]")
    parser.add_argument("--unanswerable", default=str(UNANSWERABLE),
                        help="questions the corpus does not answer [bench/data/unanswerable.jsonl]")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per generate() call [64]")
    parser.add_argument("--results", metavar="NAME", help="write bench/results/NAME.json (for other dev files, "
                        "which otherwise write nothing)")
    parser.add_argument("--details", metavar="FILE", help="write every question, reply and verdict as JSONL")
    parser.add_argument("--decoding", metavar="JSON", type=json.loads, default={},
                        help="decoding settings over the model's own for every reply (as a request's: "
                             "'{\"strategy\": \"greedy\"}'); needs --results")
    parser.add_argument("--no-chatterbot", action="store_true", help="leave ChatterBot out")
    parser.add_argument("--no-install", action="store_true",
                        help="use ChatterBot only if its virtualenv is already there (never pip install)")
    parser.add_argument("--chatterbot-venv", default=str(CHATTERBOT_VENV), help="[/tmp/chatterbot-venv]")
    parser.add_argument("--chatterbot-workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="ChatterBot processes, each trains its own copy [min(4, cores)]")
    parser.add_argument("--install-timeout", type=int, default=900, help="seconds for pip install chatterbot [900]")
    parser.add_argument("--chatterbot-timeout", type=int, default=3600, help="seconds for ChatterBot's answers [3600]")
    parser.add_argument("--seed", type=int, default=1234, help="sample seed of --quick [1234]")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 60 training, 40 reworded, 40 typo questions; ChatterBot only if already installed")
    parser.add_argument("--chatterbot-worker", nargs=2, metavar=("REQUEST", "RESPONSE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decoding and not args.results:
        parser.error("--decoding needs --results NAME: its figures are not the model's own")
    if args.chatterbot_worker:
        chatterbot_worker(*args.chatterbot_worker)
        return

    began = time.perf_counter()
    corpus = load_corpus_quietly(args.corpus)
    corpus_examples = corpus.examples(0, True)
    table = answers_table(corpus_examples)
    categories = question_categories(corpus_examples)
    corpus_norm = {normalise(q) for q in table}
    loaded = load_dev_set(args.reworded, "reworded") + load_dev_set(args.typos, "typos")
    dev = {name: [i for i in loaded if i.set == name] for name in SETS if name != "training"}
    for name, items in dev.items():
        bad = [i.original for i in items if i.original not in table]
        if bad:
            sys.exit(f"{name}: {len(bad)} originals are not questions of {args.corpus}, e.g. {bad[0]!r}")
        clash = [i.question for i in items if normalise(i.question) in corpus_norm]
        if clash:
            log(f"warning: {name}: {len(clash)} questions equal a corpus question once normalised, e.g. {clash[0]!r}")

    from chatbot.dialogue.bot import ChatBot  # TensorFlow from here on
    from chatbot.evaluation.fallback import best_threshold, roc_auc

    bot = ChatBot.load(args.model)
    bot.wait_ready()
    bundle = bot.bundle
    log(f"loaded {bundle.path} in {time.perf_counter() - began:.1f}s: {bundle.config.model.cell.upper()} "
        f"{bundle.config.model.units}, decoding {bundle.config.decoding.strategy}")
    train_qs, train_source = training_questions(bundle, corpus_examples)
    seen = set(train_qs)
    for question in train_qs:  # a bundle trained on another corpus: its own answers count
        table.setdefault(question, [])
    if train_source == "bundle":
        for example in bundle.training_examples():
            if example.answer.strip() not in table[example.question]:
                table[example.question].append(example.answer.strip())
    items = {"training": [Item("training", q, q, "training", (categories.get(q) or [""])[0]) for q in train_qs],
             **dev}
    # Dev questions the model was trained on would make the dev sets meaningless.
    trained_norm = {normalise(q) for q in train_qs}
    leaked = sum(normalise(i.question) in trained_norm for name in dev for i in dev[name])
    if args.quick:
        items = {name: _sample(v, QUICK_SIZES[name], args.seed) for name, v in items.items()}
    all_items = [item for name in SETS for item in items[name]]
    questions = list(dict.fromkeys(item.question for item in all_items))
    log(f"{', '.join(f'{len(items[n])} {n}' for n in SETS)} questions ({len(questions)} distinct); "
        f"training split from the {train_source}")

    # (a) the shipped pipeline, through the public batched API; (b) its decoder alone
    t0 = time.perf_counter()
    generated = ask_all(bot, questions, args.batch_size, "model", args.decoding or None)
    model_s = time.perf_counter() - t0
    alone = ask_all(bot, questions, args.batch_size, "decoder alone", {**args.decoding, "retrieval": False})
    unanswerable = load_unanswerable(args.unanswerable)
    if args.quick:
        unanswerable = {half: _sample(rows, 20, args.seed) for half, rows in unanswerable.items()}
    off_corpus = ask_all(bot, [i.question for rows in unanswerable.values() for i in rows], args.batch_size,
                         "unanswerable", args.decoding or None)
    # (c) retrieval alone: the first answer of the nearest training question, no model, found
    # by the model's own retriever (its data.retriever, its stored question embeddings) for the
    # question as the model reads it (its data.spelling)
    from chatbot.inference.retrieval import AnswerMemory

    memory = AnswerMemory(bundle.train, bundle.config.data.retriever, bundle.question_vectors)
    read = dict(zip(questions, (turns[-1] for turns in bot.generator.read([[q] for q in questions]))))
    nearest = {q: (memory.retrieve(read[q], 1) or [("", "", 0.0)])[0] for q in questions}
    # (d) the shipped pipeline with freshly initialised weights (capped length: it never ends)
    untrained = ask_all(untrained_bot(bundle), questions, args.batch_size, "untrained",
                        {**args.decoding, "max_length": 64})

    # (b) fuzzy retrieval over the corpus' questions
    t0 = time.perf_counter()
    fuzzy = fuzzy_replies(questions, table)
    fuzzy_s = time.perf_counter() - t0
    log(f"model {model_s:.1f}s, fuzzy {fuzzy_s:.1f}s")

    # (c) ChatterBot, in its own virtualenv
    chatterbot: dict
    if args.no_chatterbot:
        chatterbot = {"skipped": "left out with --no-chatterbot"}
    else:
        python, why = ensure_chatterbot(Path(args.chatterbot_venv), not (args.quick or args.no_install),
                                        args.install_timeout)
        if python is None:
            chatterbot = {"skipped": why}
        else:
            log(f"ChatterBot {why}: training {args.chatterbot_workers} in-memory copies on "
                f"{len(corpus.dialogues)} dialogues, then {len(questions)} questions")
            chatterbot = run_chatterbot(python, [[u.text for u in d.utterances] for d in corpus.dialogues],
                                        questions, args.chatterbot_workers, args.chatterbot_timeout)
        if "skipped" in chatterbot:
            log(f"ChatterBot skipped: {chatterbot['skipped']}")

    replies = {"model": {q: g.text for q, g in generated.items()},
               "decoder_alone": {q: g.text for q, g in alone.items()},
               "retrieval_alone": {q: nearest[q][1] for q in questions},
               "untrained": {q: g.text for q, g in untrained.items()},
               "fuzzy": {q: fuzzy[q][1] for q in questions}}
    if "replies" in chatterbot:
        replies["chatterbot"] = {q: r["text"] for q, r in zip(questions, chatterbot.pop("replies"))}
    right = {(system, item.set, item.question): is_right(replies[system][item.question], table[item.original])
             for system in replies for item in all_items}

    result: dict = {"model_path": str(bundle.path), "corpus": str(args.corpus),
                    "sets": {name: len(items[name]) for name in SETS},
                    "exact": {}, "chrf": {}}
    figures = {system: {name: set_figures(items[name], replies[system], right, table, system, seen)
                        for name in SETS} for system in replies}
    for name in SETS:
        result["exact"][name] = {s: figures[s][name]["exact"] for s in replies}
        result["chrf"][name] = {s: figures[s][name]["chrf"] for s in replies}
    for name in SETS:  # how often fuzzy picks a question that has a right answer at all
        picks = [any(is_right(a, table[i.original]) for a in table[fuzzy[i.question][0]]) for i in items[name]]
        figures["fuzzy"][name]["match_right"] = _rate(picks)
        figures["fuzzy"][name]["match_original"] = _rate([fuzzy[i.question][0] == i.original for i in items[name]])

    # The model's score and its confidence (Generation.confidence) as signals of a right reply;
    # the dialogue manager falls back under dialogue.fallback_threshold (score) or
    # dialogue.min_confidence (confidence).
    dialogue = bundle.config.dialogue
    for signal, bundle_threshold in (("score", dialogue.fallback_threshold),
                                     ("confidence", dialogue.min_confidence)):
        report = {"auc": {}, f"mean_{signal}_right": {}, f"mean_{signal}_wrong": {}}
        for name in (*SETS, "all", "dev", "test"):
            chosen = (all_items if name == "all" else
                      [i for i in all_items if i.set in ("reworded", "typos")] if name == "dev" else
                      [i for i in all_items if i.set.endswith("_test")] if name == "test" else items[name])
            s = [getattr(generated[i.question], signal) for i in chosen]
            y = [right[("model", i.set, i.question)] for i in chosen]
            auc = roc_auc(s, y)
            report["auc"][name] = None if auc is None else round(auc, 4)
            ok = [v for v, r in zip(s, y) if r]
            bad = [v for v, r in zip(s, y) if not r]
            report[f"mean_{signal}_right"][name] = round(sum(ok) / len(ok), 4) if ok else None
            report[f"mean_{signal}_wrong"][name] = round(sum(bad) / len(bad), 4) if bad else None
            if name in ("all", "dev", "test"):
                report[f"best_threshold_{name}"] = best_threshold(s, y)
                report[f"bundle_threshold_{name}"] = threshold_report(s, y, bundle_threshold)
        result[signal] = report
    result["unanswerable"] = unanswerable_report(unanswerable, off_corpus, generated, right, all_items,
                                                 dialogue.min_confidence)
    for system in ABLATIONS:
        result[system] = figures[system]
    # Where (a) and (c) part ways: a reply right by one and wrong by the other. "retrieval_only"
    # is what the decoder lost of what retrieval found; "model_only" what it found beyond it.
    # McNemar's exact p says whether the difference could be chance (chatbot evaluate --against's).
    from chatbot.evaluation.compare import mcnemar_exact, tally

    result["model_vs_retrieval"] = {}
    for name in SETS:
        counts = tally((right[("model", name, i.question)], right[("retrieval_alone", name, i.question)])
                       for i in items[name])
        parted = dict(zip(("both", "model_only", "retrieval_only", "neither"), counts))
        result["model_vs_retrieval"][name] = {**{key: n for key, n in parted.items() if n}, "p_value": round(
            mcnemar_exact(parted["model_only"], parted["retrieval_only"]), 4)}
    result["fuzzy"] = {**figures["fuzzy"], "seconds": round(fuzzy_s, 1),
                       "rule": "difflib.get_close_matches(q, corpus_questions, n=1, cutoff=0.0); "
                               "reply = first answer of the match in corpus order"}
    result["chatterbot"] = {**figures["chatterbot"], **chatterbot} if "chatterbot" in figures else chatterbot

    exact = result["exact"]
    detail = {
        "training": (exact["training"]["model"] or 0) >= TARGETS["training_exact_min"],
        "reworded": (exact["reworded"]["model"] or 0) >= TARGETS["reworded_exact_min"],
        "typos": (exact["typos"]["model"] or 0) >= TARGETS["typos_exact_min"],
        "reworded_test": (exact["reworded_test"]["model"] or 0) >= TARGETS["reworded_exact_min"],
        "typos_test": (exact["typos_test"]["model"] or 0) >= TARGETS["typos_exact_min"],
        "model_vs_retrieval_alone": {name: (exact[name]["model"] or 0) >= (exact[name]["retrieval_alone"] or 0)
                                     - TARGETS["model_vs_retrieval_alone_max_loss"] for name in SETS},
        "untrained": {name: (exact[name]["untrained"] or 0) <= TARGETS["untrained_exact_max"] for name in SETS},
        "decoder_alone": {"training": (exact["training"]["decoder_alone"] or 0)
                          >= TARGETS["decoder_alone_training_min"],
                          "typos": (exact["typos"]["decoder_alone"] or 0) >= TARGETS["decoder_alone_typos_min"]},
        "confidence_auc": (result["confidence"]["auc"]["dev"] or 0) >= TARGETS["confidence_auc_min"],
    }
    result["targets"] = TARGETS
    result["pass"] = all(v if isinstance(v, bool) else all(v.values()) for v in detail.values())
    result["pass_detail"] = detail
    result["dev_questions_in_training_split"] = leaked
    result["model_seconds"] = round(model_s, 1)
    result["model_ms_per_question"] = round(1000 * model_s / max(1, len(questions)), 2)
    result["decoding"] = dataclasses.asdict(bot.resolve_decoding(args.decoding or None))  # what the replies used
    if args.decoding:
        result["decoding_overrides"] = args.decoding
    result["retriever"] = bundle.config.data.retriever if bundle.config.data.retrieved_pairs else None
    result["fallback_threshold"] = bundle.config.dialogue.fallback_threshold
    result["peak_mb"] = peak_rss_mb()
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["quick"] = args.quick
    if args.quick:
        result["partial"] = True  # a smoke run does not replace the committed figures

    if args.details:
        with open(args.details, "w", encoding="utf-8") as out:
            for item in all_items:
                row = {"set": item.set, "question": item.question, "original": item.original,
                       "kind": item.kind, "category": item.category,
                       "model": {"reply": replies["model"][item.question],
                                 "score": round(generated[item.question].score, 4),
                                 "confidence": round(generated[item.question].confidence, 4),
                                 "right": right[("model", item.set, item.question)]},
                       "retrieval_alone": {"reply": replies["retrieval_alone"][item.question],
                                           "match": nearest[item.question][0],
                                           "similarity": round(nearest[item.question][2], 4),
                                           "right": right[("retrieval_alone", item.set, item.question)]},
                       "fuzzy": {"reply": replies["fuzzy"][item.question], "match": fuzzy[item.question][0],
                                 "right": right[("fuzzy", item.set, item.question)]}}
                if "chatterbot" in replies:
                    row["chatterbot"] = {"reply": replies["chatterbot"][item.question],
                                         "right": right[("chatterbot", item.set, item.question)]}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        log(f"wrote {len(all_items)} rows to {args.details}")
    log(" | ".join(f"{name}: " + ", ".join(f"{s} {result['exact'][name][s]}" for s in replies) for name in SETS))
    if args.results:  # figures of other dev files, kept under their own name
        emit(result, args.results)
        return
    if (Path(args.reworded).resolve(), Path(args.typos).resolve()) != (REWORDED.resolve(), TYPOS.resolve()):
        result["partial"] = True  # other dev files: not the committed figures
    emit(result, results_name(args.model))


if __name__ == "__main__":
    main()
