"""The chit-chat model (issue 18): how varied its replies are, what MMI reranking changes, and
whether reply latency grows with the corpus.

1. Diversity. Prompts come from the bundle's held-out conversations (``validation.jsonl``, whole
   conversations never trained on), each with the two turns before it as context. The first
   ``--dev`` distinct prompts choose the decoding: greedy, or beam search with each MMI weight of
   ``--weights`` (0: none), the one whose replies have the best chrF against the real replies (a
   relevance check). The next ``--prompts`` report every decoding side by side: distinct-1/2,
   the share of the 10 most frequent replies, the replies' own perplexity given their inputs,
   BLEU/chrF against the held-out replies, reply length. Nothing is chosen on the prompts it is
   reported on.
2. Load time (``ChatBot.load`` until ready to reply, TensorFlow already imported) and latency: ``ChatBot.ask`` (the model's own decoding, batch 1), the chit-chat model and
   ``models/default`` asked in turn in the same run: p50 of each and their ratio (issue 18:
   within 1.5x, although the chit-chat model learnt from 100x more pairs).

    pip install -e ".[chitchat]"
    python bench/chitchat.py                      # models/chitchat: 500 dev + 1,000 test prompts
    python bench/chitchat.py --model /tmp/cc --prompts 100 --dev 50 --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as `chatbot ask` and `chatbot chat` decode

import argparse
import time

from _common import ROOT, emit, log, percentile, results_name

GREEDY = {"strategy": "greedy", "beam": 1, "n_best": 1}


def prompts(bundle, dev: int, test: int) -> tuple[list, list]:
    """(dev, test) distinct held-out inputs, each (context..., question) with its replies."""
    from chatbot.evaluation.metrics import distinct_inputs, input_key

    inputs = distinct_inputs(bundle.validation)
    if len(inputs) < dev + test:
        log(f"only {len(inputs)} held-out inputs: dev {dev}, test {len(inputs) - dev}")
    chosen = set(inputs[:dev + test])
    examples = [e for e in bundle.validation if input_key(e) in chosen]
    dev_inputs = set(inputs[:dev])
    return ([e for e in examples if input_key(e) in dev_inputs],
            [e for e in examples if input_key(e) not in dev_inputs])


def figures(bot, examples, decoding: dict) -> dict:
    from chatbot.evaluation.evaluate import evaluate

    report = evaluate(bot, examples, decoding=decoding).summary()
    keys = ("inputs", "distinct_1", "distinct_2", "top10_share", "reply_perplexity", "bleu", "chrf",
            "reply_words")
    out = {key: report[key] for key in keys}
    out["perplexity"] = report["perplexity"]  # teacher-forced, the same for every decoding
    out["latency_p50_ms"] = report["latency_ms"]["p50"]
    return out


def latency(models: dict, questions: list[tuple], rounds: int) -> dict:
    """p50 of ``ask`` per model, the models asked in turn so that both see the same load."""
    times = {name: [] for name in models}
    for bot in models.values():
        bot.warm_widths()  # compile the decode loop for the common input widths first, as a server does
        for context, question in questions[:3]:
            bot.ask(question, context)  # untimed warm-up
    for _ in range(rounds):
        for context, question in questions:
            for name, bot in models.items():
                t0 = time.perf_counter()
                bot.ask(question, context)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: {"p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3)}
            for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/chitchat")
    parser.add_argument("--prompts", type=int, default=1000, help="test prompts reported")
    parser.add_argument("--dev", type=int, default=500, help="prompts that choose the MMI weight")
    parser.add_argument("--beam", type=int, default=8, help="the beam width MMI reranks")
    parser.add_argument("--weights", default="0,0.1,0.25,0.5", help="MMI weights tried on the dev prompts")
    parser.add_argument("--latency-questions", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures not saved")
    args = parser.parse_args()

    from chatbot import ChatBot
    from chatbot.evaluation.metrics import distinct_inputs

    import tensorflow  # noqa: F401  (imported first, so the load below times the model alone)

    began = time.perf_counter()
    bot = ChatBot.load(args.model)
    bot.wait_ready()  # the decode loops compiled: ready for the first reply
    load_seconds = time.perf_counter() - began
    own = bot.decoding
    beam = {"strategy": "beam", "beam": args.beam, "n_best": args.beam}
    dev, test = prompts(bot.bundle, args.dev, args.prompts)
    weights = [float(w) for w in args.weights.split(",")]
    candidates = {"greedy": GREEDY, **{f"beam {beam['beam']}" + (f" + MMI {w}" if w else ""): {**beam, "mmi_weight": w}
                                       for w in weights}}
    log(f"{args.model}: {len(dev)} dev and {len(test)} test held-out pairs; choosing among {list(candidates)}")
    dev_figures = {name: figures(bot, dev, decoding) for name, decoding in candidates.items()}
    chosen = max(dev_figures, key=lambda name: dev_figures[name]["chrf"])
    log(f"chosen: {chosen} (dev chrF {dev_figures[chosen]['chrf']})")
    decodings = {**candidates, "model's own": {}}
    test_figures = {}
    for name, decoding in decodings.items():
        test_figures[name] = figures(bot, test, decoding)
        log(f"{name}: {test_figures[name]}")

    questions = [(e.context, e.question) for e in test][:args.latency_questions]
    default = ChatBot.load(ROOT / "models" / "default")
    times = latency({"chitchat": bot, "default": default}, questions, rounds=1)
    log(f"latency: {times}")
    result = {
        "model": args.model, "load_seconds": round(load_seconds, 2), "corpus_pairs": bot.bundle.corpus.get("examples"),
        "default_corpus_pairs": default.bundle.corpus.get("examples"),
        "decoding": {"own": {k: getattr(own, k) for k in ("strategy", "beam", "n_best", "mmi_weight",
                                                          "no_repeat_ngram_size", "min_length")}},
        "dev": {"prompts": len(distinct_inputs(dev)),
                "by_decoding": dev_figures, "chosen": chosen, "chosen_by": "chrF"},
        "test": {"prompts": len(distinct_inputs(test)), "by_decoding": test_figures},
        "latency": {**times, "questions": len(questions),
                    "chitchat_over_default_p50": round(times["chitchat"]["p50_ms"] / times["default"]["p50_ms"], 3),
                    "target_max": 1.5},
    }
    default.close()
    bot.close()
    if args.quick:
        result["partial"] = True
    emit(result, results_name(args.model, default="models/chitchat"))


if __name__ == "__main__":
    main()
