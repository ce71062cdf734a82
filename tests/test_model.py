"""The Keras model and the compiled generator, on small random models and the tiny bot."""

from __future__ import annotations

import dataclasses
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from chatbot.config import DataConfig, DecodingConfig, ModelConfig
from chatbot.inference.decoding import XLA_MAX_BATCH, greedy_shape, padded_rows, xla_batch, xla_width
from chatbot.inference.generator import Generator
from chatbot.model.network import Seq2Seq, build_model, masked_accuracy, token_figures
from chatbot.data.tokenizer import ANS, PAD, RET, SEP, SIM_TOKENS, START

VOCAB = 50


def random_model(**overrides) -> Seq2Seq:
    """A small untrained model. Tests seed it with ``keras.utils.set_random_seed``: Keras 3's
    initializers ignore ``tf.random.set_seed``, so its weights would differ from run to run."""
    config = ModelConfig(**{"embedding_dim": 8, "units": 16, **overrides})
    model = Seq2Seq(VOCAB, config)
    model.build_for_inference()
    return model


ARCHITECTURES = [
    {"cell": "gru", "attention": "dot"},
    {"cell": "lstm", "attention": "additive"},
    {"cell": "gru", "attention": "none", "layers": 2},
    {"cell": "lstm", "attention": "dot", "bidirectional": True, "layers": 2},
]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_step_decoding_matches_teacher_forcing(arch):
    """The generator's one-step path must compute exactly what training optimised."""
    keras.utils.set_random_seed(0)
    model = random_model(**arch)
    source = np.array([[5, 6, 7, 8], [9, 10, PAD, PAD]], dtype=np.int32)
    decoder_input = np.array([[START, 11, 12, 13], [START, 14, 15, 16]], dtype=np.int32)
    full = model((source, decoder_input), training=False).numpy()

    encoder_outputs, states, source_mask = model.encode(source)
    for t in range(decoder_input.shape[1]):
        logits, states = model.decode_step(decoder_input[:, t], states, encoder_outputs, source_mask)
        np.testing.assert_allclose(logits.numpy(), full[:, t, :], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES[:2], ids=["gru-dot", "lstm-additive"])
def test_source_padding_does_not_change_the_output(arch):
    model = random_model(**arch)
    decoder_input = np.array([[START, 11, 12]], dtype=np.int32)
    short = model((np.array([[5, 6, 7]], np.int32), decoder_input)).numpy()
    padded = model((np.array([[5, 6, 7, PAD, PAD, PAD]], np.int32), decoder_input)).numpy()
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", [ARCHITECTURES[0], {"cell": "lstm", "attention": "dot", "layers": 2}],
                         ids=["gru", "lstm-2-layers"])
def test_inference_encoder_stops_at_the_longest_input_with_keras_values(arch):
    """At inference the encoder steps only to the longest input (``rnn_to_longest``), not over
    the padding to the compiled width: the same outputs at every real position and the same
    final states as Keras' own loop over every column, eagerly and under XLA."""
    keras.utils.set_random_seed(0)
    model = random_model(**arch)
    source = np.array([[5, 6, 7, 8, 9, PAD, PAD, PAD], [9, 10, PAD, PAD, PAD, PAD, PAD, PAD],
                       [PAD] * 8], dtype=np.int32)
    real = (source != PAD)[:, :, None]

    def encoded(training):
        outputs, states, _ = model.encode(source, training=training)
        return outputs, states

    for run in (encoded, tf.function(encoded, jit_compile=True)):
        (ours, our_states), (keras_outputs, keras_states) = run(False), run(True)  # training: Keras' loop
        assert ours.shape == keras_outputs.shape
        np.testing.assert_array_equal(np.where(real, ours, 0), np.where(real, keras_outputs, 0))
        for mine, theirs in zip(our_states, keras_states, strict=True):
            np.testing.assert_array_equal(mine, theirs)
        assert not np.any(ours.numpy()[:, 5:])  # past the longest input: never computed


