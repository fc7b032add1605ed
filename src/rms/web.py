"""The realtime side's HTTP surface through the ASGI app: long-poll, history, snapshot,
stats, and the SSE fallback for a stream request on a connection Hypercorn already owns."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, request

from livecomments.errors import NotFound
from livecomments.web import json_response, optional_identity, services
from rms.frames import Encoding
from rms.params import check_video, parse_float, parse_id, parse_int, stream_params
from rms.room import Room
from rms.viewer import QueueViewer

bp = Blueprint("rms", __name__)


async def _room(video_id: str) -> Room:
    rooms = services().rooms
    if rooms is None:
        raise NotFound("this node does not serve streams", code="not_rms")
    return await rooms.get(video_id)


@bp.get("/v1/videos/<video_id>/events")
async def events(video_id: str) -> Response:
    svc = services()
    s = svc.settings
    params = stream_params(s, svc.issuer, video_id, request.args, request.headers.get("Last-Event-ID"))
    room = await _room(video_id)
    user_id = params.identity.user_id if params.identity else None
    reset, entries = await room.catch_up(params.after, params.backlog, user_id)
    viewer = QueueViewer(user_id, Encoding.SSE_PLAIN, s.viewer_buffer, s.stuck_s, svc.metrics)
    first = b"retry: %d\n\n" % s.retry_ms + room.opening(Encoding.SSE_PLAIN, reset, entries)
    viewer.open(first, trio.current_time())
    room.join(viewer)
    svc.metrics.connections.labels("sse-asgi").inc()

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                data = await viewer.next_bytes()
                if data is None:
                    return
                yield data
        finally:
            room.leave(viewer)
            viewer.close()

    resp = Response(body(), content_type="text/event-stream; charset=utf-8")
    resp.headers["Cache-Control"] = "no-cache, no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    resp.timeout = None
    return resp


@bp.get("/v1/videos/<video_id>/comments")
async def comments(video_id: str) -> Response:
    check_video(video_id)
    if "after" in request.args:
        return await _long_poll(video_id)
    return await _history(video_id)


async def _history(video_id: str) -> Response:
    svc = services()
    s = svc.settings
    before = parse_id(request.args["before"], "before") if request.args.get("before") else None
    limit = parse_int(request.args.get("limit"), "limit", 50, 1, s.history_max)
    who = optional_identity()
    page = await svc.store.before(video_id, before, limit, who.user_id if who else None)
    nxt = str(page[-1].id) if len(page) == limit else None
    return json_response({"comments": [c.to_json() for c in page], "next": nxt})


async def _long_poll(video_id: str) -> Response:
    svc = services()
    s = svc.settings
    after = parse_id(request.args["after"], "after")
    wait = parse_float(request.args.get("wait"), "wait", 0.0, 0.0, s.longpoll_max_s)
    who = optional_identity()
    user_id = who.user_id if who else None
    room = await _room(video_id)
    removals_seen = room.removals_total
    with trio.move_on_after(wait):
        while True:
            reset, entries = await room.catch_up(after, s.history_max, user_id)
            if entries or reset or room.closed:
                break
            room.touch()
            svc.metrics.long_polls.inc()
            try:
                await room.changed.wait()
            finally:
                svc.metrics.long_polls.dec()
            if room.removals_total != removals_seen or room.closed:
                break
    reset, entries = await room.catch_up(after, s.history_max, user_id)
    entries = entries[: s.history_max]
    body = {
        "comments": [e.comment.to_json() for e in entries],
        "removed": [str(r) for r in room.removed_recent],
        "next": str(entries[-1].id) if entries else str(after),
    }
    if reset:
        body["reset"] = True
    return json_response(body, headers={"Cache-Control": "no-store"})


@bp.get("/v1/videos/<video_id>/snapshot.json")
async def snapshot(video_id: str) -> Response:
    check_video(video_id)
    room = await _room(video_id)
    source = services().rooms.snapshot_source  # type: ignore[union-attr]
    published = await source(room) if source is not None else None
    body, etag = published if published is not None else room.snapshot()
    headers = {"Cache-Control": "public, max-age=1", "ETag": etag}
    inm = request.headers.get("If-None-Match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(b"", status=304, headers=headers)
    return Response(body, status=200, headers=headers, content_type="application/json")


@bp.get("/v1/videos/<video_id>/stats")
async def stats(video_id: str) -> Response:
    check_video(video_id)
    svc = services()
    rooms = svc.rooms
    room = rooms.rooms.get(video_id) if rooms else None
    now = trio.current_time()
    return json_response(
        {
            "video_id": video_id,
            "viewers": len(room.viewers) if room else 0,
            "comments_per_s": round(room.velocity.rate(now), 3) if room else 0.0,
            "mode": room.mode if room else "push",
        }
    )
