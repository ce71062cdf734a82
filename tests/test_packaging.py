"""The wheel works on its own: build it, install it (not editable) into a fresh virtual
environment, and chat with the default model it carries, from outside the checkout.

The wheel ships ``models/`` as the package ``chatbot.bundled_models`` (``pyproject.toml``), and
``chatbot.model.bundle`` reads it there when there is no checkout around the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

HANG_GUARD = 600  # seconds: a subprocess that takes longer hangs; not a timing check


def run(*command, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD)


def source_copy(dest: Path) -> Path:
    """The checkout as a clean clone would hold it, so that building writes nothing into the
    checkout (setuptools leaves ``build/`` and ``*.egg-info`` in the source tree) and no stale
    ``build/lib`` leaks into the wheel. Dot names (``.git``, caches, unfinished trainings
    ``models/.*``) and build output are left out."""
    ignore = shutil.ignore_patterns(".*", "__pycache__", "build", "dist", "*.egg-info")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict:
    """The built wheel installed into a new virtual environment: its paths, and an environment
    for running its ``chatbot`` from a directory outside the checkout."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = source_copy(tmp / "source")
    built = run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", source, cwd=tmp)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = (tmp / "dist").glob("chatbot-*.whl")

    # --system-site-packages: TensorFlow, Keras and the other dependencies come from the
    # environment running the tests, so CI does not download and unpack ~500 MB again, and the
    # wheel goes in with --no-deps. Only chatbot itself is installed into the new environment.
    env_dir = tmp / "venv"
    made = run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir, cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = env_dir / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=tmp).stdout.strip())
    if sys.prefix != sys.base_prefix:
        # The tests run in a virtual environment themselves: --system-site-packages reaches the
        # base interpreter's packages, not this environment's. Add this environment's (a plain
        # path entry: its .pth files, an editable chatbot's among them, are not run).
        paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        (site_packages / "_test_outer_env.pth").write_text("\n".join(paths) + "\n")
    # pip from the outer environment, run by the new interpreter, installs into the new one;
    # --force-reinstall: the editable chatbot of the outer environment has the same version.
    installed = run(python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index",
                    "--disable-pip-version-check", wheel, cwd=tmp)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CHATBOT_MODEL", "CHATBOT_DB", "VIRTUAL_ENV")}
    env.update(XDG_DATA_HOME=str(tmp / "xdg"), HOME=str(tmp / "home"),
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"python": python, "chatbot": env_dir / "bin" / "chatbot", "site": site_packages,
            "cwd": elsewhere, "env": env}


def test_the_wheel_installs_only_the_chatbot_package(venv):
    site = venv["site"]
    [dist_info] = site.glob("chatbot-*.dist-info")
    top = {line.split(",")[0].split("/")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    assert top <= {"chatbot", dist_info.name, ".."}, top  # "..": the console script in bin/
    assert not (site / "cli.py").exists() and not (site / "cli").exists()
    for model in ("default", "chitchat"):
        bundled = site / "chatbot" / "bundled_models" / model
        manifest = json.loads((ROOT / "models" / model / "bundle.json").read_text())
        missing = [name for name in manifest["files"] if not (bundled / name).is_file()]
        assert not missing, f"files of models/{model} not in the wheel: {missing}"
    # The bundled corpora travel with their licences (fine-tuning the default model reads
    # corpora/english), the package says it is typed, and the licence is in the metadata.
    for corpus in ("english", "spanish"):
        assert (site / "chatbot" / "corpora" / corpus / "LICENSE").is_file()
        assert len(list((site / "chatbot" / "corpora" / corpus).glob("*.yml"))) >= 9
    assert (site / "chatbot" / "py.typed").is_file()
    assert any(p.name == "LICENSE" for p in dist_info.rglob("LICENSE"))


def test_chatbot_is_imported_from_the_installed_wheel(venv):
    code = ("import importlib.util, json, chatbot, chatbot.model.bundle as b; "
            "print(json.dumps([chatbot.__file__, str(b.MODELS_DIR), "
            "getattr(importlib.util.find_spec('cli'), 'origin', None)]))")
    result = run(venv["python"], "-c", code, cwd=venv["cwd"], env=venv["env"])
    assert result.returncode == 0, result.stderr
    package, models_dir, cli_module = json.loads(result.stdout)
    assert Path(package).is_relative_to(venv["site"]) and not Path(package).is_relative_to(ROOT), package
    assert Path(models_dir) == venv["site"] / "chatbot" / "bundled_models"
    assert cli_module is None or not Path(cli_module).is_relative_to(venv["site"]), cli_module


def test_installed_chatbot_asks_the_default_model(venv):
    result = run(venv["chatbot"], "ask", "Hello", cwd=venv["cwd"], env=venv["env"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stdout
    assert result.stderr == ""


def test_installed_chatbot_reads_the_bundled_corpora_from_anywhere(venv):
    """`corpora/english` is the bundled corpus wherever the command runs (an installed package
    had none, and fine-tuning the default model could not find its training corpus)."""
    result = run(venv["chatbot"], "corpus", "stats", "corpora/english", cwd=venv["cwd"], env=venv["env"])
    assert result.returncode == 0, result.stderr
    assert "pairs" in result.stdout


def test_installed_chatbot_lists_the_bundled_default_model(venv):
    result = run(venv["chatbot"], "models", "list", cwd=venv["cwd"], env=venv["env"])
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:1] == ["default"] for line in result.stdout.splitlines()), result.stdout


def test_a_new_bundle_format_or_schema_revision_raises_the_minor_version():
    """docs/GUARANTEES.md, "Versions": each minor version has one bundle format and one schema
    revision. Changing either without a new minor version (and a row here) fails this test."""
    from chatbot.dialogue.store import HEAD_REVISION
    from chatbot.model.bundle import FORMAT_VERSION
    from chatbot.version import __version__

    formats = {"0.4": (5, "0003")}  # minor version: (bundle format, schema revision)
    minor = ".".join(__version__.split(".")[:2])
    assert formats.get(minor) == (FORMAT_VERSION, HEAD_REVISION), (
        f"chatbot {__version__} writes bundle format {FORMAT_VERSION} and schema revision {HEAD_REVISION}: "
        "raise the minor version and add it to this table")


def test_the_lowest_versions_file_pins_every_lower_bound():
    """.ci/lowest-versions.txt installs each dependency at its declared lower bound (a run there
    found keras>=3.0 and psycopg>=3.1 untrue): it must follow pyproject.toml, or it checks old bounds."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (ROOT / ".ci" / "lowest-versions.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    for text in declared:
        requirement = Requirement(text)
        lowest = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
        assert len(lowest) == 1, f"{text}: no single lower bound"
        name = requirement.name.lower()
        assert pins.get(name) and pins[name].startswith(lowest[0]), f"{text}: lowest-versions.txt pins {pins.get(name)}"
        assert requirement.specifier.contains(pins[name]), f"{text}: the pin {pins[name]} is outside the bound"
