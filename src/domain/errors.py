"""One error hierarchy, mapped to the contract's status codes in one place."""

from __future__ import annotations

from typing import Any


class LivecommentsError(Exception):
    status = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(LivecommentsError):
    status, code = 400, "bad_request"


class Unauthorized(LivecommentsError):
    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="livecomments"'}


class Forbidden(LivecommentsError):
    status, code = 403, "forbidden"


class NotFound(LivecommentsError):
    status, code = 404, "not_found"


class PayloadTooLarge(LivecommentsError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(LivecommentsError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(LivecommentsError):
    status, code = 422, "invalid_comment"


class RateLimited(LivecommentsError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after: int, *, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {**super().body(), "retry_after": self.retry_after}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(LivecommentsError):
    status, code = 503, "unavailable"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRooms(Unavailable):
    """This node holds ``max_rooms`` rooms and every one has viewers: a stream (or read)
    of a video without a room is refused until one frees up."""

    code = "too_many_rooms"
