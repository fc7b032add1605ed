"""Automod's rules, sans-IO: a comment and the time go in, a verdict (or None) comes out.

Four rules, checked in this order; the first that matches decides:

1. ``blocked_word`` / ``blocked_pattern``: words, phrases and regular expressions from
   the rules file (``RuleSet.parse``; format in docs/moderation.md).
2. ``new_account_link``: a link from an account this process first saw less than
   ``new_account_s`` seconds ago.
3. ``repeated_text``: the same user posting the same normalised text ``repeat_count``
   times within ``repeat_window_s`` in one video.
4. ``cross_video_flood``: the same user posting the same normalised text in
   ``flood_videos`` different videos within ``flood_window_s``.

Rules 2-4 do not apply to the streamer's own comments. Every comment is recorded in its
author's window before the rules are checked, so refused attempts count too.

Memory is bounded: at most ``users_max`` users are remembered (least recently active
forgotten first) and at most ``per_user`` recent texts per user, each kept as a hash
(about 2 KB per remembered user at the defaults). A forgotten user is
"first seen" again on their next comment (so their links count as a new account's for a
while: the rules err towards removing links) and their windows start empty.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import OrderedDict, deque

import attrs

from domain.model import Comment

RULES = ("blocked_word", "blocked_pattern", "new_account_link", "repeated_text", "cross_video_flood")

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"\s+", re.UNICODE)

# A link: a scheme or www., or a dotted host ending in a common top-level domain.
LINK_RE = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://\S+)"
    r"|(?:\bwww\.\S+)"
    r"|(?:\b[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"\.(?:com|net|org|io|gg|ly|co|xyz|ru|cn|tk|tv|me|info|biz|link|site|top|app|dev|shop|live|click|online)\b)",
    re.IGNORECASE,
)


@attrs.frozen
class Verdict:
    """Why a comment should go: ``rule`` (a short machine name) and a human ``detail``."""

    rule: str
    detail: str = ""


def normalise(text: str) -> str:
    """The text as the repeat and flood rules compare it: NFKC, case-folded, only letters
    and digits separated by single spaces. Text with neither (emoji, punctuation) keeps
    its case-folded characters without whitespace."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = _NON_WORD.sub(" ", folded).strip()
    if words:
        return words
    return _SPACES.sub("", folded)


def has_link(text: str) -> bool:
    return LINK_RE.search(unicodedata.normalize("NFKC", text)) is not None


@attrs.frozen
class RuleSet:
    """Blocked words, phrases and patterns, parsed from the rules file."""

    words: frozenset[str] = frozenset()  # single normalised words
    phrases: tuple[str, ...] = ()  # normalised multi-word phrases
    symbols: tuple[str, ...] = ()  # entries with no letters or digits: case-folded substrings
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> RuleSet:
        """One entry per line: ``# comment``, blank, ``re:<regex>``, or a word/phrase.

        Raises ValueError naming the line of a bad regular expression."""
        words: set[str] = set()
        phrases: list[str] = []
        symbols: list[str] = []
        patterns: list[re.Pattern[str]] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                source = line[3:].strip()
                if not source:
                    raise ValueError(f"line {n}: empty pattern")
                try:
                    patterns.append(re.compile(source, re.IGNORECASE))
                except re.error as e:
                    raise ValueError(f"line {n}: bad regular expression {source!r}: {e}") from None
                continue
            if line.startswith("\\"):  # "\re:..." is the literal word "re:..."
                line = line[1:]
            norm = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", line).casefold()).strip()
            if not norm:
                symbols.append(_SPACES.sub("", unicodedata.normalize("NFKC", line).casefold()))
            elif " " in norm:
                phrases.append(norm)
            else:
                words.add(norm)
        return cls(frozenset(words), tuple(phrases), tuple(symbols), tuple(patterns))

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases or self.symbols or self.patterns)

    def match(self, text: str) -> Verdict | None:
        if not self:
            return None
        folded = unicodedata.normalize("NFKC", text).casefold()
        norm = _NON_WORD.sub(" ", folded).strip()
        if self.words:
            for w in norm.split():
                if w in self.words:
                    return Verdict("blocked_word", w)
        if self.phrases:
            padded = f" {norm} "
            for p in self.phrases:
                if f" {p} " in padded:
                    return Verdict("blocked_word", p)
        if self.symbols:
            squashed = _SPACES.sub("", folded)
            for s in self.symbols:
                if s in squashed:
                    return Verdict("blocked_word", s)
        for pat in self.patterns:
            if pat.search(text) is not None:
                return Verdict("blocked_pattern", pat.pattern)
        return None


@attrs.frozen
class Limits:
    new_account_s: float = 600.0  # 0: the link rule is off
    repeat_count: int = 3  # 0: off
    repeat_window_s: float = 60.0
    flood_videos: int = 3  # 0: off
    flood_window_s: float = 60.0
    users_max: int = 100_000
    per_user: int = 16  # recent texts remembered per user


@attrs.define
class _User:
    first_seen: float
    recent: deque[tuple[float, str, int]]  # (time, video id (interned), hash of the normalised text)


class Rules:
    """The stateful part: who was first seen when, and who posted what recently."""

    def __init__(self, ruleset: RuleSet | None = None, limits: Limits | None = None) -> None:
        self.ruleset = ruleset or RuleSet()
        self.limits = limits or Limits()
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._horizon = max(self.limits.repeat_window_s, self.limits.flood_window_s, 0.0)

    def __len__(self) -> int:
        return len(self._users)

    def remembered(self, user_id: str) -> int:
        """How many recent texts are kept for ``user_id`` (0 when forgotten)."""
        u = self._users.get(user_id)
        return len(u.recent) if u else 0

    def evaluate(self, comment: Comment, now: float) -> Verdict | None:
        """Record ``comment`` (posted at ``now``, in seconds on any monotonic clock) and say
        whether a rule flags it."""
        lim = self.limits
        user = self._touch(comment.author.id, now)
        text = hash(normalise(comment.text))  # a hash: memory per text stays fixed
        recent = user.recent
        while recent and recent[0][0] < now - self._horizon:
            recent.popleft()
        recent.append((now, sys.intern(comment.video_id), text))

        verdict = self.ruleset.match(comment.text)
        if verdict is not None or comment.streamer:
            return verdict
        if lim.new_account_s > 0 and now - user.first_seen < lim.new_account_s and has_link(comment.text):
            return Verdict("new_account_link", f"a link from an account first seen {now - user.first_seen:.0f} s ago")
        repeats = 0
        videos: set[str] = set()
        for t, video, seen in recent:
            if seen != text:
                continue
            if video == comment.video_id and t >= now - lim.repeat_window_s:
                repeats += 1
            if t >= now - lim.flood_window_s:
                videos.add(video)
        if lim.repeat_count and repeats >= lim.repeat_count:
            return Verdict("repeated_text", f"the same text {repeats} times in {lim.repeat_window_s:g} s")
        if lim.flood_videos and len(videos) >= lim.flood_videos:
            return Verdict("cross_video_flood", f"the same text in {len(videos)} videos in {lim.flood_window_s:g} s")
        return None

    def _touch(self, user_id: str, now: float) -> _User:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(now, deque(maxlen=self.limits.per_user))
            while len(self._users) > self.limits.users_max:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        return user
