"""A server process for tests/test_asgi_servers.py.

    python asgi_child.py SERVER FRAMEWORK PORT [CLOSE_TIMEOUT]

SERVER: uvicorn | hypercorn | hypercorn-trio | granian (through
cancelcore.asgi.serve, which owns SIGINT/SIGTERM) or daphne (its own
server: `app` below is importable as asgi_child:app with FRAMEWORK in
CC_FRAMEWORK).  FRAMEWORK: starlette | django | plain.

Every event a test asserts on is one line on stdout, flushed at once, so
the order of the lines is the order of the events in this process:
``READY``, ``ENTER key``, ``CANCEL key REASON``, ``FREE key``, ``TASKCANCEL
key`` (the handler saw its cancellation), ``THREADEND key`` (a sync
endpoint's thread returned), ``DONE key`` (a handler completed),
``WSOP key`` (a websocket handler saw its operation).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from cancelcore import CancelReason, current_operation


def say(*words: Any) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def register(key: str) -> threading.Event:
    """Registers the request's callbacks; returns an event set by its cancel."""
    ctx = current_operation()
    assert ctx is not None, "no operation inside a request"
    released = threading.Event()

    def on_cancel(reason: CancelReason, state: Any) -> None:
        say("CANCEL", state, reason.name)
        released.set()

    ctx.register_for_cancel(on_cancel, lambda state: say("FREE", state), key)
    say("ENTER", key)
    return released


# ----------------------------------------------------------------- starlette


def starlette_app() -> Any:
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    cancelled = anyio.get_cancelled_exc_class

    async def sleep(request: Request) -> Response:
        key = request.path_params["key"]
        register(key)
        try:
            await anyio.sleep(float(request.query_params.get("t", "30")))
        except cancelled():
            say("TASKCANCEL", key)
            raise
        say("DONE", key)
        return PlainTextResponse(f"slept {key}")

    def sync(request: Request) -> Response:
        # A def endpoint: run in a worker thread.  It blocks until its cancel
        # callback releases it, takes a little longer (the free-state must
        # wait for it), then fails as a database driver would.
        key = request.path_params["key"]
        released = register(key)
        if released.wait(float(request.query_params.get("t", "20"))):
            time.sleep(0.2)
            say("THREADEND", key)
            raise RuntimeError("query canceled (as a driver would say)")
        say("THREADEND", key)
        say("DONE", key)
        return PlainTextResponse(f"sync {key}")

    async def stream(request: Request) -> Response:
        key = request.path_params["key"]
        register(key)

        async def chunks() -> Any:
            try:
                for n in range(3000):
                    yield f"chunk-{n:04d}\n".encode()
                    await anyio.sleep(0.01)
            except cancelled():
                say("TASKCANCEL", key)
                raise

        return StreamingResponse(chunks(), media_type="text/plain")

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def ws(websocket: WebSocket) -> None:
        key = websocket.path_params["key"]
        await websocket.accept()
        register(key)
        say("WSOP", key)
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(f"echo {text}")
        except WebSocketDisconnect:
            say("WSDISCONNECT", key)
        except cancelled():
            say("TASKCANCEL", key)
            raise

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        say("LIFESPAN startup", "op" if current_operation() is not None else "no-op")
        yield
        # The middleware closed its host before the app's own shutdown runs.
        say("LIFESPAN shutdown", MIDDLEWARE[0].host.state.name if MIDDLEWARE else "?")

    return Starlette(lifespan=lifespan, routes=[
        Route("/sleep/{key}", sleep), Route("/sync/{key}", sync), Route("/stream/{key}", stream),
        Route("/ok", ok), WebSocketRoute("/ws/{key}", ws),
    ])


# -------------------------------------------------------------------- django


def django_app() -> Any:
    import asyncio

    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="test-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
            MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={}, LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


async def django_sleep(request: Any, key: str) -> Any:
    import asyncio

    from django.http import HttpResponse

    register(key)
    try:
        await asyncio.sleep(float(request.GET.get("t", "30")))
    except asyncio.CancelledError:
        # Django cancels its view task itself; the free-state must come
        # after this line, never before.
        await asyncio.sleep(0.05)  # cleanup that awaits
        say("TASKCANCEL", key)
        raise
    say("DONE", key)
    return HttpResponse(f"slept {key}")


def _urlpatterns() -> list[Any]:
    try:
        from django.urls import path
    except Exception:  # pragma: no cover - django not installed
        return []
    return [path("sleep/<str:key>", django_sleep)]


# --------------------------------------------------------------------- plain


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    key = scope["path"].rsplit("/", 1)[-1]
    register(key)
    while True:  # reads until the client leaves: the disconnect is its cancel
        message = await receive()
        if message["type"] == "http.disconnect":
            say("SAWDISCONNECT", key)
            return


MIDDLEWARE: list[Any] = []


def make(framework: str) -> Any:
    from cancelcore.asgi import CancellationMiddleware

    if framework == "starlette":
        inner = starlette_app()
    elif framework == "django":
        inner = django_app()
    elif framework == "plain":
        inner = plain_app
    else:
        raise SystemExit(f"unknown framework {framework}")
    mw = CancellationMiddleware(inner, close_timeout=float(os.environ.get("CC_CLOSE_TIMEOUT", "1.0")))
    MIDDLEWARE.append(mw)
    return mw


urlpatterns = _urlpatterns()

if os.environ.get("CC_FRAMEWORK") and __name__ != "__main__":
    app = make(os.environ["CC_FRAMEWORK"])  # daphne imports asgi_child:app


def main() -> None:
    server, framework, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    close_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    os.environ["CC_CLOSE_TIMEOUT"] = str(close_timeout)
    from cancelcore.asgi import serve

    mw = make(framework)
    options: dict[str, Any] = {}
    if server == "uvicorn":
        options = dict(log_level="warning", access_log=False)
    elif server in ("hypercorn", "hypercorn-trio"):
        if server == "hypercorn-trio":
            options["worker_class"] = "trio"
        server = "hypercorn"
    elif server == "granian":
        from granian.constants import Loops

        options = dict(log_access=False)
        del Loops
    say("READY")
    serve(mw, "127.0.0.1", port, server=server, close_timeout=close_timeout, **options)
    say("EXITED")


if __name__ == "__main__":
    main()