def test_bidirectional_decoder_is_twice_as_wide():
    model = random_model(bidirectional=True, units=16)
    assert model.decoder_units == 32
    assert model.count_params() > random_model(units=16).count_params()


def h5_datasets(path) -> dict[str, np.ndarray]:
    import h5py

    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


BUILT_ARCHITECTURES = ARCHITECTURES + [
    {"cell": "gru", "attention": "dot", "copy_attention": True, "copy_continuation": True},
    {"cell": "lstm", "attention": "additive", "copy_attention": True, "bidirectional": True},
    {"cell": "transformer", "heads": 4, "layers": 2},
    {"cell": "transformer", "heads": 4, "copy_attention": True, "copy_continuation": True},
]


@pytest.mark.parametrize("arch", BUILT_ARCHITECTURES, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_building_from_the_configuration_makes_the_weights_a_call_would(arch, monkeypatch):
    """``build`` creates every weight without running the network (loading a bundle starts
    with it): the same weights, in the same order and with the same first values, as Keras
    makes by tracing a call; and calling the built model adds none (a layer ``build`` forgot
    would be made at the first reply, after the bundle's weights were loaded: random)."""
    from keras.src import backend

    config = ModelConfig(**{"embedding_dim": 8, "units": 16, **arch})
    keras.utils.set_random_seed(3)
    built = build_model(VOCAB, config, 10)
    built.build_for_inference()
    from chatbot.model import transformer

    for kind in (Seq2Seq, transformer.Transformer, transformer.EncoderLayer, transformer.DecoderLayer,
                 transformer.CachedAttention, transformer.FeedForward):
        monkeypatch.setattr(kind, "build", keras.layers.Layer.build)  # Keras' own: build by tracing
    keras.utils.set_random_seed(3)
    traced = build_model(VOCAB, config, 10)
    spec = keras.KerasTensor((2, 5), dtype="int32")
    backend.compute_output_spec(traced.call, (spec, spec))  # Keras' way: its layers build as they are called
    assert [tuple(w.shape) for w in built.weights] == [tuple(w.shape) for w in traced.weights]
    for ours, keras_own in zip(built.weights, traced.weights):
        np.testing.assert_array_equal(ours.numpy(), keras_own.numpy())
    assert all(layer.built for layer in built._flatten_layers())
    before = [id(v) for v in built.variables]
    source = np.array([[5, 6, 7, 0]], np.int32)
    built((source, source[:, :3]), training=False)
    encoder_outputs, states, ids = built.encode(tf.constant(source))
    built.decode_step(tf.constant([START]), states, encoder_outputs, ids)
    assert [id(v) for v in built.variables] == before


def test_save_weights_writes_what_keras_writes_and_loads_back(tmp_path):
    """``Seq2Seq.save_weights`` goes through Keras' private in-memory saving; a Keras upgrade
    that changes it must fail here, not in users' checkpoints."""
    import keras

    model = random_model(cell="lstm", attention="additive", layers=2)
    ours, theirs = tmp_path / "ours.weights.h5", tmp_path / "theirs.weights.h5"
    model.save_weights(ours)
    keras.Model.save_weights(model, theirs)  # Keras' own HDF5 writer
    a, b = h5_datasets(ours), h5_datasets(theirs)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    fresh = random_model(cell="lstm", attention="additive", layers=2)
    fresh.load_weights(ours)
    for mine, loaded in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(mine.numpy(), loaded.numpy())


def test_a_failed_weights_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import chatbot.files

    path = tmp_path / "model.weights.h5"
    random_model().save_weights(path)
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chatbot.files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        random_model(units=32).save_weights(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_masked_accuracy_ignores_padding():
    y_true = np.array([[1, 2, PAD, PAD]])
    logits = np.zeros((1, 4, 5), np.float32)
    logits[0, 0, 1] = logits[0, 1, 3] = 1.0  # right, wrong, then padding predicted as anything
    assert float(masked_accuracy(y_true, logits)) == pytest.approx(0.5)


def test_token_figures_weigh_every_token_alike():
    """Perplexity is per token: a batch of one long answer counts for its six tokens, not as one
    of two batch means (Keras' evaluate)."""
    keras.utils.set_random_seed(0)
    model = random_model()
    short = ((np.array([[5, 6]], np.int32), np.array([[START]], np.int32)), np.array([[7]], np.int32))
    long = ((np.array([[8, 9]], np.int32), np.array([[START, 11, 12, 13, 14, 15, 16]], np.int32)),
            np.array([[11, 12, 13, 14, 15, 16, PAD]], np.int32))  # one padded position too
    batches = [short, long]
    losses, hits = [], []
    for (source, decoder_input), target in batches:
        scores = model((source, decoder_input)).numpy()[0]
        for step, token in enumerate(target[0]):
            if token != PAD:
                logp = scores[step] - np.log(np.exp(scores[step] - scores[step].max()).sum()) - scores[step].max()
                losses.append(-logp[token])
                hits.append(scores[step].argmax() == token)
    dataset = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=(
        (tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([1, None], tf.int32)), tf.TensorSpec([1, None], tf.int32)))
    loss, accuracy = token_figures(model, dataset)
    assert len(losses) == 7
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(hits))


