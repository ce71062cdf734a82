#!/usr/bin/env python
"""Run the chatbot command line from a source checkout: ``python cli.py chat``.

The installed ``chatbot`` command is the same function, ``chatbot.cli.main:run``.
"""

from chatbot.cli.main import main, run

__all__ = ["main", "run"]  # main(argv) returns the exit status, for scripts and tests

if __name__ == "__main__":
    run()
