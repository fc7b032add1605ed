"""The realtime side's HTTP surface through the ASGI app: long-poll, history, snapshot,
stats, and the SSE fallback for a stream request on a connection Hypercorn already owns."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, request

from domain.params import check_video, parse_float, parse_id, parse_int, parse_shard, stream_params
from rms.frames import Encoding
from rms.room import Room, Rooms
from rms.viewer import QueueViewer
from transport.handoff import transport_of
from transport.services import VideoStats, node, rms
from transport.web import json_response, optional_identity

bp = Blueprint("rms", __name__)


def _rooms() -> Rooms:
    return rms().rooms


async def _room(video_id: str) -> Room:
    return await _rooms().get(video_id)


@bp.get("/v1/videos/<video_id>/events")
async def events(video_id: str) -> Response:
    svc = node()
    s = svc.settings
    params = stream_params(s, svc.issuer, video_id, request.args, request.headers.get("Last-Event-ID"))
    room, user_id, first = await _rooms().open_stream(params, Encoding.SSE_PLAIN)
    viewer = QueueViewer(user_id, Encoding.SSE_PLAIN, s.viewer_buffer, s.stuck_s, svc.metrics)
    viewer.open(first, trio.current_time())
    room.join(viewer, params.shard)
    svc.metrics.connections.labels("sse-asgi").inc()
    # The stuck rule: Hypercorn writes each chunk inside a shielded scope, so only the
    # connection's stream can see a viewer that takes nothing; after stuck_s without
    # progress it aborts the connection (the response then ends here, and the viewer
    # leaves), and this counts it as a stuck viewer.
    transport = transport_of(request.scope)
    if transport is not None:
        transport.on_stuck = svc.metrics.stuck
        if s.viewer_sndbuf:
            # As on the lean path (transport.frontdoor): a fixed kernel buffer, so a stalled
            # viewer meets the queue's drop policy and the stuck rule within a few
            # batches instead of pinning megabytes of autotuned kernel memory.
            with contextlib.suppress(OSError):
                transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, s.viewer_sndbuf)

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
            if transport is not None:
                transport.on_stuck = None  # the connection may serve other requests

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
    s = node().settings
    before = parse_id(request.args["before"], "before") if request.args.get("before") else None
    limit = parse_int(request.args.get("limit"), "limit", 50, 1, s.history_max)
    who = optional_identity()
    page = await rms().store.before(video_id, before, limit, who.user_id if who else None)
    nxt = str(page[-1].id) if len(page) == limit else None
    return json_response({"comments": [c.to_json() for c in page], "next": nxt})


async def _long_poll(video_id: str) -> Response:
    svc = node()
    s = svc.settings
    after = parse_id(request.args["after"], "after")
    wait = parse_float(request.args.get("wait"), "wait", 0.0, 0.0, s.longpoll_max_s)
    parse_shard(s, request.args.get("shard"))  # routed by the edge; checked like a stream's
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
    rooms = _rooms()
    body, etag = await rooms.snapshot(await rooms.get(video_id))
    headers = {"Cache-Control": "public, max-age=1", "ETag": etag}
    inm = request.headers.get("If-None-Match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(b"", status=304, headers=headers)
    return Response(body, status=200, headers=headers, content_type="application/json")


@bp.get("/v1/videos/<video_id>/spread")
async def spread(video_id: str) -> Response:
    """Over how many shards the video's viewers spread (and, when more than one, the
    viewers of each): a client picks one of ``0..shards-1`` and watches with
    ``?shard=N`` (docs/operations.md, "A hot video spreads over several rms nodes")."""
    check_video(video_id)
    body = {"video_id": video_id, **await rms().spread(video_id)}
    return json_response(body, headers={"Cache-Control": "public, max-age=1"})


@bp.get("/v1/videos/<video_id>/stats")
async def stats(video_id: str) -> Response:
    check_video(video_id)
    return json_response(await rms().stats(video_id))


def local_stats(rooms: Rooms) -> VideoStats:
    """The stats of this node's own room: the all-in-one server's (a cluster's rms
    nodes sum their numbers over the cluster instead)."""

    async def stats(video_id: str) -> dict[str, Any]:
        room = rooms.rooms.get(video_id)
        now = trio.current_time()
        return {
            "video_id": video_id,
            "viewers": len(room.viewers) if room else 0,
            "comments_per_s": round(room.velocity.rate(now), 3) if room else 0.0,
            "mode": room.mode if room else "push",
        }

    return stats


async def one_shard(video_id: str) -> dict[str, Any]:
    """The spread of every video in one process: nothing to spread over."""
    return {"shards": 1}
