"""The ASGI app (Quart on Hypercorn): everything but the lean stream path."""

from __future__ import annotations

from importlib import resources
from typing import Any

import trio
from quart import Response, redirect, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from domain.errors import LivecommentsError, NotFound
from domain.params import check_video
from domain.settings import Settings
from transport.openapi import openapi
from transport.services import IngestParts, Node, RmsParts
from transport.services import node as current
from transport.web import error_response, json_response

BODY_DRAIN_S = 5.0
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


def asgi(app: Any, settings: Settings) -> Any:
    """The app as Hypercorn should run it: behind ``proxy_hops`` trusted proxies, the
    client address (guest sign-in's limit and the address in a guest token) comes from
    X-Forwarded-For."""
    if settings.proxy_hops > 0:
        from hypercorn.middleware import ProxyFixMiddleware

        return ProxyFixMiddleware(app, mode="legacy", trusted_hops=settings.proxy_hops)
    return app


def all_in_one_app(node: Node, ingest: IngestParts, rms: RmsParts) -> QuartTrio:
    """``livecomments serve``: every route."""
    return create_app(node, ingest=ingest, rms=rms)


def ingest_app(node: Node, ingest: IngestParts) -> QuartTrio:
    """An ingest node: sign-in, posting, deleting, reactions, moderation."""
    return create_app(node, ingest=ingest)


def rms_app(node: Node, rms: RmsParts) -> QuartTrio:
    """An rms node: long-poll, history, snapshot, stats, and the SSE fallback."""
    return create_app(node, rms=rms)


def create_app(node: Node, *, ingest: IngestParts | None = None, rms: RmsParts | None = None) -> QuartTrio:
    """The app of a process with these parts: the operations routes, the page and
    OpenAPI always, and each role's blueprint where its parts are given."""
    static = resources.files("transport") / "static"
    app = QuartTrio("livecomments", static_folder=str(static), static_url_path="/static")
    for part in (node, ingest, rms):
        if part is not None:
            app.config[type(part).__name__] = part
    app.config["MAX_CONTENT_LENGTH"] = node.settings.max_body
    app.config["RESPONSE_TIMEOUT"] = None
    # The connection's stream cuts a body off after body_timeout_s from the end of its
    # head (transport.handoff); Quart's own limit, from when a route reads the body,
    # is the same and so comes second.
    app.config["BODY_TIMEOUT"] = node.settings.body_timeout_s
    app.config["JSON_SORT_KEYS"] = False

    if ingest is not None:
        from transport.routes_ingest import bp as ingest_bp
        from transport.routes_moderation import bp as moderation_bp

        app.register_blueprint(ingest_bp)
        app.register_blueprint(moderation_bp)
    if rms is not None:
        from transport.routes_rms import bp as rms_bp

        app.register_blueprint(rms_bp)

    @app.errorhandler(LivecommentsError)
    async def _lc_error(err: LivecommentsError) -> Response:
        current().metrics.posts.labels(str(err.status)).inc() if _is_post() else None
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        return json_response({"error": _CODES.get(status, "http_error"), "detail": err.description or ""}, status)

    @app.after_request
    async def _count(resp: Response) -> Response:
        if _is_post() and resp.status_code < 400:
            current().metrics.posts.labels(str(resp.status_code)).inc()
        return resp

    @app.after_request
    async def _drain_body(resp: Response) -> Response:
        # A response finished before the request body was read (an error answered from
        # the headers alone) leaves Hypercorn unable to reuse the connection, and under
        # quart-trio its close is cancelled, so the keep-alive connection hangs. Read the
        # rest of the body first (bounded by MAX_CONTENT_LENGTH); when that is refused or
        # slow, tell the client to close the connection instead.
        if request.content_length or "transfer-encoding" in request.headers:
            try:
                with trio.move_on_after(BODY_DRAIN_S) as scope:
                    await request.get_data(cache=False)
                drained = not scope.cancelled_caught
            except Exception:
                drained = False
            if not drained:
                resp.headers["Connection"] = "close"
        return resp

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        svc = current()
        if svc.draining:
            return json_response({"status": "draining"}, 503)
        failures = {}
        for check in svc.ready_checks:
            try:
                await check()
            except Exception as e:  # any failure means not ready; say which
                failures[getattr(check, "__name__", "check")] = str(e)
        if failures:
            return json_response({"status": "unavailable", "failures": failures}, 503)
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        metrics = node.metrics
        if rms is not None:
            metrics.rooms.set(len(rms.rooms.rooms))
        return Response(metrics.render(), content_type=metrics.content_type)

    described: list[dict[str, Any]] = []  # built once, on first request

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        # The character classes in the request schemas take a second to build: off the
        # event loop, once (a second request meanwhile builds it too; the result is equal).
        if not described:
            described.append(await trio.to_thread.run_sync(openapi, node.settings))
        return json_response(described[0])

    page = (static / "watch.html").read_text(encoding="utf-8") if (static / "watch.html").is_file() else ""

    @app.get("/watch/<video_id>")
    async def watch(video_id: str) -> Response:
        check_video(video_id)
        # Connection: close makes the browser open a fresh connection for its event
        # stream, which the front door then serves on the lean path.
        return Response(
            page.replace("{{VIDEO_ID}}", video_id),
            content_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "Connection": "close"},
        )

    @app.get("/")
    async def index() -> Response:
        return redirect("/watch/lobby")  # type: ignore[return-value]

    @app.route("/v1/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str) -> Response:
        raise NotFound(f"no such endpoint: /v1/{rest}")

    return app


def _is_post() -> bool:
    from quart import request

    return request.method == "POST" and request.path.endswith("/comments")
