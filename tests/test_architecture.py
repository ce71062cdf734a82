"""The package keeps the shape of its data flow: checked, so an upward import fails CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_import_linter_contracts_hold():
    """The layers and leaf contracts in pyproject.toml ([tool.importlinter])."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert command, "import-linter is not installed: pip install -e '.[test]'"
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_interfaces_and_evaluation_use_only_the_chatbot_door():
    """The CLI, the REPL, the server and evaluation talk to ``ChatBot``'s methods, never its parts."""
    reaching_in = re.compile(r"\b(bot|loaded)\.(generator|store|_store|_generator)\b")
    offenders = []
    for folder in ("cli", "evaluation", "training", "serving"):
        for path in sorted((ROOT / "chatbot" / folder).glob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if reaching_in.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_nothing_named_cli_is_installed_at_the_top_level():
    """The console entry point is the package's own; the top-level cli.py is only a script."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'chatbot = "chatbot.cli.main:run"' in text
    assert "py-modules" not in text
