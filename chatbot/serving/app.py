"""``create_app``: the ASGI application behind ``chatbot serve``, importable to mount in
another service (``app.mount("/bot", create_app("models/default"))``).

The model loads in the background once the app starts: ``/healthz`` answers at once,
``/readyz`` says when the model is ready, and requests that arrive before then wait for it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbot.errors import StoreError, first_line
from chatbot.inference.generator import SERVER_BATCHES, SERVER_WIDTHS, decode_threads
from chatbot.serving import errors, native_api, openai_api
from chatbot.serving.batching import DecodeBatcher
from chatbot.serving.metrics import Metrics
from chatbot.serving.request_ids import HEADER as REQUEST_ID_HEADER, RequestIds
from chatbot.serving.schemas import Health, ModelInfo, Readiness, documented
from chatbot.serving.security import BrowserGuard, KeyRing, RateLimiter
from chatbot.serving.settings import ServerSettings, keys_from_environment
from chatbot.serving.state import NOT_STARTED, ServerState, state_of
from chatbot.version import __version__

log = logging.getLogger("chatbot.serving")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})
# The chat page loads only its own files and is never framed by another site (clickjacking).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
DATABASE_CHECK_SECONDS = 2.0  # /readyz waits this long for the session database to answer
STATIC = Path(__file__).parent / "static"


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over {limit:,} bytes")


class LimitAndMeasure:
    """Refuses bodies over the limit (by Content-Length, or while reading one without it),
    counts every request by route template and status, with its latency, and answers an
    exception no route mapped with the JSON 500 here, inside the CORS and request-ID layers
    (Starlette's own handler answers outside them: a cross-origin page saw a network error)."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.state.settings.max_body_bytes
        started = time.perf_counter()
        status = {"code": None}  # set once the response starts
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response = errors.error_response(413, "body_too_large", f"the request body is over {limit:,} bytes")
            await response(scope, receive, send)
            return self._count(scope, 413, started)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def measured_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, measured_send)
        except Exception as exc:
            if status["code"] is not None:
                raise  # a stream cut short: nothing else can be sent
            error = errors.from_library(exc)  # logged there, with the request's ID
            await errors.error_response(error.status, error.code, error.message, error.headers)(
                scope, receive, measured_send)
        finally:
            self._count(scope, status["code"] or 500, started)

    def _count(self, scope, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        metrics = self.state.metrics
        method = scope.get("method", "")  # a client picks it: made-up ones would add series without end
        metrics.requests.labels(method if method in HTTP_METHODS else "other", route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


def create_app(model: str | Path | None = None, db: str | None = None, *, bot=None,
               settings: ServerSettings | None = None, warm_up: bool = True) -> FastAPI:
    """The app serving ``model`` (a bundle directory or a bundled name; the default model when
    None) with sessions in ``db`` (a SQLAlchemy URL; the default database when None), or an
    already loaded ``ChatBot`` given as ``bot`` (the app then never closes it)."""
    settings = settings or ServerSettings(api_keys=keys_from_environment())
    state = ServerState(settings, KeyRing(settings.api_keys),
                        RateLimiter(settings.rate_per_minute, settings.rate_burst), Metrics())

    def load():
        from chatbot.dialogue.bot import ChatBot

        loaded = bot if bot is not None else ChatBot.load(model, db=db, warm_up=False)
        if warm_up:
            loaded.warm_up()
        try:
            loaded.check_database()  # open (and migrate) the database now rather than on a first request
        except StoreError as exc:  # down for now: stateless requests are answered, the others get
            # 503 and try again (``chatbot serve`` refuses to start on a database that does not answer)
            log.error("the session database is unavailable: %s", first_line(exc))
        return loaded

    async def load_in_background():
        try:
            loaded = await state.batcher.run_blocking(load)
            manifest = loaded.bundle.manifest
            state.model_name = loaded.name
            created = manifest.get("created", "")
            try:
                state.model_created = int(datetime.fromisoformat(created).timestamp())
            except (TypeError, ValueError):
                state.model_created = 0
            state.model_fingerprint = f"chatbot-{__version__}-{created}"
            if warm_up:  # every input width and batch size it will meet: no request waits for XLA
                await state.batcher.run_blocking(functools.partial(
                    loaded.warm_widths, SERVER_BATCHES, SERVER_WIDTHS, most_replies=settings.max_n))
            state.bot = loaded
            state.metrics.model_loaded(__version__, loaded.name, created or "", lambda: loaded.compiled_programs)
            log.info("model %s ready", loaded.name)
            if warm_up:
                state.compiling = asyncio.get_running_loop().create_task(compile_greedy(loaded))
        except Exception as exc:  # noqa: BLE001 - /readyz reports it
            state.load_error = first_line(exc)
            log.error("could not load the model: %s", state.load_error)
        finally:
            state.ready.set()

    stop_compiling = threading.Event()

    async def compile_greedy(loaded):
        """Greedy decoding's programs, compiled once the server is ready, beside its requests:
        requests at temperature 0 decode greedily whatever the model's own decoding (a beam
        search), and a shape first met under load compiled for seconds while its batch waited.
        Before ready they would add 4 s to a start with the disk cache filled and 24 s to one
        without (bench/README.md, serve_load.py, "Greedy programs after ready")."""
        began = time.perf_counter()
        before = loaded.compiled_programs
        try:
            await asyncio.to_thread(loaded.warm_widths, SERVER_BATCHES, SERVER_WIDTHS, {"strategy": "greedy"},
                                    stop_compiling)
            log.info("greedy decoding (temperature 0): %d programs ready in %.1f s", loaded.compiled_programs - before,
                     time.perf_counter() - began)
        except Exception as exc:  # noqa: BLE001 - a shape not compiled now is compiled when first met
            log.warning("could not compile greedy decoding ahead: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # A second run of the lifespan (a host app restarted, a test client again) starts afresh:
        # the bot the last one closed must not answer, nor stand for a ready model.
        state.ready, state.bot, state.load_error, state.compiling = asyncio.Event(), None, None, None
        stop_compiling.clear()
        state.batcher = DecodeBatcher(lambda prepared, keep: state.bot.decode_prepared(prepared),
                                      settings.max_batch, settings.batch_wait_ms,
                                      on_batch=state.metrics.decoded,
                                      on_queue=state.metrics.queue.set,
                                      decoders=settings.decoders or decode_threads(),
                                      prepare=lambda requests: state.bot.prepare_replies(requests),
                                      finish=lambda prepared, generated: state.bot.finish_replies(prepared, generated),
                                      store=state.run_store_call)
        state.batcher.start()
        state.store_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chatbot-store")
        loading = asyncio.get_running_loop().create_task(load_in_background())
        try:
            yield
        finally:
            await loading
            stop_compiling.set()
            if state.compiling is not None:
                await state.compiling  # ends after the program it is compiling
            await state.batcher.stop()
            state.store_threads.shutdown(wait=False, cancel_futures=True)  # a call the database never answers stays behind
            if bot is None and state.bot is not None:
                state.bot.close()
                state.bot = None

    app = FastAPI(title="chatbot", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="A seq2seq chatbot: an OpenAI-compatible chat API and a native REST API "
                              "over its dialogue manager.")
    app.state.chatbot = state
    errors.install(app)
    app.add_middleware(LimitAndMeasure, state=state)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["*"], allow_headers=["*"], expose_headers=["Retry-After", REQUEST_ID_HEADER])
    app.add_middleware(BrowserGuard, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins,
                       keys_required=state.keys.required)
    app.add_middleware(RequestIds)  # added last: outermost, so refusals carry the ID too
    app.include_router(openai_api.router)
    app.include_router(native_api.router)

    @app.get("/healthz", tags=["operations"], responses=documented(Health))
    async def healthz():
        return {"status": "ok"}

    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)  # monitors that send HEAD

    @app.get("/readyz", tags=["operations"],
             responses={**documented(Readiness), **documented(Readiness, 503, "not ready: loading, failed or not started")})
    async def readyz(request: Request):
        current = state_of(request)
        if current.bot is not None:
            compiling = current.compiling is not None and not current.compiling.done()
            ready = {"status": "ready", "model": current.model_name, "compiling": compiling}
            return {**ready, **await _database_state(current.bot)}
        if current.load_error:
            return JSONResponse({"status": "failed", "error": current.load_error}, status_code=503)
        if current.batcher is None:
            return JSONResponse({"status": "not_started", "error": NOT_STARTED}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus' text exposition format"}})
    async def metrics(request: Request):
        return Response(state_of(request).metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/model", tags=["operations"], responses=documented(ModelInfo))
    async def model_info(request: Request):
        current = state_of(request)
        loaded = await current.bot_when_ready()
        return {"name": current.model_name, "created": loaded.bundle.manifest.get("created"),
                "chatbot_version": __version__, "decoding": dataclasses.asdict(loaded.decoding),
                "max_message_chars": loaded.dialogue.max_message_chars, "auth": current.keys.required}

    _offline_docs(app)
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def page():
            return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)
    return app


async def _database_state(bot) -> dict:
    """Whether the session database answers now: it may go away after the model loaded. Still
    ready either way (stateless requests are answered), but an operator sees why session
    requests get 503."""
    try:
        await asyncio.wait_for(asyncio.to_thread(bot.check_database), DATABASE_CHECK_SECONDS)
    except (StoreError, SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
        reason = first_line(exc, f"no answer in {DATABASE_CHECK_SECONDS:g} s")
        return {"database": "unavailable", "error": reason}
    return {"database": "ok"}


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the swagger-ui-bundle package's files, not a CDN: the
    docs pages work where the server has no way out."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        # Only what /docs loads: the package also holds Swagger's demo page, which fetches
        # specs from anywhere and would run on this origin, beside the page's stored key.
        if name not in DOCS_ASSETS:
            raise StarletteHTTPException(404)
        return FileResponse(Path(swagger_ui_path) / name)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")  # where a host app mounted this one
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title="chatbot API",
                                   swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png")
