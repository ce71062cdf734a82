"""Interfaces: the ``chatbot`` command (``main``: argument parsing and commands), the terminal
chat (``repl``), console helpers (``console``: spinner, colours, input history) and TensorFlow's
quiet import (``quiet``). The top of the flow: it may import every layer, and nothing imports it.
"""
