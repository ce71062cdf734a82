"""Open-dialogue corpora (issue 18): the chitchat-dataset reader, the corpus name, whole
conversations held out, and a context model trained, saved and asked through a session.

``tests/data/chitchat_excerpt.json`` holds 40 conversations of chitchat-dataset 0.9.0 (MIT,
``tests/data/LICENSE-chitchat.txt``), copied unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatbot.data import corpus as corpus_module
from chatbot.data.corpus import load_corpus, split_by_dialogue
from chatbot.data.text import clean_text
from chatbot.errors import CorpusError

from conftest import DATA, tiny_config

EXCERPT = DATA / "chitchat_excerpt.json"


def conversations(path: Path = EXCERPT) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_each_speakers_run_of_messages_is_one_turn():
    raw = conversations()
    corpus = load_corpus(EXCERPT)
    assert len(corpus.dialogues) == len(raw)  # every excerpt conversation has two turns or more
    first_id, first = next(iter(raw.items()))
    turns = [clean_text(" ".join(m["text"] for m in run)) for run in first["messages"]]
    dialogue = corpus.dialogues[0]
    assert [u.text for u in dialogue.utterances] == turns
    assert dialogue.utterances[2].source == f"{EXCERPT.name}:{first_id}/3"  # conversation and turn
    # Consecutive turns become pairs, with the turns before them as context.
    example = corpus.examples(context_turns=2)[2]
    assert example.context == (dialogue.utterances[0].text, dialogue.utterances[1].text)
    assert (example.question, example.answer) == (dialogue.utterances[2].text, dialogue.utterances[3].text)


def test_an_unanswered_conversation_gives_no_pair_and_no_warning(tmp_path, caplog):
    data = conversations()
    first_id = next(iter(data))
    data["lonely"] = {"messages": [[{"text": "anyone there?", "sender": "a"}]]}
    file = tmp_path / "chat.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    corpus = load_corpus(file)
    assert len(corpus.dialogues) == len(data) - 1 and not corpus.skipped and "skipped" not in caplog.text
    assert first_id in corpus.dialogues[0].utterances[0].source


@pytest.mark.parametrize("body, why", [
    ({"messages": "hello"}, "conversation bad: expected an object with a 'messages' list"),
    ({"messages": [[{"text": "hi"}], [{"txt": "hello"}]]}, "conversation bad, turn 2: expected a list of messages"),
    (["hi", "hello"], "conversation bad: expected an object with a 'messages' list"),
])
def test_a_malformed_conversation_is_named_and_skipped(tmp_path, body, why):
    data = {"good": {"messages": [[{"text": "hi"}], [{"text": "hello"}]]}, "bad": body}
    file = tmp_path / "chat.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    corpus = load_corpus(file)
    assert [[u.text for u in d.utterances] for d in corpus.dialogues] == [["hi", "hello"]]
    assert len(corpus.skipped) == 1 and why in str(corpus.skipped[0])
    with pytest.raises(CorpusError, match="conversation bad"):
        load_corpus(file, strict=True)


@pytest.mark.parametrize("text, why", [("[1, 2]", "expected a chitchat-dataset object"),
                                       ("{\"a\": ", "invalid JSON")])
def test_a_file_that_is_not_chitchat_fails_with_its_name(tmp_path, text, why):
    file = tmp_path / "other.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=why) as raised:
        load_corpus(file)
    assert str(file) in str(raised.value)


def test_the_corpus_name_reads_the_installed_package_or_says_how_to_install_it(monkeypatch, tmp_path):
    installed = tmp_path / "chitchat_dataset" / "__init__.py"
    installed.parent.mkdir()
    installed.write_text("")
    (installed.parent / "dataset.json").write_bytes(EXCERPT.read_bytes())

    class Spec:
        origin = str(installed)

    monkeypatch.chdir(tmp_path)  # no folder called "chitchat" here
    monkeypatch.setattr(corpus_module.importlib.util, "find_spec", lambda name: Spec())
    corpus = load_corpus("chitchat")
    assert corpus.name == "chitchat" and corpus.root == installed.parent / "dataset.json"
    assert len(corpus.dialogues) == len(conversations())
    monkeypatch.setattr(corpus_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CorpusError, match=r"pip install -e \"\.\[chitchat\]\""):
        load_corpus("chitchat")
    # A path that exists wins over the name.
    (tmp_path / "chitchat").mkdir()
    (tmp_path / "chitchat" / "pairs.tsv").write_text("hi\thello\n", encoding="utf-8")
    assert load_corpus("chitchat").name is None


def test_a_dialogue_split_holds_out_whole_conversations():
    corpus = load_corpus(EXCERPT)
    train, validation = split_by_dialogue(corpus.dialogues, 0.25, seed=3, context_turns=2)
    conversation = lambda e: e.source.rsplit("/", 1)[0]  # noqa: E731
    held_out = {conversation(e) for e in validation}
    assert held_out and not held_out & {conversation(e) for e in train}
    assert len(held_out) == round(len(corpus.dialogues) * 0.25)
    # ... and the same seed holds out the same conversations.
    again = split_by_dialogue(corpus.dialogues, 0.25, seed=3, context_turns=2)[1]
    assert [e.source for e in again] == [e.source for e in validation]


def test_a_context_model_trains_on_conversations_and_replies_in_a_session(tmp_path):
    """The chitchat recipe's data settings on the excerpt: whole conversations held out, no
    training pairs in the bundle (no retrieval or spelling reads them), and a session's
    history reaching the model as context."""
    from chatbot import ChatBot
    from chatbot.training.pipeline import train

    config = tiny_config(**{"data.context_turns": 2, "data.split_by": "dialogues",
                            "data.validation_fraction": 0.1, "data.spelling": False,
                            "training.epochs": 2, "training.batch_size": 64,
                            "decoding.strategy": "beam", "decoding.beam": 4, "decoding.mmi_weight": 0.5})
    bundle = train(EXCERPT, config, tmp_path / "chat", verbose=0)
    assert not (bundle.path / "train.jsonl").exists() and bundle.validation
    assert bundle.corpus["validation"] == len(bundle.validation)
    held_out = {e.source.rsplit("/", 1)[0] for e in bundle.validation}
    assert len(held_out) == round(len(conversations()) * 0.1)
    with ChatBot.load(bundle.path, db=f"sqlite:///{tmp_path / 'chat.db'}") as bot:
        session = bot.new_session().id
        bot.reply("hello there", session=session)
        reply = bot.reply("how are you doing today?", session=session)
        assert reply.text  # min_length aside, the beam's best is a decoded text
        generator = bot.generator
        seen = []
        real = generator.encode_inputs
        generator.encode_inputs = lambda inputs, *rest: seen.append([list(i) for i in inputs]) or real(inputs, *rest)
        bot.reply("what are you up to?", session=session)
        generator.encode_inputs = real
        assert seen[0][0] == ["how are you doing today?", reply.text, "what are you up to?"]