# --- the generator ---------------------------------------------------------------------------
def test_tiny_model_answers_its_training_pairs_exactly(tiny_bot, tiny_pairs):
    replies = tiny_bot.generate([q for q, _ in tiny_pairs])
    wrong = [(q, a, r.text) for (q, a), r in zip(tiny_pairs, replies) if r.text != a]
    assert not wrong, wrong
    assert all(r.score <= 0 and r.tokens >= 2 for r in replies)


def test_batch_gives_the_same_replies_as_one_by_one(tiny_bot, tiny_pairs):
    questions = [q for q, _ in tiny_pairs]
    batched = tiny_bot.generate(questions)
    single = [tiny_bot.generate([q])[0] for q in questions]
    assert [r.text for r in batched] == [r.text for r in single]
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in single], atol=1e-4)


def test_no_retracing_across_questions_of_different_lengths(tiny_bot):
    """Each loop is traced once, whatever the lengths (a batch's loop once per stage count)."""
    tiny_bot.generate(["a"])
    tiny_bot.generate(["a", "b"])
    before = tiny_bot.generator.trace_count
    for n in range(1, 30):
        tiny_bot.generate([" ".join(["what"] * n) + "?"])
        tiny_bot.generate(["a", " ".join(["a much longer question"] * n)])
    assert tiny_bot.generator.trace_count == before


def test_a_server_traces_greedy_loops_for_every_batch_size_before_its_first_request(tiny_bundle_path, tiny_pairs):
    """The disk cache finds a compiled program by its function's name, which counts the traces
    made in the process before it. A server warming up for batches traces greedy decoding's loop
    for every batch size then, in a fixed order, even when the model's own decoding is a beam
    search: requests at temperature 0 then trace none, in whatever order their batch sizes come,
    and every start names the loops alike."""
    from chatbot.dialogue.bot import ChatBot
    from chatbot.model.bundle import Bundle

    with ChatBot(Bundle.load(tiny_bundle_path), db="sqlite://") as bot:  # its own generator: changed below
        bot.generator.decoding = bot.generator.resolve({"strategy": "beam", "beam": 2})
        bot.warm_widths((1, 2), (16,))
        before = bot.generator.trace_count
        for rows in (8, 2, 5, 1):
            bot.generate([q for q, _ in tiny_pairs[:rows]], decoding={"strategy": "greedy"})
        assert bot.generator.trace_count == before


