"""``python -m chatbot``: the ``chatbot`` command, where its script is not on PATH."""

from chatbot.cli.main import run

run()
