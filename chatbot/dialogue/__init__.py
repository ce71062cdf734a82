"""Dialogue: ``ChatBot`` (``bot``), the one object interfaces and applications talk to, and the
session store (``store``, SQLAlchemy) that keeps every conversation. It builds the model's
context from stored history and stores each reply; it may import inference, model and data.
"""
