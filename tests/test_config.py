"""Config: defaults, JSON/TOML files, strict key and value checking, overrides, and the field
metadata that validation, the CLI flags and the REPL's /set are generated from."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chatbot.cli.main import build_parser, decoding_overrides, main
from chatbot.cli.repl import SETTINGS
from chatbot.config import (
    Config,
    DataConfig,
    DecodingConfig,
    DialogueConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
    specs,
)
from chatbot.errors import ConfigError


def test_defaults_validate():
    config = Config()
    assert config.validate() is config
    assert config.model == ModelConfig()
    assert config.tokenizer.level == "subword"
    assert config.model.attention == "dot"
    assert config.data.context_turns == 0
    assert Config.from_dict({}) == Config()


def test_sections_are_independent_instances():
    a, b = Config(), Config()
    a.model.units = 7
    assert b.model.units == 256


def test_load_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "model": {"units": 64, "cell": "lstm", "dropout": 0.25, "bidirectional": True},
        "training": {"epochs": 3, "learning_rate": 1},
    }), encoding="utf-8")
    config = Config.load(path)
    assert config.model.units == 64
    assert config.model.cell == "lstm"
    assert config.model.dropout == 0.25
    assert config.model.bidirectional is True
    assert config.training.epochs == 3
    assert config.training.learning_rate == 1.0
    assert isinstance(config.training.learning_rate, float)
    # keys left out keep their defaults
    assert config.model.embedding_dim == ModelConfig().embedding_dim
    assert config.tokenizer == TokenizerConfig()
    assert config.data == DataConfig()


def test_load_toml(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[tokenizer]\nlevel = \"word\"\nvocab_size = 500\n\n"
        "[model]\nattention = \"additive\"\nlayers = 2\n\n"
        "[data]\ncontext_turns = 2\nvalidation_fraction = 0.2\ndeduplicate = false\n\n"
        "[decoding]\nmax_length = 40\n",
        encoding="utf-8")
    config = Config.load(path)
    assert config.tokenizer.level == "word"
    assert config.tokenizer.vocab_size == 500
    assert config.model.attention == "additive"
    assert config.model.layers == 2
    assert config.data.context_turns == 2
    assert config.data.validation_fraction == 0.2
    assert config.data.deduplicate is False
    assert config.decoding.max_length == 40
    assert config.training == TrainingConfig()


def test_load_uppercase_toml_suffix(tmp_path):
    path = tmp_path / "config.TOML"
    path.write_text("[model]\nunits = 32\n", encoding="utf-8")
    assert Config.load(path).model.units == 32


def test_loaded_json_equals_to_json_output(tmp_path):
    config = Config().with_overrides({"model.units": 12, "training.monitor": "loss"})
    path = tmp_path / "c.json"
    path.write_text(config.to_json(), encoding="utf-8")
    assert Config.load(path) == config


@pytest.mark.parametrize("data, key", [
    ({"model": {"unitz": 12}}, "model.unitz"),
    ({"training": {"epoch": 3}}, "training.epoch"),
    ({"modle": {"units": 12}}, "modle"),
    ({"tokenizer": {"level": "word", "vocab": 10}}, "tokenizer.vocab"),
])
def test_unknown_key_raises_naming_dotted_key(data, key):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert f"unknown config key '{key}'" in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nunitz = 12\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "'model.unitz'" in message
    assert "units" in message  # lists the known keys


@pytest.mark.parametrize("key, value", [
    ("model.units", "256"),          # string for int
    ("model.units", True),           # bool for int
    ("model.units", 2.5),            # float for int
    ("model.units", None),
    ("training.epochs", False),
    ("model.dropout", "0.1"),        # string for float
    ("model.dropout", True),         # bool for float
    ("data.deduplicate", 1),         # int for bool
    ("data.deduplicate", "yes"),
    ("model.attention", 1),          # int for str
    ("tokenizer.level", ["word"]),
])
def test_wrong_type_raises_naming_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        Config.from_dict({section: {name: value}})
    assert f"'{key}'" in str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("model.attention", "foo"),
    ("model.dropout", 1.5),
    ("model.dropout", -0.1),
    ("model.dropout", 1.0),
    ("model.cell", "rnn"),
    ("model.layers", 0),
    ("model.layers", 9),
    ("model.units", 0),
    ("tokenizer.level", "bytes"),
    ("tokenizer.vocab_size", 9),
    ("tokenizer.min_frequency", 0),
    ("data.context_turns", -1),
    ("data.validation_fraction", 1.0),
    ("data.max_input_tokens", 0),
    ("training.learning_rate", 0),
    ("training.monitor", "accuracy"),
    ("training.clipnorm", -1),
    ("training.ema_momentum", 1.0),
    ("decoding.strategy", "nucleus"),
    ("decoding.max_length", 0),
])
def test_out_of_range_value_raises_naming_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        Config.from_dict({section: {name: value}})
    assert f"invalid value for '{key}'" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("model.attention", "additive"),
    ("model.dropout", 0.0),
    ("model.dropout", 0.99),
    ("model.layers", 8),
    ("tokenizer.level", "char"),
    ("tokenizer.vocab_size", 10),
    ("data.validation_fraction", 0.0),
    ("training.clipnorm", 0),
    ("training.ema_momentum", 0.9999),
    ("training.patience", 0),
])
def test_boundary_values_accepted(key, value):
    section, name = key.split(".")
    config = Config.from_dict({section: {name: value}})
    assert getattr(getattr(config, section), name) == value


def test_no_attention_goes_with_no_copy_attention():
    config = Config.from_dict({"model": {"attention": "none", "copy_attention": False}})
    assert config.model.attention == "none"
    with pytest.raises(ConfigError, match="'model.copy_attention': needs attention"):
        Config.from_dict({"model": {"attention": "none"}})  # copying is on by default


def test_bad_value_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"dropout": 1.5}}', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(path) in str(info.value)
    assert "'model.dropout'" in str(info.value)


def test_section_must_be_a_table():
    with pytest.raises(ConfigError, match="'model' must be a table/object"):
        Config.from_dict({"model": 5})
    with pytest.raises(ConfigError, match="'config' must be a table/object"):
        Config.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("name, text, why", [
    ("c.json", "{not json", "not a valid JSON file"),
    ("c.toml", "[model\nunits = 3\n", "not a valid TOML file"),
    ("c.yaml", "model:\n  units: 3\n", "; a config is JSON, or TOML named *.toml, and this one's name ends in '.yaml'"),
    ("c.json", "[1, 2]", "must be a table/object at the top level"),
    ("c.json", '{"training": {"epochs": 1' + "0" * 5000 + "}}", "not a valid JSON file"),  # was "a bug"
    ("c.toml", "[training]\nepochs = 1" + "0" * 5000 + "\n", "not a valid TOML file"),
    ("c.json", " " * (2**20 + 1), "a config file is at most 1 MiB"),  # and /dev/zero is not read to the end
])
def test_bad_files_raise(tmp_path, name, text, why):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(path) in str(info.value)
    assert why in str(info.value)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read config"):
        Config.load(path)


def test_invalid_utf8_file_raises(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"model": {"cell": "\xff"}}')
    with pytest.raises(ConfigError, match="not a valid JSON file"):
        Config.load(path)


# --- overrides -------------------------------------------------------------------------------
def test_with_overrides_returns_changed_copy():
    base = Config()
    changed = base.with_overrides({"training.epochs": 3, "model.attention": "none",
                                   "model.copy_attention": False, "model.dropout": 0,
                                   "data.deduplicate": False})
    assert changed.training.epochs == 3
    assert changed.model.attention == "none"
    assert changed.model.dropout == 0.0 and isinstance(changed.model.dropout, float)
    assert changed.data.deduplicate is False
    # untouched keys and the original are unchanged
    assert changed.model.units == base.model.units
    assert base == Config()
    assert base.with_overrides({}) == base


def test_asking_for_greedy_or_sampling_leaves_a_beam_model_s_beam():
    """A model whose own decoding is a beam search still decodes greedily or samples when a call
    (``--strategy``, ``--temperature``, ``/set strategy``) asks for it, instead of refusing
    sampling with beam > 1 or quietly running the beam anyway."""
    own = DecodingConfig(strategy="beam", beam=8, n_best=2)
    assert own.with_overrides({"strategy": "greedy"}).effective_strategy == "greedy"
    sampled = own.with_overrides({"strategy": "sample", "temperature": 0.7})
    assert (sampled.effective_strategy, sampled.beam, sampled.n_best) == ("sample", 1, 1)
    assert own.with_overrides({"strategy": "greedy", "beam": 3}).effective_strategy == "beam"  # said so
    assert own.with_overrides({"max_length": 20}).beam == 8  # nothing said about the strategy


@pytest.mark.parametrize("key", ["model.unitz", "modle.units", "model", "", "model.units.x"])
def test_with_overrides_rejects_unknown_keys(key):
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({key: 3})
    assert f"unknown config key '{key}'" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("training.epochs", "3"),
    ("training.epochs", True),
    ("model.attention", "foo"),
    ("tokenizer.level", "bytes"),
])
def test_with_overrides_validates_values(key, value):
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({key: value})
    assert f"'{key}'" in str(info.value)


# --- serialisation ---------------------------------------------------------------------------
def test_to_dict_from_dict_round_trip():
    config = Config(
        data=DataConfig(context_turns=2, max_input_tokens=32, validation_fraction=0.25,
                        deduplicate=False),
        tokenizer=TokenizerConfig(level="char", vocab_size=100, min_frequency=2),
        model=ModelConfig(cell="lstm", units=64, layers=2, dropout=0.3, bidirectional=True,
                          attention="additive"),
        training=TrainingConfig(epochs=5, monitor="loss", seed=7, checkpoint_every_steps=10),
        decoding=DecodingConfig(max_length=50),
    )
    data = config.to_dict()
    assert data["model"]["cell"] == "lstm"
    assert data["tokenizer"] == {"level": "char", "vocab_size": 100, "min_frequency": 2}
    assert set(data) == {"data", "tokenizer", "model", "training", "decoding", "dialogue"}
    again = Config.from_dict(data)
    assert again == config
    assert again.to_dict() == data
    assert Config.from_dict(json.loads(config.to_json())) == config


def test_to_dict_is_a_copy():
    config = Config()
    data = config.to_dict()
    data["model"]["units"] = 1
    assert config.model.units == 256


# --- one source for every setting --------------------------------------------------------------
SECTIONS = [(f.name, type(getattr(Config(), f.name))) for f in dataclasses.fields(Config)]
NUMBERS = [(section, spec) for section, cls in SECTIONS for spec in specs(cls) if spec.type in (int, float)]


def _sample_text(spec) -> str:
    """A valid value for ``spec``, as typed on a command line."""
    return spec.choices[-1] if spec.choices else {int: "3", float: "0.5", str: "x"}[spec.type]


@pytest.mark.parametrize("section, cls", SECTIONS)
def test_every_setting_has_help_and_every_number_both_bounds(section, cls):
    for spec in specs(cls):
        assert spec.help.strip(), f"{section}.{spec.name} has no help text"
        if spec.type in (int, float):
            assert spec.min is not None or spec.above is not None, f"{section}.{spec.name}: no lower bound"
            assert spec.max is not None or spec.below is not None, f"{section}.{spec.name}: no upper bound"


@pytest.mark.parametrize("command", ["ask", "evaluate"])
def test_every_decoding_field_has_a_cli_flag(command):
    parser = build_parser()
    for spec in specs(DecodingConfig):
        flag = "--" + spec.name.replace("_", "-")
        if spec.type is bool:
            on = decoding_overrides(parser.parse_args([command, flag]))
            off = decoding_overrides(parser.parse_args([command, "--no-" + flag[2:]]))
            assert on[spec.name] is True and off[spec.name] is False
        else:
            value = decoding_overrides(parser.parse_args([command, flag, _sample_text(spec)]))[spec.name]
            assert value == spec.type(_sample_text(spec))
    assert decoding_overrides(parser.parse_args([command])) == {}


def test_older_flag_spellings_still_work():
    args = build_parser().parse_args(["ask", "--no-repeat-ngram", "2", "--avoid-repeat", "--top-k", "5"])
    assert decoding_overrides(args) == {"no_repeat_ngram_size": 2, "avoid_repeat": True, "top_k": 5,
                                        "strategy": "sample"}  # a sampling flag alone means sample


def test_every_decoding_field_has_a_set_name():
    assert list(SETTINGS) == [spec.name for spec in specs(DecodingConfig)]
    for spec in specs(DecodingConfig):
        setting = SETTINGS[spec.name]
        assert setting.help == spec.help
        if spec.type is bool:
            assert setting.parse("on") is True and setting.parse("off") is False
        else:
            assert setting.parse(_sample_text(spec)) == spec.type(_sample_text(spec))
    assert SETTINGS["seed"].parse("none") is None
    with pytest.raises(ValueError, match="expected a positive integer, got 'x'"):
        SETTINGS["max_length"].parse("x")


@pytest.mark.parametrize("section, spec", NUMBERS, ids=lambda x: getattr(x, "name", x))
def test_every_number_out_of_bounds_is_refused_naming_the_key(section, spec):
    high = spec.max + 1 if spec.max is not None else spec.below
    low = spec.min - 1 if spec.min is not None else spec.above
    for value in (high, low, float("nan")) if spec.type is float else (high, low):
        with pytest.raises(ConfigError, match=f"^invalid value for '{section}.{spec.name}': must be "):
            Config.from_dict({section: {spec.name: value}})


ABSURD = 5_000_000_000


def test_absurd_value_in_a_config_file_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f"[decoding]\nmax_length = {ABSURD}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value) == (f"{path}: invalid value for 'decoding.max_length': "
                               f"must be between 1 and 10000, got {ABSURD}")


@pytest.mark.parametrize("item, key", [(f"decoding.max_length={ABSURD}", "decoding.max_length"),
                                       ("training.epochs=1000000", "training.epochs"),
                                       ("training.learning_rate=1" + "0" * 400, "training.learning_rate"),
                                       ("training.batch_size=100000", "training.batch_size"),
                                       (f"data.max_output_tokens={ABSURD}", "data.max_output_tokens")])
def test_absurd_value_given_with_set_is_one_line_exit_1(tmp_path, capsys, item, key):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("hello\tworld\n", encoding="utf-8")
    code = main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), "--set", item])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"invalid value for '{key}'" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("overrides, key", [
    ({"max_length": ABSURD}, "max_length"),
    ({"beam": 65}, "beam"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": ABSURD}, "top_k"),
    ({"seed": 2 ** 31}, "seed"),
    ({"seed": 10 ** 400}, "seed"),  # once a raw OverflowError: a 500 over HTTP
    ({"temperature": 10 ** 400}, "temperature"),  # float() of it overflowed
    ({"min_length": 10, "max_length": 10}, "min_length"),
    ({"strategy": "sample", "beam": 2}, "beam"),
    ({"n_best": 3}, "n_best"),
])
def test_bad_per_call_decoding_dict_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^invalid value for 'decoding.{key}'"):
        DecodingConfig().with_overrides(overrides)
    with pytest.raises(ConfigError, match="^invalid value for 'decoding.max_length'"):
        DecodingConfig().with_overrides(None, max_length=ABSURD)


def test_configs_built_in_python_are_validated_too():
    with pytest.raises(ConfigError, match="'decoding.beam': expected int"):
        DecodingConfig().with_overrides(DecodingConfig(beam="5"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'model.copy_attention': needs attention"):
        Config(model=ModelConfig(attention="none")).validate()
    with pytest.raises(ConfigError, match="'dialogue.fallback_text': must not be blank"):
        Config(dialogue=DialogueConfig(fallback_text=" ")).validate()
