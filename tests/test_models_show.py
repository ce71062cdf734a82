"""``chatbot models show``: how a bundle was made and what it is set to, read without loading
its weights, and its config written out to train another like it."""

import json
import shutil

import pytest

from chatbot.config import Config
from chatbot.errors import BundleError
from chatbot.model.bundle import MANIFEST, METRICS, WEIGHTS, Bundle, change_settings, describe
from helpers import run_cli


@pytest.fixture
def copy(tiny_bundle_path, tmp_path):
    shutil.copytree(tiny_bundle_path, tmp_path / "tiny")
    return tmp_path / "tiny"


def test_the_card_tells_how_the_model_was_made_and_changed(capsys, monkeypatch, copy):
    change_settings(copy, {"dialogue.min_confidence": 0.5})
    manifest = json.loads((copy / MANIFEST).read_text())
    losses = json.loads((copy / METRICS).read_text())["history"]["loss"]
    code, out, err = run_cli(capsys, monkeypatch, "models", "show", copy)
    assert (code, err) == (0, "")
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert out.splitlines()[0] == f"tiny: {copy}"
    assert lines["made"].endswith("every file intact and readable")
    assert lines["model"].startswith(Bundle.load(copy).config.model.summary())
    assert f"{manifest['parameters']:,} parameters" in lines["model"]
    assert f"{manifest['corpus']['train']:,} trained on" in lines["corpus"]
    assert f"loss {losses[-1]:.4g} (lowest {min(losses):.4g})" in lines["training"]
    assert "training questions answered exactly 100.0%" in lines["training"]
    assert lines["changed"].endswith("dialogue.min_confidence = 0.5")
    assert "min confidence 0.5," in lines["dialogue"]

    code, out, _ = run_cli(capsys, monkeypatch, "models", "show", copy, "--json")
    card = json.loads(out)
    assert card["config"] == Bundle.load(copy).config.to_dict()
    assert card["changes"][0]["settings"] == {"dialogue.min_confidence": 0.5}
    assert "history" not in card["training"] and card["training"]["final_loss"] == losses[-1]
    assert card["files"][WEIGHTS] == (copy / WEIGHTS).stat().st_size and card["problem"] is None


def test_the_config_written_out_trains_another_like_it(capsys, monkeypatch, copy, tmp_path):
    code, out, _ = run_cli(capsys, monkeypatch, "models", "show", copy, "--config")
    assert code == 0
    (tmp_path / "like.json").write_text(out, encoding="utf-8")
    assert Config.load(tmp_path / "like.json") == Bundle.load(copy).config


def test_a_damaged_bundle_is_shown_unusable_without_loading_its_weights(capsys, monkeypatch, copy):
    (copy / WEIGHTS).write_bytes(b"not weights")  # loading would fail on these; showing reads none
    code, out, err = run_cli(capsys, monkeypatch, "models", "show", copy)
    assert code == 1 and err == ""
    assert f"UNUSABLE: {copy / WEIGHTS}: corrupt file (checksum mismatch)" in out
    assert "files" in out  # the rest of the card is still there


def test_what_is_not_a_bundle_is_one_error_line(capsys, monkeypatch, tmp_path):
    code, out, err = run_cli(capsys, monkeypatch, "models", "show", tmp_path)
    assert code != 0 and out == "" and err.count("\n") == 1 and "bundle.json: missing file" in err
    (tmp_path / MANIFEST).write_text('{"format_version": 5}')
    with pytest.raises(BundleError, match="config.json: missing file"):
        describe(tmp_path)
