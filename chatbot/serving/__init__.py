"""``chatbot serve``: the HTTP interface (an OpenAI-compatible API, a native REST API over the
dialogue manager, a web chat page), importable as an ASGI app (``create_app``)."""