def test_a_server_traces_the_beam_searches_of_every_number_of_replies_before_its_first_request(tiny_bundle_path,
                                                                                               tiny_pairs):
    """Requests for n replies (OpenAI's ``n``) search a beam ``max(n, beam)`` wide keeping n, a
    loop of its own: a server traces them for every n up to its limit, in a fixed order, so that
    their programs keep their names (and their keys in the disk cache) from one start to the next."""
    from chatbot.dialogue.bot import ChatBot

    with ChatBot.load(tiny_bundle_path, db="sqlite://") as bot:
        bot.warm_widths((1, 2), (16,), most_replies=3)
        before = bot.generator.trace_count
        for n in (3, 1, 2):
            beam = max(n, bot.decoding.beam)
            replies = bot.generate([tiny_pairs[0][0]], decoding={"strategy": "beam", "beam": beam, "n_best": n})
            assert len(replies[0].alternatives) <= n
        assert bot.generator.trace_count == before


def test_a_server_compiles_batches_at_every_width_but_the_narrowest_before_its_first_request(tiny_bot):
    """A batch pads to its widest input, so only the narrowest width is rare for batches; the
    next one is common (a third of serve_load.py's batches of 2), and was compiled under load."""
    generator = tiny_bot.generator
    generator.warm_widths((16, 32, 64, 128, 256), (2,))
    assert {32, 64, 128, 256} <= {width for batch, width, _ in generator.loops.compiled_shapes if batch == 2}


def test_max_length_bounds_the_reply(tiny_bot, tiny_pairs):
    question, answer = max(tiny_pairs, key=lambda p: len(p[1]))
    capped = tiny_bot.generate([question], max_length=2)[0]
    assert capped.tokens <= 2
    assert len(capped.text) < len(answer)


def test_unknown_characters_and_context_do_not_crash(tiny_bot):
    reply = tiny_bot.generate(["Ωμέγα 😀 \u202eRTL\u202c ???"], [["earlier turn"]])[0]
    assert isinstance(reply.text, str)


def test_empty_question_is_a_clear_error(tiny_bot):
    from chatbot.errors import InputError

    with pytest.raises(InputError, match="empty"):
        tiny_bot.ask("   \n\t ")


XLA_ARCHITECTURES = ARCHITECTURES + [{"cell": "gru", "attention": "dot", "copy_attention": True,
                                      "copy_continuation": True}]


