"""The on-disk cache of compiled decode loops: where it lives, what it refuses, and that a damaged
program in it never breaks a reply."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from chatbot import compile_cache
from conftest import ROOT


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads under 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


WHOLE = _field(1, b"key") + _field(2, b"hlo module") + _field(3, b"machine code")


@pytest.fixture
def clean_environment(monkeypatch):
    monkeypatch.delenv(compile_cache.ENVIRONMENT, raising=False)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    return monkeypatch


def test_the_cache_is_private_and_named_by_the_tensorflow_build_and_the_cpu(tmp_path, clean_environment):
    clean_environment.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    directory = compile_cache.enable(tmp_path)
    assert directory == compile_cache.cache_directory(tmp_path)
    assert directory.parent == tmp_path and directory.name.startswith("tf")
    assert directory.name.endswith(compile_cache.cpu_fingerprint())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # The user's flags are kept; the cache directory is added to them.
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 {compile_cache.FLAG}={directory}"


def test_the_environment_variable_chooses_the_directory_or_turns_the_cache_off(tmp_path, clean_environment):
    clean_environment.setenv(compile_cache.ENVIRONMENT, str(tmp_path / "mine"))
    assert compile_cache.enable().parent == tmp_path / "mine"
    clean_environment.setenv(compile_cache.ENVIRONMENT, "off")
    clean_environment.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    assert compile_cache.enable(tmp_path) is None
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=0"


def test_a_cache_directory_the_user_already_set_is_kept(tmp_path, clean_environment):
    own = f"{compile_cache.FLAG}={tmp_path / 'own'}"
    clean_environment.setenv("TF_XLA_FLAGS", own)
    assert compile_cache.enable(tmp_path / "ours") is None
    assert os.environ["TF_XLA_FLAGS"] == own and not (tmp_path / "ours").exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_directory_others_can_write_to_is_not_used(tmp_path, clean_environment):
    directory = compile_cache.cache_directory(tmp_path)
    directory.mkdir(parents=True)
    directory.chmod(0o777)  # another user could plant machine code here
    assert compile_cache.enable(tmp_path) is None
    assert "TF_XLA_FLAGS" not in os.environ


def test_a_path_with_white_space_is_not_passed_to_tensorflow(tmp_path, clean_environment):
    assert compile_cache.enable(tmp_path / "my cache") is None
    assert "TF_XLA_FLAGS" not in os.environ


def test_tidy_removes_damaged_programs_stale_temporary_files_and_the_oldest_over_the_limit(tmp_path):
    old, new = tmp_path / "old.pb", tmp_path / "new.pb"
    for age, path in ((3000, old), (1000, new)):
        path.write_bytes(WHOLE)
        os.utime(path, (time.time() - age, time.time() - age))
    (tmp_path / "truncated.pb").write_bytes(WHOLE[:-4])
    (tmp_path / "no_executable.pb").write_bytes(WHOLE[:WHOLE.index(b"\x1a")])  # parses, but not whole
    (tmp_path / "writing.pb.tmp").write_bytes(b"partial")  # another process is writing it now
    crashed = tmp_path / "crashed.pb.tmp"
    crashed.write_bytes(b"partial")
    os.utime(crashed, (time.time() - 2 * compile_cache.STALE_TEMPORARY_SECONDS,) * 2)

    compile_cache.tidy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pb", "old.pb", "writing.pb.tmp"]

    compile_cache.tidy(tmp_path, max_bytes=len(WHOLE))  # room for one program: the newest stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pb", "writing.pb.tmp"]


def test_directories_of_other_builds_unused_for_a_month_are_removed(tmp_path, clean_environment):
    def build(name: str, days_unused: float, mode: int = 0o700, files=("a.pb",)) -> "os.PathLike":
        folder = tmp_path / name
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        when = time.time() - days_unused * 86400
        for file in files:
            (folder / file).write_bytes(WHOLE)
            os.utime(folder / file, (when, when))
        os.utime(folder, (when, when))
        return folder

    build("tf2.15.0-x86_64-0123456789ab", days_unused=45)  # an older TensorFlow: retired
    build("tf2.21.0-x86_64-ba9876543210", days_unused=3)  # another machine's, in use: kept
    build("tf2.14.0-x86_64-aaaaaaaaaaaa", days_unused=90, mode=0o777)  # not private: not ours to judge
    build("notes", days_unused=400)  # not a build directory
    directory = compile_cache.enable(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [directory.name, "notes", "tf2.14.0-x86_64-aaaaaaaaaaaa", "tf2.21.0-x86_64-ba9876543210"])


def test_a_damaged_cached_program_is_compiled_again_not_a_failed_reply(tiny_bundle_path, tiny_pairs, tmp_path):
    """TensorFlow fails a call whose cached program cannot be read; the CLI removes such files
    before TensorFlow starts. Two real `chatbot ask` runs: the first fills the cache, every
    program in it is then truncated, and the second still answers alike and compiles them anew."""
    question, answer = tiny_pairs[0]
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    env[compile_cache.ENVIRONMENT] = str(tmp_path)

    def ask() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), "ask", "--model", str(tiny_bundle_path),
                               question], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)

    first = ask()
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == answer
    programs = sorted(compile_cache.cache_directory(tmp_path).glob("*.pb"))
    assert programs, "the first run left no compiled program"
    for program in programs:
        program.write_bytes(program.read_bytes()[:1000])

    second = ask()
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout and second.stderr == ""
    assert all(compile_cache._is_whole(p) for p in compile_cache.cache_directory(tmp_path).glob("*.pb"))
