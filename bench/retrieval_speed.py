"""Retrieval speed as the answer memory grows: one ``AnswerMemory.retrieve(q, 2)`` lookup (what
every reply pays before decoding) at 1k, 10k and 100k stored questions, and how often the
trigram index that large memories use finds the same nearest question as the exact scan.

    python bench/retrieval_speed.py            # 1k, 10k, 100k; 300 timed queries each
    python bench/retrieval_speed.py --quick    # 1k and 10k, 100 queries (partial: no results file)

Memories: the bundled model's training pairs (``models/default/train.jsonl``, about 1,000
distinct questions), topped up with seeded synthetic questions made from their words (a real
question with about half its words swapped for other corpus words, so that many stored
questions look alike). Queries: seeded noisy variants of real questions
(``chatbot.data.noise.noisy``: typos, dropped, doubled and swapped words, contractions, case).
Memories of ``INDEX_MIN_QUESTIONS`` or more use the index; the exact scan is timed beside it on
the same queries, and ``recall_top1`` is the share of queries whose top-1 question is the same
both ways.

The hybrid retriever (``data.retriever = "hybrid"``, the default model's) adds a sentence
embedding per query and a dot product with every stored question's embedding: ``hybrid`` at
each size times ``retrieve(q, k, vector=...)`` with the query embedded beforehand, and
``embed_query`` times the embedding alone (it does not grow with the memory). From
``INDEX_MIN_QUESTIONS`` on, the embeddings are searched through ``VectorIndex`` (an inverted
file) instead of a product with every one; ``source_top1`` says whether it still finds the
query's own question. The real
questions carry their real embeddings; synthetic ones carry seeded random unit vectors (the
cost of a lookup does not depend on the values; embedding 100k made-up questions would take
minutes). Progress goes to stderr; the figures are one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import tracemalloc
from pathlib import Path

from _common import ROOT, emit, log, peak_rss_mb, percentile

TARGETS = {"p50_ms_at_100k_max": 5.0}


def load_pairs(path: Path):
    from chatbot.data.corpus import Example

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Example(tuple(r["context"]), r["question"], r["answer"]) for r in rows if not r["context"]]


def synthetic_pairs(real, size: int, seed: int):
    """``real`` plus seeded synthetic pairs up to ``size`` distinct questions: a real question
    with each word swapped, with probability 1/2, for a word of another real question."""
    from chatbot.data.corpus import Example

    questions = {e.question for e in real}
    out = list(real)
    templates = sorted(questions)
    words = sorted({w for q in templates for w in q.split()})
    answers = {e.question: e.answer for e in real}
    rng = random.Random(seed)
    while len(questions) < size:
        template = rng.choice(templates)
        made = " ".join(rng.choice(words) if rng.random() < 0.5 else w for w in template.split())
        if made not in questions:
            questions.add(made)
            out.append(Example((), made, answers[template]))
    return out


def timed(memory, queries, k: int) -> list[float]:
    for q in queries[:5]:  # untimed warm-up
        memory.retrieve(q, k)
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        memory.retrieve(q, k)
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def timed_hybrid(memory, queries, vectors, k: int) -> list[float]:
    for q, v in list(zip(queries, vectors))[:5]:
        memory.retrieve(q, k, vector=v)
    ms = []
    for q, v in zip(queries, vectors):
        t0 = time.perf_counter()
        memory.retrieve(q, k, vector=v)
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def hybrid_memory(pairs, real_vectors: dict, seed: int):
    """A hybrid ``AnswerMemory`` over ``pairs`` whose stored embeddings are the real ones for
    real questions and seeded random unit vectors for synthetic ones."""
    import numpy as np

    from chatbot.inference.retrieval import AnswerMemory, fingerprint

    lexical = AnswerMemory(pairs)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(lexical), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for row, question in enumerate(lexical.questions):
        if question in real_vectors:
            vectors[row] = real_vectors[question]
    return AnswerMemory(pairs, "hybrid", (vectors, fingerprint(lexical.questions)))


def stats(ms: list[float]) -> dict:
    return {f"p{q}_ms": round(percentile(ms, q), 3) for q in (50, 90, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=str(ROOT / "models" / "default" / "train.jsonl"),
                        help="training pairs the memories start from [models/default/train.jsonl]")
    parser.add_argument("--sizes", default="1000,10000,100000", help="stored questions [1000,10000,100000]")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per size [300]")
    parser.add_argument("--recall-queries", type=int, default=200,
                        help="queries also run through the exact scan, for recall, at indexed sizes [200]")
    parser.add_argument("--k", type=int, default=2, help="pairs retrieved per lookup [2]")
    parser.add_argument("--seed", type=int, default=1234, help="synthetic questions and query noise [1234]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1k and 10k, 100 queries")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 10000] or sizes[:1]
        args.queries, args.recall_queries = min(args.queries, 100), min(args.recall_queries, 100)

    from chatbot.data.noise import noisy
    from chatbot.inference import retrieval
    from chatbot.inference.retrieval import AnswerMemory, GramIndex

    real = load_pairs(Path(args.pairs))
    real_questions = sorted({e.question for e in real})
    rng = random.Random(args.seed)
    sources = [rng.choice(real_questions) for _ in range(args.queries)]
    queries = [noisy(q, rng) for q in sources]
    log(f"{len(real)} pairs, {len(real_questions)} distinct questions in {args.pairs}; "
        f"{len(queries)} noisy queries, e.g. {queries[0]!r} <- {sources[0]!r}")
    threshold = retrieval.INDEX_MIN_QUESTIONS
    from chatbot.inference.sentence_encoder import shared

    encoder = shared()
    real_vectors = dict(zip(real_questions, encoder.encode(real_questions)))
    embed_ms = []
    query_vectors = []
    for q in queries:
        t0 = time.perf_counter()
        query_vectors.append(encoder.encode([q])[0])
        embed_ms.append((time.perf_counter() - t0) * 1000)
    log(f"embedding one query (all-MiniLM-L6-v2): p50 {percentile(embed_ms, 50):.2f} ms")

    results = {}
    for size in sizes:
        pairs = synthetic_pairs(real, size, args.seed) if size > len(real_questions) else real
        t0 = time.perf_counter()
        memory = AnswerMemory(pairs)
        build_s = time.perf_counter() - t0
        indexed = memory._index is not None  # the bench reports which path ran
        label = f"{round(size / 1000)}k"
        row = {"questions": len(memory), "indexed": indexed, "build_s": round(build_s, 3)}
        if indexed:
            keys = memory._keys
            tracemalloc.start()
            index = GramIndex(keys)
            row["index_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)  # held after the build
            tracemalloc.stop()
            row["index_arrays_mb"] = round(index.nbytes / 2**20, 1)
            del index
        ms = timed(memory, queries, args.k)
        row.update(stats(ms))
        log(f"{label}: {len(memory)} questions, {'index' if indexed else 'exact scan'}, built in "
            f"{build_s:.2f}s; retrieve(q, {args.k}) p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")
        if indexed:
            retrieval.INDEX_MIN_QUESTIONS = math.inf
            exact = AnswerMemory(pairs)
            retrieval.INDEX_MIN_QUESTIONS = threshold
            sample = list(zip(queries, sources))[:args.recall_queries]
            exact_ms, same1, same_k, found_index, found_exact = [], 0, 0, 0, 0
            for q, source in sample:
                t0 = time.perf_counter()
                want = exact.retrieve(q, args.k)
                exact_ms.append((time.perf_counter() - t0) * 1000)
                got = memory.retrieve(q, args.k)
                same1 += bool(got) and bool(want) and got[0][0] == want[0][0]
                same_k += [g[0] for g in got] == [w[0] for w in want]
                found_index += bool(got) and got[0][0] == source
                found_exact += bool(want) and want[0][0] == source
            n = len(sample)
            row.update({"exact_scan": stats(exact_ms), "recall_queries": n,
                        "recall_top1": round(same1 / n, 4),  # same top-1 question as the exact scan
                        f"same_top{args.k}": round(same_k / n, 4),  # same k questions, same order
                        "source_top1_index": round(found_index / n, 4),  # top-1 is the query's own question
                        "source_top1_exact": round(found_exact / n, 4)})
            log(f"{label}: exact scan p50 {row['exact_scan']['p50_ms']:.1f} ms; recall top-1 "
                f"{row['recall_top1']:.3f}, same top-{args.k} {row[f'same_top{args.k}']:.3f} over {n} queries")
            del exact
        hybrid = hybrid_memory(pairs, real_vectors, args.seed)
        row["hybrid"] = stats(timed_hybrid(hybrid, queries, query_vectors, args.k))
        found = sum(bool(got) and got[0][0] == source for got, source in
                    ((hybrid.retrieve(q, args.k, vector=v), source)
                     for q, v, source in list(zip(queries, query_vectors, sources))[:args.recall_queries]))
        row["hybrid"]["source_top1"] = round(found / min(len(queries), args.recall_queries), 4)
        log(f"{label}: hybrid retrieve(q, {args.k}, vector) p50 {row['hybrid']['p50_ms']:.2f} ms "
            f"(+ embedding the query), top-1 is the query's own question {row['hybrid']['source_top1']:.3f}")
        results[label] = row
        del memory, hybrid

    at_100k = results.get("100k")
    emit({
        "k": args.k,
        "queries": len(queries),
        "index_min_questions": threshold,
        "index_candidates": retrieval.INDEX_CANDIDATES,
        "index_max_postings": retrieval.INDEX_MAX_POSTINGS,
        "sizes": results,
        "embed_query": stats(embed_ms),
        "targets": TARGETS,
        "pass": None if at_100k is None else at_100k["p50_ms"] <= TARGETS["p50_ms_at_100k_max"],
        # the hybrid lookup at 100k, the query's embedding excluded (it does not grow with the memory)
        "hybrid_pass": None if at_100k is None else at_100k["hybrid"]["p50_ms"] <= TARGETS["p50_ms_at_100k_max"],
        "peak_mb": peak_rss_mb(),
        "quick": args.quick,
        **({"partial": True} if args.quick or "100k" not in results else {}),
    })


if __name__ == "__main__":
    main()
