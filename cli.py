#!/usr/bin/env python
"""Run the chatbot command line from a source checkout: ``python cli.py chat``.

The installed ``chatbot`` command is the same function, ``chatbot.cli.main:main``.
"""

import sys

from chatbot.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