@pytest.mark.parametrize("arch", XLA_ARCHITECTURES, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_the_xla_greedy_loop_gives_the_graph_loops_tokens(arch):
    """``_greedy_loop`` (XLA, input padded to a power-of-two width) must decode exactly what
    ``_step_loop`` decodes, scores included; it compiles once per width, not per input."""
    keras.utils.set_random_seed(3)
    model = random_model(**arch)
    generator = Generator(model, None, DataConfig(), DecodingConfig(max_length=24))
    rng = np.random.default_rng(0)
    retrieved = [RET, SIM_TOKENS[-1], 20, 21, ANS, 30, 31, 32, 33, 30, 31, 34, SEP]
    sources = [rng.integers(11, VOCAB, (1, width)).astype(np.int32) for width in (1, 3, 16, 17, 40)]
    sources.append(np.array([retrieved + [20, 22]], np.int32))
    for source, min_length in zip(sources, (0, 0, 5, 0, 0, 2)):
        config = DecodingConfig(max_length=24, min_length=min_length)
        assert generator.loops.uses_xla(config, 1)
        ids, total, lengths = (t.numpy() for t in generator.loops.greedy(source, 24, min_length))
        want_ids, want_total, want_lengths = (t.numpy() for t in generator.loops.step(source, config, 0))
        assert lengths[0] == want_lengths[0] >= min_length
        assert ids[0, :lengths[0]].tolist() == want_ids[0, :lengths[0]].tolist()
        np.testing.assert_allclose(total, want_total, rtol=1e-4, atol=1e-4)
    assert generator.compiled_widths == {16, 32, 64}
    assert generator.loops._greedy[False, 1].experimental_get_tracing_count() == 1


def assert_unaided_sums_are_teacher_forced(generator, source, bare, max_length=12):
    """The greedy loops' log-prob sums given ``bare`` (rows riding along in their batch) equal
    what the teacher-forced model gives each reply's tokens given ``bare``, for greedy (XLA and
    graph) and sampling. (Summed over every token: an untrained model may emit [PAD], which the
    scoring pass would leave out.)"""
    config = DecodingConfig(max_length=max_length)
    runs = [generator.loops.greedy(source, max_length, 0, bare)]
    for strategy in ("greedy", "sample"):
        runs.append(generator.loops.step(source, dataclasses.replace(config, strategy=strategy), 3, bare=bare))
    for ids, total, lengths, unaided in ([t.numpy() for t in run] for run in runs):
        for row, n in enumerate(lengths):
            tokens = ids[row, :n]
            decoder_input = np.concatenate([[START], tokens[:-1]])[None].astype(np.int32)
            logits = generator.model((bare[row:row + 1], decoder_input), training=False)
            logprobs = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()[0]
            np.testing.assert_allclose(unaided[row], logprobs[np.arange(n), tokens].sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", XLA_ARCHITECTURES, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_every_architecture_scores_replies_given_the_bare_input_as_it_decodes(arch):
    keras.utils.set_random_seed(5)
    generator = Generator(random_model(**arch), None, DataConfig(), DecodingConfig(max_length=12))
    retrieved = [RET, SIM_TOKENS[-1], 20, 21, ANS, 30, 31, 32, 33, 30, 31, 34, SEP]
    questions = [[20, 22], [23], [24, 25, 26]]
    source = padded_rows([retrieved[:4 + 3 * row] + [SEP] + q for row, q in enumerate(questions)])
    assert_unaided_sums_are_teacher_forced(generator, source, padded_rows(questions))


def test_the_xla_loop_is_used_only_where_it_computes_the_same(tiny_bot):
    generator = tiny_bot.generator
    greedy = generator.resolve({})
    assert generator.loops.uses_xla(greedy, 1) and generator.loops.uses_xla(greedy, XLA_MAX_BATCH)
    # Larger batches shrink as replies end, in the graph loop; XLA would run every row to the longest.
    assert not generator.loops.uses_xla(greedy, XLA_MAX_BATCH + 1)
    for settings in ({"repetition_penalty": 1.2}, {"no_repeat_ngram_size": 2}, {"strategy": "sample"},
                     {"beam": 2}, {"max_length": generator.loops.capacity + 1}):
        assert not generator.loops.uses_xla(generator.resolve(settings), 1), settings


def test_a_batch_decodes_in_the_xla_loop_to_the_same_tokens_as_the_graph_loop(tiny_bot, tiny_pairs):
    generator = tiny_bot.generator
    questions = [[q] for q, _ in tiny_pairs[:3]] + [["something it never saw"]]  # 4 rows, then 3 (padded to 4)
    for rows in (questions, questions[:3]):
        source = generator.encode_inputs(generator.read(rows), generator.retrieve(generator.read(rows)))
        xla_ids, xla_total, xla_lengths = (t.numpy() for t in generator.loops.greedy(source, 30, 0))
        graph = generator.loops.step(source, generator.resolve({"max_length": 30}), 0)
        ids, total, lengths = (t.numpy() for t in graph)
        assert (xla_lengths == lengths).all()
        for row, n in enumerate(lengths):
            assert list(xla_ids[row, :n]) == list(ids[row, :n])
        np.testing.assert_allclose(xla_total, total, rtol=1e-4, atol=1e-4)
    assert (4, xla_width(source.shape[1]), 0) in generator.loops.compiled_shapes


def assert_a_batch_decodes_as_each_input_alone(generator, questions, max_length=40):
    """A batch in the XLA greedy loop, whose rows end at different steps and so move through
    its halving stages, gives every input the tokens, log-prob sums (given its input, and
    given its bare input) and length that decoding it alone gives."""
    read = generator.read([[q] for q in questions])
    source, bare = generator.encode_inputs(read, generator.retrieve(read)), generator.encode_inputs(read)
    batched = [t.numpy() for t in generator.loops.greedy(source, max_length, 0, bare)]
    lengths = batched[2]
    assert np.median(lengths) < lengths.max(), lengths  # most rows end before the last: stages switch
    for row in range(len(questions)):
        alone_read = read[row:row + 1]
        alone = [t.numpy() for t in generator.loops.greedy(
            generator.encode_inputs(alone_read, generator.retrieve(alone_read)), max_length, 0,
            generator.encode_inputs(alone_read))]
        n = alone[2][0]
        assert lengths[row] == n and batched[0][row, :n].tolist() == alone[0][0, :n].tolist(), questions[row]
        np.testing.assert_allclose([batched[1][row], batched[3][row]], [alone[1][0], alone[3][0]],
                                   rtol=1e-4, atol=1e-4)
    assert generator.loops.greedy_shape(len(questions), source.shape[1], bare.shape[1]) in generator.loops.compiled_shapes


def test_bare_inputs_are_padded_as_wide_as_the_others_where_that_is_free():
    """A recurrent encoder stops at the longest input, so a batch's bare inputs (no retrieved
    pairs, a few tokens) can be padded as wide as the others: one XLA program per batch and
    width. A Transformer's encoder works on every column, so there they keep their own width."""
    assert greedy_shape(8, 100, 10, bare_as_wide=True) == (8, 128, 128)
    assert greedy_shape(8, 100, 10) == (8, 128, 16)
    assert greedy_shape(1, 100, 10) == (1, 128, 128)  # one input: both rows in one encoder call
    assert greedy_shape(3, 100, None, bare_as_wide=True) == (4, 128, 0)
    assert random_model().stops_at_longest_input
    assert not random_model(bidirectional=True).stops_at_longest_input  # Keras' loop: every column


def batch_ending_apart(tiny_pairs) -> list[str]:
    """Eight questions whose replies end apart (a joke is long), for a batch's XLA stages."""
    return [q for q, _ in tiny_pairs[7:13]] + ["something it never saw", "what is your nmae"]


def test_a_batch_of_replies_that_end_apart_decodes_as_each_input_alone(tiny_bot, tiny_pairs):
    questions = batch_ending_apart(tiny_pairs)
    assert len(questions) == XLA_MAX_BATCH
    assert_a_batch_decodes_as_each_input_alone(tiny_bot.generator, questions)
    assert_a_batch_decodes_as_each_input_alone(tiny_bot.generator, questions[1:6])  # 5 rows, padded to 8


@pytest.mark.parametrize("beam, n_best", [(3, 1), (4, 3)])
def test_beam_search_in_the_xla_loop_gives_the_graph_loops_n_best(tiny_bot, tiny_pairs, beam, n_best):
    generator = tiny_bot.generator
    config = generator.resolve({"beam": beam, "n_best": n_best, "max_length": 30})
    assert generator.loops.uses_xla_beam(config, 1) and generator.loops.uses_xla_beam(config, XLA_MAX_BATCH)
    questions = [[q] for q, _ in tiny_pairs[:2]] + [["something it never saw"]]  # 3 rows, padded to 4
    for rows in (questions[:1], questions):
        read = generator.read(rows)
        source = generator.encode_inputs(read, generator.retrieve(read))
        xla = [t.numpy() for t in generator.loops.beam_xla(source, config)]
        graph = [t.numpy() for t in generator.loops.beam(source, config)]
        assert (xla[2] == graph[2]).all()  # lengths
        for row in range(len(rows)):
            for j in range(n_best):
                n = graph[2][row, j]
                assert list(xla[0][row, j, :n]) == list(graph[0][row, j, :n])
        np.testing.assert_allclose(xla[1], graph[1], rtol=1e-4, atol=1e-4)
    assert (beam, n_best, 4, xla_width(source.shape[1])) in generator.loops.compiled_beam_shapes
    for settings in ({"repetition_penalty": 1.2}, {"no_repeat_ngram_size": 2}, {"beam": 9},
                     {"max_length": generator.loops.capacity + 1}):
        assert not generator.loops.uses_xla_beam(generator.resolve({"beam": beam, **settings}), 1), settings
    assert not generator.loops.uses_xla_beam(config, XLA_MAX_BATCH + 1)


def test_the_greedy_and_sampling_loops_score_each_reply_given_its_bare_input_as_the_scoring_pass_does(tiny_bot, tiny_pairs):
    """With bare rows (the inputs without retrieved pairs) riding along, the XLA greedy loop and
    the graph loop (greedy and sampling, rows leaving as they end) decode the same tokens as
    without them, and give each reply the log-prob sum that the teacher-forced scoring pass
    gives it given the bare input."""
    generator = tiny_bot.generator
    questions = [[q] for q, _ in tiny_pairs[:2]] + [["something it never saw"]]  # 3 rows, padded to 4
    for rows in (questions[:1], questions):
        read = generator.read(rows)
        source, bare = generator.encode_inputs(read, generator.retrieve(read)), generator.encode_inputs(read)
        plain = [t.numpy() for t in generator.loops.greedy(source, 30, 0)]
        ids, total, lengths, unaided = (t.numpy() for t in generator.loops.greedy(source, 30, 0, bare))
        assert (lengths == plain[2]).all() and (ids == plain[0]).all()
        np.testing.assert_allclose(total, plain[1], rtol=1e-5, atol=1e-5)
        replies = [ids[row, :n] for row, n in enumerate(lengths)]
        scored = generator.loops.scores(list(bare), replies)
        np.testing.assert_allclose(unaided / lengths, scored, rtol=1e-4, atol=1e-4)
        assert not np.allclose(total / lengths, scored, rtol=1e-3)  # the bare input changes the scores
        for sample in (False, True):  # the graph loop, greedy and sampling
            config = generator.resolve({"max_length": 30, "strategy": "sample" if sample else "greedy"})
            plain = [t.numpy() for t in generator.loops.step(source, config, 7)]
            ids, total, lengths, unaided = (t.numpy() for t in generator.loops.step(source, config, 7, bare=bare))
            assert (lengths == plain[2]).all() and (ids == plain[0]).all()
            replies = [ids[row, :n] for row, n in enumerate(lengths)]
            np.testing.assert_allclose(unaided / lengths, generator.loops.scores(list(bare), replies),
                                       rtol=1e-4, atol=1e-4)
    width = xla_width(source.shape[1])
    assert (4, width, width) in generator.loops.compiled_shapes  # bare inputs as wide: a recurrent encoder
    assert (1, width, width) in generator.loops.compiled_shapes  # one input


def test_an_n_best_list_offers_each_reply_once_before_any_again():
    """A beam often holds a reply twice, once with a space before [END]: the API's n choices came
    back as "How are you doing?" and "How are you doing? "."""
    from chatbot.inference.generator import Hypothesis, distinct_first

    def h(text):
        return Hypothesis(text, np.array([1]), -1.0, 1, None)

    beam = [h("How are you doing?"), h("How are you doing? "), h("Fine."), h(" Fine."), h("Hi")]
    assert [x.text for x in distinct_first(beam)] == [
        "How are you doing?", "Fine.", "Hi", "How are you doing? ", " Fine."]
    assert distinct_first(beam[:1]) == beam[:1]


def test_warming_up_a_beam_search_compiles_the_one_asked_for(tiny_bot):
    """``ask --beam 3 --n-best 2`` warms its own search up, not the model's: its first reply's
    latency is then the decode's, not the trace's (half a second)."""
    from chatbot.dialogue.bot import ChatBot

    fresh = ChatBot(tiny_bot.bundle, warm_up=False)  # its own loops: none compiled by other tests
    generator = fresh.generator
    asked = {"strategy": "beam", "beam": 3, "n_best": 2}
    searched = generator.searched(generator.resolve(asked))
    def compiled():
        return {shape for shape in generator.loops.compiled_beam_shapes
                if shape[:3] == (searched.beam, searched.n_best, 1)}
    assert not compiled()
    fresh.warm_up(("beam",), asked)
    assert compiled()


def test_a_beam_kept_whole_is_decoded_one_input_at_a_time_with_the_same_hypotheses(tiny_bot, tiny_pairs):
    """Re-ranking keeps the whole beam, whose inputs end late: a batch would run until its slowest
    one ends, so each input is decoded alone, and gets what it gets when asked alone."""
    generator = tiny_bot.generator
    whole = generator.resolve({"strategy": "beam", "beam": 4, "n_best": 4, "max_length": 30})
    assert generator.decodes_alone(whole)
    assert not generator.decodes_alone(generator.resolve({"strategy": "beam", "beam": 4, "n_best": 1}))
    assert not generator.decodes_alone(generator.resolve({"strategy": "beam", "beam": 4, "n_best": 2,
                                                          "repetition_penalty": 1.2}))
    questions = [[q] for q, _ in tiny_pairs[:5]] + [["something it never saw"]]
    shapes = set(generator.loops.compiled_beam_shapes)
    together = generator.generate(questions, decoding=whole)
    assert {shape[2] for shape in generator.loops.compiled_beam_shapes - shapes} <= {1}  # batch 1 only
    for question, reply in zip(questions, together):
        [alone] = generator.generate([question], decoding=whole)
        assert reply.alternatives == alone.alternatives and reply.token_ids == alone.token_ids


def test_inputs_that_decode_alone_run_on_as_many_threads_as_tensorflow_has(tiny_bot, tiny_pairs, monkeypatch):
    """A server's queue of beam searches kept whole is decoded ``decode_threads()`` inputs at a
    time (XLA's programs run on TensorFlow's intra-op threads): on the pool's threads, with the
    hypotheses of one input after another."""
    import chatbot.inference.generator as generator_module

    generator = tiny_bot.generator
    whole = generator.resolve({"strategy": "beam", "beam": 4, "n_best": 4, "max_length": 30})
    questions = [[q] for q, _ in tiny_pairs[:6]]
    ran_on: set[str] = set()
    beam_one = generator.loops.beam_xla

    def recording(source, config):
        ran_on.add(threading.current_thread().name)
        return beam_one(source, config)

    monkeypatch.setattr(generator.loops, "beam_xla", recording)
    monkeypatch.setattr(generator_module, "decode_threads", lambda: 1)
    one_by_one = generator.generate(questions, decoding=whole)
    assert ran_on == {threading.current_thread().name}
    ran_on.clear()
    monkeypatch.setattr(generator_module, "decode_threads", lambda: 3)
    at_once = generator.generate(questions, decoding=whole)
    assert ran_on and all(name.startswith("chatbot-beam") for name in ran_on)
    assert [(r.alternatives, r.token_ids) for r in at_once] == [(r.alternatives, r.token_ids) for r in one_by_one]


def test_warm_widths_compiles_ahead_what_a_reply_would_compile(tiny_bot):
    generator = tiny_bot.generator
    read = generator.read([["What is your name?"]])
    width = xla_width(generator.encode_inputs(read, generator.retrieve(read)).shape[1])
    generator.warm_widths((width, 200))
    assert {width, 256} <= generator.compiled_widths
    compiled = set(generator.compiled_widths)
    tiny_bot.generate(["What is your name?"])
    assert generator.compiled_widths == compiled
