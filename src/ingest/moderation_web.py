"""The moderation HTTP surface: bans, per-video settings (slow mode), the moderation log.

Every route checks in the same order: the video id (404), the token (401), the caller's
rights (403), then the body (400/413/415/422).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from ingest.moderation import (
    ModerationService,
    check_ban_body,
    check_settings_body,
    check_user_id,
)
from livecomments.auth import Identity
from livecomments.errors import NotFound, Unprocessable
from livecomments.store.moderation import GLOBAL
from livecomments.web import bearer, json_body, json_response, services
from rms.params import check_video, parse_id, parse_int

bp = Blueprint("moderation", __name__)

LOG_LIMIT_MAX = 200


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _moderation() -> ModerationService:
    svc = services().moderation
    if svc is None:
        raise NotFound("this node does not take moderation requests", code="not_ingest")
    return svc


def _user_in_path(user_id: str) -> str:
    try:
        return check_user_id(user_id)
    except Exception:
        raise NotFound("no such user", code="no_such_ban") from None


async def _ban(scope: str, who: Identity) -> Response:
    mod = _moderation()
    user_id, mode, reason = check_ban_body(await json_body())
    if reason is not None and not _encodable(reason):
        # A lone surrogate (JSON "\ud800") cannot be stored: the store would fail with a 500.
        raise Unprocessable("reason is not valid Unicode text", code="invalid_reason")
    ban = await mod.ban(scope, who, user_id, mode, reason)
    return json_response(ban.to_json(), 201)


async def _log(scope: str) -> Response:
    mod = _moderation()
    before = parse_id(request.args["before"], "before") if request.args.get("before") else None
    limit = parse_int(request.args.get("limit"), "limit", 50, 1, LOG_LIMIT_MAX)
    page = await mod.log_page(scope, before, limit)
    nxt = str(page[-1].id) if len(page) == limit else None
    return json_response({"entries": [e.to_json() for e in page], "next": nxt}, headers={"Cache-Control": "no-store"})


# -- per video ----------------------------------------------------------------------------


@bp.post("/v1/videos/<video_id>/bans")
async def ban_on_video(video_id: str) -> Response:
    check_video(video_id)
    who = bearer()
    ModerationService.require_video_moderator(video_id, who)
    return await _ban(video_id, who)


@bp.get("/v1/videos/<video_id>/bans")
async def bans_on_video(video_id: str) -> Response:
    check_video(video_id)
    ModerationService.require_video_moderator(video_id, bearer())
    bans = await _moderation().bans(video_id)
    return json_response({"bans": [b.to_json() for b in bans]}, headers={"Cache-Control": "no-store"})


@bp.delete("/v1/videos/<video_id>/bans/<user_id>")
async def unban_on_video(video_id: str, user_id: str) -> Response:
    check_video(video_id)
    who = bearer()
    ModerationService.require_video_moderator(video_id, who)
    await _moderation().unban(video_id, who, _user_in_path(user_id))
    return Response(b"", status=204)


@bp.get("/v1/videos/<video_id>/settings")
async def get_settings(video_id: str) -> Response:
    check_video(video_id)
    slow = _moderation().slow_mode(video_id)
    return json_response({"video_id": video_id, "slow_mode_s": slow}, headers={"Cache-Control": "no-cache"})


@bp.put("/v1/videos/<video_id>/settings")
async def put_settings(video_id: str) -> Response:
    check_video(video_id)
    who = bearer()
    ModerationService.require_video_moderator(video_id, who)
    mod = _moderation()
    body = await json_body()
    value = body.get("slow_mode_s")
    if isinstance(value, float) and value.is_integer():
        # 60.0 is the JSON number 60 (JSON Schema's "integer" says so too); a whole
        # number written with a fraction is not a reason to refuse it.
        body["slow_mode_s"] = int(value)
    slow_mode_s = check_settings_body(body)
    settings = await mod.set_settings(video_id, who, slow_mode_s)
    return json_response(settings.to_json())


@bp.get("/v1/videos/<video_id>/moderation-log")
async def video_log(video_id: str) -> Response:
    check_video(video_id)
    ModerationService.require_video_moderator(video_id, bearer())
    return await _log(video_id)


# -- global (admins; the log also for moderators) -----------------------------------------


@bp.post("/v1/bans")
async def ban_global() -> Response:
    who = bearer()
    ModerationService.require_admin(who)
    return await _ban(GLOBAL, who)


@bp.get("/v1/bans")
async def bans_global() -> Response:
    ModerationService.require_admin(bearer())
    bans = await _moderation().bans(GLOBAL)
    return json_response({"bans": [b.to_json() for b in bans]}, headers={"Cache-Control": "no-store"})


@bp.delete("/v1/bans/<user_id>")
async def unban_global(user_id: str) -> Response:
    who = bearer()
    ModerationService.require_admin(who)
    await _moderation().unban(GLOBAL, who, _user_in_path(user_id))
    return Response(b"", status=204)


@bp.get("/v1/moderation-log")
async def global_log() -> Response:
    ModerationService.require_moderator(bearer())
    return await _log(GLOBAL)
