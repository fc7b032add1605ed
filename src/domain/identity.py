"""Identity: HS256 JWTs with ``sub``, ``name``, ``roles``, ``streams``, ``exp``, and for a
guest ``addr``: a keyed hash of the client address it signed in from (its
``address_key``), so that its posts count against that address too."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import jwt

from domain.errors import Unauthorized

ROLES = ("viewer", "verified", "moderator", "admin")
KEY_FILE = "jwt.key"


@attrs.frozen
class Identity:
    user_id: str
    name: str
    roles: frozenset[str] = frozenset({"viewer"})
    streams: frozenset[str] = frozenset()
    # A guest token's ``addr`` claim (``TokenIssuer.address_tag``); None for other tokens.
    address: str | None = None

    @property
    def verified(self) -> bool:
        return "verified" in self.roles

    @property
    def moderator(self) -> bool:
        return "moderator" in self.roles or "admin" in self.roles

    def is_streamer(self, video_id: str) -> bool:
        return video_id in self.streams


def signing_key(secret: str, data_dir: str) -> str:
    """The configured secret, or a random key kept in ``data_dir`` (created once).

    The file appears with its whole content or not at all (written aside, then linked
    into place), so a reader never sees it empty; when two processes race, one key wins
    and both use it. An empty file left by something else is replaced.
    """
    if secret:
        return secret
    path = Path(data_dir) / KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    try:
        if path.exists():
            os.replace(tmp, path)  # it was empty: nobody can have used it
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race: use its key
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


# Tokens whose signature and claims were checked, kept so a client's repeated requests
# skip the HMAC and the JSON (the same bytes verify the same way until they expire).
VERIFIED_MAX = 4096


@attrs.frozen
class TokenIssuer:
    key: str
    algorithm: str = "HS256"
    clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)
    # token -> (identity, exp). Bounded: when full, the oldest entry goes.
    _verified: dict[str, tuple[Identity, float]] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def issue(
        self,
        user_id: str,
        name: str,
        roles: frozenset[str] | set[str] | tuple[str, ...] = ("viewer",),
        streams: frozenset[str] | set[str] | tuple[str, ...] = (),
        ttl_s: int = 86400,
        now: float | None = None,
        address: str | None = None,
    ) -> str:
        bad = set(roles) - set(ROLES)
        if bad:
            raise ValueError(f"unknown roles: {sorted(bad)}")
        iat = int(time.time() if now is None else now)
        claims = {
            "sub": user_id,
            "name": name,
            "roles": sorted(set(roles) | {"viewer"}),
            "streams": sorted(streams),
            "iat": iat,
            "exp": iat + ttl_s,
        }
        if address is not None:
            claims["addr"] = address
        return jwt.encode(claims, self.key, algorithm=self.algorithm)

    def address_tag(self, key: str) -> str:
        """The ``addr`` claim for a client address key: keyed, so that a token does not
        carry (or let anyone guess back by brute force) the address itself."""
        return hmac.new(self.key.encode(), b"addr:" + key.encode(), hashlib.sha256).hexdigest()[:24]

    def verify(self, token: str) -> Identity:
        now = self.clock()
        known = self._verified.get(token)
        if known is not None:
            identity, exp = known
            if now < exp:
                return identity
            del self._verified[token]
        try:
            # ``exp`` is checked here against ``clock``, the same check for a cached token.
            claims = jwt.decode(
                token, self.key, algorithms=[self.algorithm], options={"require": ["sub", "exp"], "verify_exp": False}
            )
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid", code="invalid_token") from None
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise Unauthorized("the token's claims are malformed", code="invalid_token")
        if now >= exp:
            raise Unauthorized("the token has expired", code="token_expired")
        sub, name = claims.get("sub"), claims.get("name", "")
        roles, streams = claims.get("roles", []), claims.get("streams", [])
        address = claims.get("addr")
        if (
            not isinstance(sub, str)
            or not sub
            or not isinstance(name, str)
            or not isinstance(roles, list)
            or not isinstance(streams, list)
            or not all(isinstance(r, str) for r in roles + streams)
            or not (address is None or (isinstance(address, str) and address))
        ):
            raise Unauthorized("the token's claims are malformed", code="invalid_token")
        identity = Identity(sub, name or sub, frozenset(roles) | {"viewer"}, frozenset(streams), address)
        if len(self._verified) >= VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (identity, float(exp))
        return identity

    def from_header(self, header: str | None) -> Identity:
        if not header:
            raise Unauthorized("an Authorization: Bearer token is required", code="missing_token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use Authorization: Bearer <token>", code="missing_token")
        return self.verify(token.strip())


def new_guest_id() -> str:
    return "g_" + uuid.uuid4().hex[:16]
