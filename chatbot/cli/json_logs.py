"""``chatbot serve --log-format json``: one JSON object per log line, for log collectors
(Kubernetes, Cloud Logging, Loki) that index fields instead of parsing text.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid`` and ``message``; a line
written while a request is handled has its ``request_id`` (the ``X-Request-ID`` its response
carries), uvicorn's access lines (with ``-v``) their ``client``, ``method``, ``path`` and
``status``, and a line about an exception its ``exception`` (the traceback, in the one line)."""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime, timezone

from chatbot.serving.request_ids import current_request_id

FORMATTER = f"{__name__}.JsonFormatter"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "pid": record.process,
                "message": record.getMessage()}
        request_id = current_request_id()
        if request_id:
            line["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            line.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_line(logger: str, level: int, message: str) -> str:
    """A line the command writes itself (not through logging) in the same form as the others."""
    return JsonFormatter().format(logging.makeLogRecord({"name": logger, "levelname": logging.getLevelName(level),
                                                         "levelno": level, "msg": message}))


def uvicorn_log_config() -> dict:
    """Uvicorn's own logging configuration with every formatter JSON."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"] = {name: {"()": FORMATTER} for name in config["formatters"]}
    return config
