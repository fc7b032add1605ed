"""The comment service's HTTP surface: sign-in, posting, deleting."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request

from domain.contract import GuestSignIn
from domain.errors import NotFound, RateLimited
from domain.identity import new_guest_id
from domain.params import check_video, parse_id
from policy.addresses import address_key
from policy.rate import Rate
from transport.services import ingest, node
from transport.web import bearer, body_bytes, json_body, json_response

bp = Blueprint("ingest", __name__)


@bp.post("/v1/auth/guest")
async def guest() -> Response:
    svc, parts = node(), ingest()
    if not svc.settings.guest_signin:
        raise NotFound("guest sign-in is disabled on this server", code="guest_disabled")
    name = GuestSignIn.parse(await json_body()).name
    rule = Rate.from_text(svc.settings.guest_rate_limit)
    addr = address_key(request.remote_addr or "unknown")  # IPv6 by /64
    decision = await parts.limiter.acquire("guest:" + addr, rule, trio.current_time())
    if not decision.allowed:
        raise RateLimited("too many guest sign-ins from this address", Rate.retry_after_header(decision.retry_after))
    user_id = new_guest_id()
    # The address goes into the token (hashed): the guest's posts count against it too
    # (``LIVECOMMENTS_GUEST_POST_RATE_LIMIT``), however many guests it signed in.
    token = svc.issuer.issue(user_id, name, ("viewer",), address=svc.issuer.address_tag(addr))
    return json_response({"token": token, "user_id": user_id, "name": name}, 201)


@bp.post("/v1/videos/<video_id>/comments")
async def post_comment(video_id: str) -> Response:
    node().metrics.posts_served.labels("asgi").inc()
    pipeline = ingest().pipeline
    # 404, 401 and a declared 413 before the body is read, as on the lean path.
    who = pipeline.authenticate(video_id, request.headers.get("Authorization"), request.content_length)
    comment = await pipeline.submit(video_id, who, request.headers.get("Content-Type"), await body_bytes())
    return json_response(comment.to_json(), 201, {"Location": f"/v1/videos/{video_id}/comments/{comment.id}"})


@bp.delete("/v1/videos/<video_id>/comments/<comment_id>")
async def delete_comment(video_id: str, comment_id: str) -> Response:
    check_video(video_id)
    who = bearer()
    cid = parse_id(comment_id, "comment id")
    await ingest().comments.delete(video_id, cid, who)
    return Response(b"", status=204)


@bp.post("/v1/videos/<video_id>/comments/<comment_id>/reactions")
async def react(video_id: str, comment_id: str) -> Response:
    check_video(video_id)
    who = bearer()
    cid = parse_id(comment_id, "comment id")
    await ingest().comments.react(video_id, cid, who)
    return json_response({"id": str(cid), "accepted": True}, 202)
