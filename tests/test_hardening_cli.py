"""Issue 19, items 4 and 5: every CLI command met with hostile arguments and files answers with
one line on stderr, never a traceback; ``chatbot ask`` answers every stdin line it can.

The commands run in-process (``chatbot.cli.main.main``), so TensorFlow is imported once; a
bug that escapes the CLI's error mapping then shows as ``unexpected`` in the one line (the CLI's
last resort) and fails the walk just as a traceback would.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import chatbot.cli.main as cli
from chatbot.errors import BundleError, TokenizerError
from chatbot.model.bundle import MANIFEST, Bundle, file_sha256
from conftest import DATA
from helpers import run_cli

DEEP = 100_000  # nesting levels: far past Python's recursion limit


def run(capsys, monkeypatch, *argv, stdin: bytes = b"") -> tuple[int, str, str]:
    """``chatbot ARGV`` in-process with ``stdin`` as bytes: (exit status, stdout, stderr)."""
    return run_cli(capsys, monkeypatch, *argv, stdin=stdin)


def assert_one_line_at_most(code, err: str, verdict: bool = False) -> None:
    """No traceback, no unmapped error; an error exit says why in exactly one line (``verdict``:
    a command whose exit status 1 is its answer, like ``corpus validate``, may say it otherwise)."""
    assert "Traceback" not in err and "unexpected" not in err, err[-3000:]
    assert code in (0, 1, 2), (code, err[-3000:])
    errors = [line for line in err.splitlines() if line.startswith("chatbot: error:")]
    assert len(errors) <= 1, err
    if code == 1 and not verdict:
        assert len(errors) == 1, err


def copy_bundle(source: Path, target: Path, **files: str | bytes) -> Path:
    """A copy of a bundle with some files replaced and their checksums rewritten (as a forger
    would), so that the file's content, not its checksum, is what loading meets."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    for name, content in files.items():
        name = name.replace("__", ".")
        data = content.encode() if isinstance(content, str) else content
        (target / name).write_bytes(data)
        manifest["files"][name] = file_sha256(target / name)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def with_manifest(source: Path, target: Path, **fields) -> Path:
    shutil.copytree(source, target)
    manifest = {**json.loads((target / MANIFEST).read_text()), **fields}
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def tokenizer_with_id(bundle: Path, new_id: int) -> str:
    data = json.loads((bundle / "tokenizer.json").read_text())
    vocab = data["tokenizer"]["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == len(vocab) // 2)
    vocab[token] = new_id
    return json.dumps(data)


@pytest.fixture(scope="module")
def hostile(tiny_bundle_path, tmp_path_factory) -> dict[str, Path]:
    """Hostile files and bundles, built once."""
    root = tmp_path_factory.mktemp("hostile")
    config = json.loads((tiny_bundle_path / "config.json").read_text())
    absurd = {**config, "decoding": {**config["decoding"], "max_length": 10 ** 12}}
    h = {
        "file": root / "a-file.txt",
        "binary": root / "binary.tsv",
        "deep_json": root / "deep.json",
        "deep_toml": root / "deep.toml",
        "deep_jsonl": root / "deep.jsonl",
        "empty_dir": root / "empty",
        "deep_config": copy_bundle(tiny_bundle_path, root / "deep_config", config__json="[" * DEEP + "]" * DEEP),
        "absurd_config": copy_bundle(tiny_bundle_path, root / "absurd_config", config__json=json.dumps(absurd)),
        "huge_token_id": copy_bundle(tiny_bundle_path, root / "huge_token_id",
                                     tokenizer__json=tokenizer_with_id(tiny_bundle_path, 2_000_000_000)),
        "deep_tokenizer": copy_bundle(tiny_bundle_path, root / "deep_tokenizer",
                                      tokenizer__json='{"level": "word", "tokenizer": ' + "[" * DEEP + "]" * DEEP + "}"),
        "bad_examples": copy_bundle(tiny_bundle_path, root / "bad_examples", validation__jsonl="[1, 2]\n"),
        "files_outside": with_manifest(tiny_bundle_path, root / "files_outside",
                                       files={"../../../../etc/passwd": "0" * 64}),
        "files_list": with_manifest(tiny_bundle_path, root / "files_list", files=["config.json"]),
        "models": root / "models",
    }
    h["file"].write_text("not a directory")
    h["binary"].write_bytes(bytes(range(256)) * 8)
    h["deep_json"].write_text('{"model": ' + "[" * DEEP + "]" * DEEP + "}")
    h["deep_toml"].write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    h["deep_jsonl"].write_text('{"question": "hi", "answer": "hello"}\n' + "[" * DEEP + "]" * DEEP + "\n")
    h["empty_dir"].mkdir()
    h["models"].mkdir()
    shutil.copytree(tiny_bundle_path, h["models"] / "good")
    (h["models"] / "deep").mkdir()
    (h["models"] / "deep" / MANIFEST).write_text('{"a": ' * DEEP + "1" + "}" * DEEP)
    with_manifest(tiny_bundle_path, h["models"] / "odd_types", corpus=["x"], created=5)
    (h["models"] / "odd_metrics").mkdir()
    shutil.copytree(tiny_bundle_path, h["models"] / "odd_metrics", dirs_exist_ok=True)
    (h["models"] / "odd_metrics" / "metrics.json").write_text('{"validation": [1, 2]}')
    return h


BAD_BUNDLES = ["file", "empty_dir", "deep_config", "absurd_config", "huge_token_id", "deep_tokenizer",
               "bad_examples", "files_outside", "files_list"]
NUL_DB = "sqlite:////tmp/a%00b.db"
HUGE = str(10 ** 30)

# (name, argv with {placeholders} for hostile paths, stdin bytes). {model} is the good tiny model,
# {db} a fresh database file, {tmp} a fresh directory.
CASES = [
    *[(f"ask-model-{b}", ["ask", "--model", f"{{{b}}}", "hi"], b"") for b in BAD_BUNDLES],
    *[(f"chat-model-{b}", ["chat", "--model", f"{{{b}}}", "--db", "{db}"], b"hi\n") for b in BAD_BUNDLES[:4]],
    *[(f"evaluate-model-{b}", ["evaluate", "--model", f"{{{b}}}"], b"") for b in BAD_BUNDLES[2:5]],
    ("ask-max-length-3e9", ["ask", "--model", "{model}", "--max-length", "3000000000", "hi"], b""),
    ("ask-max-length-huge", ["ask", "--model", "{model}", "--max-length", HUGE, "hi"], b""),
    ("ask-beam-0", ["ask", "--model", "{model}", "--beam", "0", "hi"], b""),
    ("ask-n-best-over-beam", ["ask", "--model", "{model}", "--n-best", "5", "hi"], b""),
    ("ask-temperature-nan", ["ask", "--model", "{model}", "--temperature", "nan", "hi"], b""),
    ("ask-top-p-inf", ["ask", "--model", "{model}", "--top-p", "inf", "hi"], b""),
    ("ask-seed-huge", ["ask", "--model", "{model}", "--seed", HUGE, "hi"], b""),
    ("ask-seed-negative", ["ask", "--model", "{model}", "--seed", "-1", "hi"], b""),
    ("ask-min-over-max", ["ask", "--model", "{model}", "--min-length", "50", "--max-length", "10", "hi"], b""),
    ("ask-db-nul", ["ask", "--model", "{model}", "--db", NUL_DB, "--session", "s", "hi"], b""),
    ("ask-db-directory", ["ask", "--model", "{model}", "--db", "{tmp}", "--session", "s", "hi"], b""),
    ("ask-db-under-a-file", ["ask", "--model", "{model}", "--db", "{file}/x.db", "--session", "s", "hi"], b""),
    ("ask-session-huge-id", ["ask", "--model", "{model}", "--db", "{db}", "--session", HUGE, "hi"], b""),
    ("ask-stdin-hostile", ["ask", "--model", "{model}"],
     b"first\nbad \xff byte\n\x00\x01\x02\n\xef\xbf\xbe\xed\xa0\x80\n\r\n" + b"x" * 100_000 + b"\n"),
    ("ask-json-stdin-hostile", ["ask", "--model", "{model}", "--json"], b"\xc3\n\xf4\x90\x80\x80\n"),
    ("chat-db-nul", ["chat", "--model", "{model}", "--db", NUL_DB], b"hi\n"),
    ("chat-stdin-hostile", ["chat", "--model", "{model}", "--db", "{db}"],
     b"bad \xff\n/set max_length 3000000000\n/set beam 0\n/switch " + HUGE.encode() + b"\n/history -5\n"
     b"/history " + HUGE.encode() + b"\n/export {file}/x.yml\n/new \x00\n/set\n/model\n"),
    ("train-missing-corpus", ["train", "--corpus", "{tmp}/nope.tsv", "--out", "{tmp}/m"], b""),
    ("train-binary-corpus", ["train", "--corpus", "{binary}", "--out", "{tmp}/m"], b""),
    ("train-deep-json-config", ["train", "--corpus", "{corpus}", "--config", "{deep_json}", "--out", "{tmp}/m"], b""),
    ("train-deep-toml-config", ["train", "--corpus", "{corpus}", "--config", "{deep_toml}", "--out", "{tmp}/m"], b""),
    ("train-config-is-a-directory", ["train", "--corpus", "{corpus}", "--config", "{tmp}", "--out", "{tmp}/m"], b""),
    ("train-set-huge-float", ["train", "--corpus", "{corpus}", "--set", "model.dropout=1e400", "--out", "{tmp}/m"], b""),
    ("train-set-no-key", ["train", "--corpus", "{corpus}", "--set", "=3", "--out", "{tmp}/m"], b""),
    ("train-set-section", ["train", "--corpus", "{corpus}", "--set", "model=3", "--out", "{tmp}/m"], b""),
    ("train-set-too-deep-key", ["train", "--corpus", "{corpus}", "--set", "a.b.c=1", "--out", "{tmp}/m"], b""),
    ("train-set-max-length", ["train", "--corpus", "{corpus}", "--set", "decoding.max_length=5000000000",
                              "--out", "{tmp}/m"], b""),
    ("train-epochs-huge", ["train", "--corpus", "{corpus}", "--epochs", HUGE, "--out", "{tmp}/m"], b""),
    ("train-units-negative", ["train", "--corpus", "{corpus}", "--units", "-1", "--out", "{tmp}/m"], b""),
    ("train-resume-nothing", ["train", "--corpus", "{corpus}", "--resume", "--out", "{tmp}/m"], b""),
    ("train-from-deep-config", ["train", "--corpus", "{corpus}", "--from", "{deep_config}", "--out", "{tmp}/m"], b""),
    ("train-golden-missing", ["train", "--corpus", "{corpus}", "--golden", "{tmp}/nope.tsv", "--out", "{tmp}/m"], b""),
    ("evaluate-limit-0", ["evaluate", "--model", "{model}", "--limit", "0"], b""),
    ("evaluate-binary-corpus", ["evaluate", "--model", "{model}", "--corpus", "{binary}"], b""),
    ("evaluate-max-length-3e9", ["evaluate", "--model", "{model}", "--max-length", "3000000000"], b""),
    ("evaluate-golden-deep", ["evaluate", "--model", "{model}", "--golden", "{deep_jsonl}"], b""),
    ("corpus-stats-missing", ["corpus", "stats", "{tmp}/nope.tsv"], b""),
    ("corpus-stats-binary", ["corpus", "stats", "{binary}"], b""),
    ("corpus-stats-empty-dir", ["corpus", "stats", "{empty_dir}"], b""),
    ("corpus-stats-deep-jsonl", ["corpus", "stats", "{deep_jsonl}"], b""),
    ("corpus-validate-binary", ["corpus", "validate", "{binary}"], b""),
    ("corpus-validate-deep", ["corpus", "validate", "{deep_jsonl}", "--json"], b""),
    ("corpus-convert-under-a-file", ["corpus", "convert", "{corpus}", "{file}/x.jsonl"], b""),
    ("corpus-convert-onto-itself", ["corpus", "convert", "{corpus}", "{corpus}"], b""),
    ("corpus-convert-binary", ["corpus", "convert", "{binary}", "{tmp}/x.yml"], b""),
    ("sessions-list-db-nul", ["sessions", "list", "--db", NUL_DB], b""),
    ("sessions-list-db-directory", ["sessions", "list", "--db", "{tmp}"], b""),
    ("sessions-list-db-binary", ["sessions", "list", "--db", "{binary}"], b""),
    ("sessions-show-huge-id", ["sessions", "show", HUGE, "--db", "{db}"], b""),
    ("sessions-show-last-negative", ["sessions", "show", "1", "--last", "-1", "--db", "{db}"], b""),
    ("sessions-delete-missing", ["sessions", "delete", "nobody", "--db", "{db}"], b""),
    ("sessions-export-under-a-file", ["sessions", "export", "--feedback", "--out", "{file}/x.yml", "--db", "{db}"], b""),
    ("models-list-not-a-directory", ["models", "list", "--dir", "{file}"], b""),
    ("models-list-hostile-bundles", ["models", "list", "--dir", "{models}"], b""),
    ("models-list-hostile-bundles-json", ["models", "list", "--dir", "{models}", "--json"], b""),
]


@pytest.mark.parametrize("name, argv, stdin", CASES, ids=[c[0] for c in CASES])
def test_no_command_prints_a_traceback(name, argv, stdin, hostile, tiny_bundle_path, tmp_path, capsys, monkeypatch):
    paths = {key: str(value) for key, value in hostile.items()}
    paths.update(model=str(tiny_bundle_path), db=str(tmp_path / "chat.db"), tmp=str(tmp_path),
                 corpus=str(DATA / "tiny_pairs.tsv"))
    argv = [arg.format(**paths) for arg in argv]
    stdin = stdin.replace(b"{file}", paths["file"].encode())
    code, out, err = run(capsys, monkeypatch, *argv, stdin=stdin)
    assert_one_line_at_most(code, err, verdict=name.startswith("corpus-validate"))


# --- item 5: bundles are validated whole at load ------------------------------------------------
def test_deep_bundle_config_is_one_line_naming_the_file(hostile, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "ask", "--model", hostile["deep_config"], "hi")
    assert (code, out) == (1, "")
    assert err.startswith("chatbot: error: ") and err.count("\n") == 1
    assert "config.json" in err and "nested more than" in err


def test_absurd_bundle_max_length_is_one_line_at_load(hostile, capsys, monkeypatch):
    code, _, err = run(capsys, monkeypatch, "ask", "--model", hostile["absurd_config"], "hi")
    assert code == 1 and err.count("\n") == 1
    assert "decoding.max_length" in err and "1000000000000" in err


def test_absurd_max_length_flag_is_one_line(tiny_bundle_path, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--max-length", "3000000000", "hi")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "decoding.max_length" in err and "between 1 and 10000" in err


def test_token_id_outside_the_vocabulary_is_refused_at_load(hostile):
    with pytest.raises(BundleError, match="token id 2,000,000,000 is outside the vocabulary"):
        Bundle.load(hostile["huge_token_id"])


def test_tokenizer_ids_must_be_dense(tiny_bundle_path):
    from chatbot.data.tokenizer import TextTokenizer

    data = json.loads((tiny_bundle_path / "tokenizer.json").read_text())
    vocab = data["tokenizer"]["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 20)
    vocab[token] = 21  # two tokens share 21, none has 20
    with pytest.raises(TokenizerError, match="token id 20 is missing"):
        TextTokenizer.from_json(json.dumps(data))
    data["level"] = "bytes"
    with pytest.raises(TokenizerError, match="'level' one of"):
        TextTokenizer.from_json(json.dumps(data))


@pytest.mark.parametrize("bundle, why", [("files_outside", "not a file name inside the bundle"),
                                         ("files_list", "'files' must map file names"),
                                         ("bad_examples", "validation.jsonl:1: unreadable example")])
def test_malformed_manifest_and_examples_are_bundle_errors(hostile, bundle, why):
    with pytest.raises(BundleError, match=why):
        Bundle.load(hostile[bundle])


def test_models_list_marks_hostile_bundles_unusable_and_lists_the_rest(hostile, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "models", "list", "--dir", hostile["models"], "--json")
    assert code == 0 and err == ""
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert sorted(rows) == ["deep", "good", "odd_metrics", "odd_types"]
    assert rows["good"]["problem"] is None
    assert "nested more than" in rows["deep"]["problem"]
    assert "'corpus' must be a dict" in rows["odd_types"]["problem"]
    assert "'validation' must be an object" in rows["odd_metrics"]["problem"]


@pytest.mark.parametrize("bundle", ["deep_config", "absurd_config", "huge_token_id", "deep_tokenizer", "bad_examples",
                                    "files_outside", "files_list", "models/deep", "models/good", "models/odd_metrics",
                                    "models/odd_types", "file", "empty_dir"])
def test_models_show_says_what_is_wrong_with_a_hostile_bundle_in_one_line(hostile, bundle, capsys, monkeypatch):
    """A card marked UNUSABLE (the checks loading makes, without loading), or one error line."""
    first, _, rest = bundle.partition("/")
    path = hostile[first] / rest if rest else hostile[first]
    code, out, err = run(capsys, monkeypatch, "models", "show", path)
    assert_one_line_at_most(code, err, verdict=True)
    if bundle == "models/good":
        assert code == 0 and "every file intact and readable" in out
    elif code == 1 and out:  # the card, saying why loading would refuse it
        assert err == "" and "UNUSABLE: " in out
    else:
        assert code == 1 and out == "" and err.startswith("chatbot: error: ") and err.count("\n") == 1


def test_a_nul_byte_in_the_database_url_is_one_line(tiny_bundle_path, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--db", NUL_DB,
                         "--session", "s", "hi")
    assert (code, out) == (1, "")
    assert err == "chatbot: error: --db: a database URL or file name cannot contain a NUL byte (%00)\n"
    monkeypatch.setenv("CHATBOT_DB", NUL_DB)
    code, _, err = run(capsys, monkeypatch, "sessions", "list")
    assert code == 1 and err.startswith("chatbot: error: $CHATBOT_DB: ") and err.count("\n") == 1


def test_deep_config_files_for_training_are_one_line(hostile, capsys, monkeypatch, tmp_path):
    for key in ("deep_json", "deep_toml"):
        code, _, err = run(capsys, monkeypatch, "train", "--corpus", DATA / "tiny_pairs.tsv",
                           "--config", hostile[key], "--out", tmp_path / "m")
        assert code == 1 and err == f"chatbot: error: {hostile[key]}: not a valid config file (nested too deeply)\n"


def test_an_unforeseen_error_is_still_one_line(monkeypatch, capsys):
    def broken(args):
        raise TypeError("something\nspanning lines")

    monkeypatch.setattr(cli, "cmd_corpus", broken)
    code, _, err = run(capsys, monkeypatch, "corpus", "stats", "x")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("chatbot: error: unexpected TypeError: something; spanning lines")


# --- item 4: one reply line per input line ------------------------------------------------------
def test_ask_answers_every_line_after_a_bad_one(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    (q1, a1), (q3, a3) = tiny_pairs[0], tiny_pairs[2]
    stdin = f"{q1}\nbad \xff byte\n{q3}\n".encode("latin-1")
    code, out, err = run(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, stdin=stdin)
    assert out.split("\n") == [a1, "", a3, ""]
    assert err.splitlines() == ["chatbot: warning: line 2: invalid UTF-8 at byte 5 (0xff)",
                                "chatbot: error: 1 line not answered (see the warnings)"]
    assert code == 1


def test_ask_json_marks_the_failed_line_with_an_error(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    (q1, a1) = tiny_pairs[0]
    code, out, err = run(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--json",
                         stdin=f"{q1}\n\xe9t\xe9\n\n".encode("latin-1") + "caf\u00e9?\n".encode())
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and code == 1
    assert rows[0]["reply"] == a1 and "error" not in rows[0]
    assert rows[1] == {"reply": "", "error": "invalid UTF-8 at byte 1 (0xe9)"}
    # An empty line is not a failure, and its object has every key a reply's has.
    assert rows[2]["reply"] == "" and "error" not in rows[2] and rows[2].keys() == rows[0].keys()
    assert "error" not in rows[3]
    assert "line 2: invalid UTF-8 at byte 1 (0xe9)" in err


def test_ask_all_good_lines_exit_0(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "ask", "--model", tiny_bundle_path,
                         stdin=f"{tiny_pairs[0][0]}\n\n".encode())
    assert (code, err) == (0, "") and out.split("\n") == [tiny_pairs[0][1], "", ""]


def test_chat_reports_the_same_problem_and_goes_on(tiny_bundle_path, tiny_pairs, tmp_path, capsys, monkeypatch):
    (q1, a1), (q3, a3) = tiny_pairs[0], tiny_pairs[2]
    stdin = f"{q1}\nbad \xff byte\n{q3}\n".encode("latin-1")
    code, out, err = run(capsys, monkeypatch, "chat", "--model", tiny_bundle_path, "--db", tmp_path / "c.db",
                         stdin=stdin)
    assert out.splitlines() == [a1, "error: line 2: invalid UTF-8 at byte 5 (0xff)", a3]
    # ... and exits 1, as ask does, so that a script knows a line went unanswered.
    assert code == 1 and err.splitlines() == ["chatbot: error: 1 line not answered (see the error lines)"]


def test_ask_through_a_real_pipe_answers_three_lines(tiny_bundle_path):
    """The issue's own command, as a subprocess: bytes on a real stdin, not a test double."""
    import subprocess

    from conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "ask", "--model", str(tiny_bundle_path)],
                            input=b"first\nbad \xff byte\nthird\n", capture_output=True, timeout=300)
    assert result.returncode == 1
    assert result.stdout.count(b"\n") == 3 and result.stdout.split(b"\n")[1] == b""
    assert b"line 2: invalid UTF-8 at byte 5 (0xff)" in result.stderr and b"Traceback" not in result.stderr


# --- item 9: corpus stats streams -----------------------------------------------------------------
def test_stats_rank_conflicts_by_answers_then_corpus_order(tmp_path):
    from chatbot.data.corpus_tools import corpus_stats

    rows = ["b\t1", "a\t1", "a\t2", "c\t1", "c\t2", "b\t2", "d\t1", "d\t2", "d\t3", "a\t2", "e\t1", "e\t2"]
    path = tmp_path / "c.tsv"
    path.write_text("\n".join(rows) + "\n")
    s = corpus_stats(path, conflict_examples=3)
    assert (s["pairs"], s["unique_pairs"], s["duplicate_pairs"], s["duplicate_copies"]) == (12, 11, 1, 1)
    assert (s["questions"], s["conflicting_questions"]) == (5, 5)
    # d has three answers; then a, b, c, e with two, in the order they first appear: b, a, c
    assert s["conflict_examples"] == [{"question": "d", "answers": ["1", "2", "3"]},
                                      {"question": "b", "answers": ["1", "2"]},
                                      {"question": "a", "answers": ["1", "2"]}]
    assert corpus_stats(path, conflict_examples=0)["conflict_examples"] == []


STATS_MEMORY = """
import resource, sys
from chatbot.data.corpus_tools import corpus_stats
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = corpus_stats(sys.argv[1])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(stats["pairs"], stats["conflicting_questions"], grown // 1024)
"""


def test_stats_of_a_big_corpus_do_not_hold_every_pair(tmp_path):
    """300,000 distinct pairs (6 MB): the statistics keep counts, histograms and hashes, so the
    peak grows by a few times the file, not by the ~300 MB that holding every pair as objects took."""
    import random
    import subprocess

    from conftest import ROOT

    rng = random.Random(3)
    path = tmp_path / "big.tsv"
    with open(path, "w") as f:
        for n in range(300_000):
            f.write(f"q{n % 150_000} w{rng.randrange(5000)}?\tanswer {n} w{rng.randrange(5000)}.\n")
    result = subprocess.run([sys.executable, "-c", STATS_MEMORY, str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    pairs, conflicting, grown_mb = map(int, result.stdout.split())
    assert pairs == 300_000 and conflicting > 0
    assert grown_mb < 100, f"peak memory grew by {grown_mb} MB"
