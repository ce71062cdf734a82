"""The bundled chit-chat model, ``models/chitchat`` (issue 18): small, judged on conversations it
never saw, and reading the turns before each message from the session's history."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT

MODEL = ROOT / "models" / "chitchat"


def test_the_bundle_is_small_and_carries_only_what_replies_need():
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size < 20 * 2 ** 20, f"{size / 2 ** 20:.1f} MB"
    assert not (MODEL / "train.jsonl").exists()  # no retrieval or spelling reads the training pairs
    manifest = json.loads((MODEL / "bundle.json").read_text())
    assert manifest["corpus"]["path"] == "chitchat"  # a name, not this machine's site-packages
    config = json.loads((MODEL / "config.json").read_text())
    assert config["data"]["context_turns"] == 2 and config["data"]["split_by"] == "dialogues"
    assert config["data"]["retrieved_pairs"] == 0 and config["decoding"]["min_length"] >= 1  # never empty


def test_it_is_judged_on_held_out_conversations_and_beats_chance_by_far():
    metrics = json.loads((MODEL / "metrics.json").read_text())
    validation = metrics["validation"]
    vocabulary = json.loads((MODEL / "bundle.json").read_text())["vocab_size"]
    # An untrained model's perplexity is about the vocabulary's size (4,000); a model that learnt
    # the language of chit-chat is far below it.
    assert validation["perplexity"] < vocabulary / 20, validation
    held_out = [json.loads(line) for line in (MODEL / "validation.jsonl").read_text().splitlines()]
    conversations = {row["source"].rsplit("/", 1)[0] for row in held_out}
    assert len(held_out) > 1000 and len(conversations) > 100


@pytest.fixture(scope="module")
def chitchat(tmp_path_factory):
    from chatbot import ChatBot

    db = tmp_path_factory.mktemp("chitchat") / "chat.db"
    with ChatBot.load("chitchat", db=f"sqlite:///{db}") as bot:
        yield bot


def test_it_replies_reading_the_previous_turns_of_the_session(chitchat):
    generator = chitchat.generator
    seen = []
    real = generator.encode_inputs
    generator.encode_inputs = lambda inputs, *rest: seen.append([list(i) for i in inputs]) or real(inputs, *rest)
    try:
        session = chitchat.new_session().id
        first = chitchat.reply("hi! how are you today?", session=session)
        second = chitchat.reply("what do you do for fun?", session=session)
    finally:
        generator.encode_inputs = real
    assert first.text and second.text  # decoded text, never empty (decoding.min_length 1)
    assert seen[-1] == [["hi! how are you today?", first.text, "what do you do for fun?"]]


def test_its_replies_depend_on_what_was_said(chitchat):
    prompts = ["hi! how are you today?", "what is your favorite food?", "do you have any pets?",
               "where did you grow up?", "what kind of music do you like?", "i just got back from a run"]
    replies = [chitchat.ask(prompt) for prompt in prompts]
    assert all(replies) and len(set(replies)) >= len(prompts) - 1, replies
