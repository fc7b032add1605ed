"""The ASGI app (Quart on Hypercorn): everything but the lean stream path."""

from __future__ import annotations

from importlib import resources
from typing import Any

import trio
from quart import Response, redirect, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from livecomments.config import Settings
from livecomments.errors import LivecommentsError, NotFound
from livecomments.openapi import openapi
from livecomments.services import Services
from livecomments.web import error_response, json_response, services
from rms.params import check_video

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


def create_app(svc: Services, *, ingest: bool = True, rms: bool = True) -> QuartTrio:
    static = resources.files("livecomments") / "static"
    app = QuartTrio("livecomments", static_folder=str(static), static_url_path="/static")
    app.config["LIVECOMMENTS"] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.settings.max_body
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 30
    app.config["JSON_SORT_KEYS"] = False

    if ingest:
        from ingest.moderation_web import bp as moderation_bp
        from ingest.web import bp as ingest_bp

        app.register_blueprint(ingest_bp)
        app.register_blueprint(moderation_bp)
    if rms:
        from rms.web import bp as rms_bp

        app.register_blueprint(rms_bp)

    @app.errorhandler(LivecommentsError)
    async def _lc_error(err: LivecommentsError) -> Response:
        services().metrics.posts.labels(str(err.status)).inc() if _is_post() else None
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        return json_response({"error": _CODES.get(status, "http_error"), "detail": err.description or ""}, status)

    @app.after_request
    async def _count(resp: Response) -> Response:
        if _is_post() and resp.status_code < 400:
            services().metrics.posts.labels(str(resp.status_code)).inc()
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
        svc = services()
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
        svc = services()
        if svc.rooms is not None:
            svc.metrics.rooms.set(len(svc.rooms.rooms))
        return Response(svc.metrics.render(), content_type=svc.metrics.content_type)

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        return json_response(openapi(services().settings))

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
