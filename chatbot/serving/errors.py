"""Every error leaves the server as one JSON shape, OpenAI's:
``{"error": {"message": ..., "type": ..., "code": ...}}``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbot.errors import (ConfigError, DatabaseCorrupt, DecodingError, InputError, MessageNotFound, ReplyNotStored,
                            SessionNotFound, StoreError, first_line)
from chatbot.serving.request_ids import HEADER, current_request_id

log = logging.getLogger("chatbot.serving")

# Status -> OpenAI's error ``type``.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorBody(BaseModel):
    """The one error shape, for the API's schema."""
    error: ErrorDetail


# What the schema lists for every route (FastAPI's own 422 never leaves: invalid input is a 400).
ERROR_RESPONSES = {status: {"model": ErrorBody, "description": why} for status, why in (
    (400, "invalid input: JSON, types, limits"), (401, "a valid API key is required"),
    (404, "no such session, message or model (another key's look the same)"),
    (429, "rate limited: see Retry-After"), (503, "the model is loading, or the database unavailable"))}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}},
                        status_code=status, headers=headers)


def from_library(exc: Exception) -> ApiError:
    """A library exception as the HTTP error a client can act on."""
    text = first_line(exc)
    if isinstance(exc, SessionNotFound):
        return ApiError(404, "session_not_found", "no such session")
    if isinstance(exc, MessageNotFound):
        return ApiError(404, "message_not_found", "no such bot reply")
    if isinstance(exc, (InputError, ConfigError)):
        return ApiError(400, "invalid_request", text)
    if isinstance(exc, ReplyNotStored):  # a retry would store the message twice: not "retry later"
        log.error("store: %s", text)
        return ApiError(500, "reply_not_stored", f"the reply was made but could not be stored; your message "
                                                 f"was stored (message {exc.reply.user_message_id}): do not send "
                                                 "it again")
    if isinstance(exc, DatabaseCorrupt):
        log.error("store: %s", text)
        return ApiError(500, "database_corrupt", "the session database is damaged; its operator must restore it")
    if isinstance(exc, StoreError):
        log.error("store: %s", text)
        return ApiError(503, "store_unavailable", "the session database is unavailable; retry later",
                        {"Retry-After": "1"})
    if isinstance(exc, DecodingError):
        log.error("decode: %s", text)
        return ApiError(500, "decoding_failed", "the model could not generate a reply")
    log.exception("unexpected error", exc_info=exc)
    return ApiError(500, "internal_error", "internal server error")


def _one_line_validation(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return f"{where}: {first.get('msg', 'invalid value')}"


def install(app: FastAPI) -> None:
    _document_errors(app)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        return error_response(400, "invalid_request", _one_line_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, exc: RecursionError):
        return error_response(400, "invalid_request", "the body is nested too deeply")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        # Starlette sends this response outside every middleware: it names the request itself.
        error = from_library(exc)
        return error_response(error.status, error.code, error.message, {**error.headers, HEADER: current_request_id()})


def _document_errors(app: FastAPI) -> None:
    """The schema without FastAPI's 422 (``HTTPValidationError``), which this app never sends."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
