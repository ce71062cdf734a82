"""What conversation context buys (issue 18): two models of the chit-chat recipe
(models/chitchat.toml) trained alike on the same chitchat-dataset conversations, one reading
no earlier turn (data.context_turns = 0), one the two before the question (2), both measured
on the same held-out conversations (data.split_by = "dialogues": no turn of them, and so no
context, was seen in training).

Figures per model: held-out loss, perplexity and token accuracy (teacher-forced, as the training
summary reports them), and the perplexity per word of the held-out replies, which does not
depend on how each model's tokenizer cut the words. The replies to predict are the same for
both; only what the model reads differs.

With ``--model``, no training: a trained context model (the shipped ``models/chitchat``) on its
own held-out conversations, read as trained (the turns before each question), with no context,
and with the context of another held-out example: whether the weights use what was said before.

    pip install -e ".[chitchat]"
    python bench/context_value.py                        # 1,200 conversations, 3 epochs each
    python bench/context_value.py --conversations 300 --epochs 1 --quick   # a smoke run
    python bench/context_value.py --model models/chitchat  # the shipped model, context ablated
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, log  # noqa: E402

RECIPE = ROOT / "models" / "chitchat.toml"


def subset(conversations: int, seed: int, folder: Path) -> Path:
    """A chitchat-dataset file of ``conversations`` seeded-random conversations (with two turns
    or more), in the package's own format."""
    from chatbot.data.corpus import resolve_corpus

    data = json.loads(resolve_corpus("chitchat").read_text(encoding="utf-8"))
    usable = sorted(key for key, body in data.items() if len(body.get("messages", [])) >= 2)
    chosen = sorted(random.Random(seed).sample(usable, min(conversations, len(usable))))
    file = folder / "chitchat_subset.json"
    file.write_text(json.dumps({key: data[key] for key in chosen}), encoding="utf-8")
    return file


def measure(corpus: Path, context_turns: int, epochs: int, folder: Path) -> dict:
    from chatbot.config import Config
    from chatbot.training.pipeline import train

    config = Config.load(RECIPE).with_overrides({
        "data.context_turns": context_turns, "training.epochs": epochs,
        "data.validation_fraction": 0.1})
    began = time.perf_counter()
    bundle = train(corpus, config, folder / f"context{context_turns}", verbose=0,
                   on_stage=lambda message: log(f"context {context_turns}: {message}"))
    seconds = time.perf_counter() - began
    validation = bundle.metrics["validation"]
    data = bundle.config.data
    tokens = sum(len(bundle.tokenizer.encode_target(e.answer, data.max_output_tokens)) for e in bundle.validation)
    words = sum(len(e.answer.split()) + 1 for e in bundle.validation)  # + 1: the end of the reply
    return {"context_turns": context_turns, "train_pairs": bundle.corpus["train"],
            "held_out_pairs": len(bundle.validation),
            "held_out_conversations": len({e.source.rsplit("/", 1)[0] for e in bundle.validation}),
            "loss": validation["loss"], "perplexity": validation["perplexity"],
            "token_accuracy": validation["token_accuracy"],
            "word_perplexity": round(math.exp(validation["loss"] * tokens / words), 3),
            "vocabulary": bundle.tokenizer.vocab_size, "train_seconds": round(seconds, 1)}


def ablate(model: str, seed: int) -> dict:
    """A context model's held-out figures with its inputs' context as trained, removed, and
    taken from another held-out example (the same number of turns, the wrong conversation)."""
    import dataclasses

    from chatbot.evaluation.evaluate import teacher_forced
    from chatbot.evaluation.metrics import perplexity
    from chatbot.model.bundle import Bundle

    bundle = Bundle.load(model)
    held_out = list(bundle.validation)
    shuffled = [e.context for e in held_out]
    random.Random(seed).shuffle(shuffled)
    readings = {"as_trained": held_out,
                "no_context": [dataclasses.replace(e, context=()) for e in held_out],
                "other_context": [dataclasses.replace(e, context=c) for e, c in zip(held_out, shuffled)]}
    out = {}
    for name, examples in readings.items():
        loss, accuracy = teacher_forced(bundle, examples)
        out[name] = {"loss": round(loss, 5), "perplexity": round(perplexity(loss), 3),
                     "token_accuracy": round(accuracy, 5)}
        log(f"{name}: {out[name]}")
    return {"model": model, "context_turns": bundle.config.data.context_turns, "held_out_pairs": len(held_out),
            "held_out_conversations": len({e.source.rsplit("/", 1)[0] for e in held_out}), "readings": out,
            "no_context_perplexity_ratio": round(out["no_context"]["perplexity"] / out["as_trained"]["perplexity"], 4),
            "other_context_perplexity_ratio": round(
                out["other_context"]["perplexity"] / out["as_trained"]["perplexity"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--model", help="measure this trained context model with its context ablated instead")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures not saved")
    args = parser.parse_args()
    if args.model:
        result = ablate(args.model, args.seed)
        if args.quick:
            result["partial"] = True
        emit(result, f"context_value_{Path(args.model).name}")  # beside the two-model comparison
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = subset(args.conversations, args.seed, folder)
        log(f"{args.conversations} conversations in {corpus.name}; training context 0, then context 2")
        runs = [measure(corpus, turns, args.epochs, folder) for turns in (0, 2)]
    none, two = runs
    result = {"recipe": str(RECIPE.relative_to(ROOT)), "conversations": args.conversations, "epochs": args.epochs,
              "runs": runs,
              "perplexity_ratio": round(two["perplexity"] / none["perplexity"], 4),
              "word_perplexity_ratio": round(two["word_perplexity"] / none["word_perplexity"], 4),
              "token_accuracy_gain": round(two["token_accuracy"] - none["token_accuracy"], 5)}
    if args.quick:
        result["partial"] = True
    emit(result)


if __name__ == "__main__":
    main()
