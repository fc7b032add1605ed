"""Automod, off the posting path: a bounded queue of accepted comments and worker tasks.

``CommentService.post`` offers every accepted (not shadowed) comment to a
``ModerationQueue`` *after* it is stored and published, with ``offer``, which never
waits: when the queue is full the comment skips moderation (counted in
``livecomments_moderation_skipped_total``) and posting stays as fast as without
moderation. Workers take comments from the queue, run the rules (``rules.Rules``) and
then, if no rule matched, the classifier; a flagged comment is removed through the same
path as a manual delete (``CommentService.remove``: tombstone in the store, ``Removal``
on the bus, so a ``remove`` event to every viewer and the comment gone from rings,
snapshots and history) and logged with actor ``automod`` and the rule as the reason.
``livecomments_moderation_removal_seconds`` measures post-to-removal time.

In the all-in-one server the queue is in-process (``InProcessQueue``) and the workers are
tasks in the server's nursery. A cluster replaces the queue with a Redis Stream (ingest
appends, ``livecomments moderate`` processes read it through a consumer group); the
``Automod`` part is the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from domain.model import Comment
from domain.settings import Settings
from ingest.moderation.classifier import Classifier, load_classifier
from ingest.moderation.rules import RULES, Limits, Rules, RuleSet, Verdict

log = logging.getLogger("ingest.moderation.bans")

AUTOMOD = "automod"
RULES_CHECK_S = 5.0  # how often the rules file is checked for changes


class ModerationQueue(Protocol):
    def offer(self, comment: Comment) -> bool:
        """Queue ``comment`` for moderation without waiting; False when it will not be
        moderated (the queue is full)."""


class Remover(Protocol):
    async def remove(
        self,
        comment: Comment,
        *,
        actor: str,
        action: str = "delete",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        on_removed: Callable[[], None] | None = None,
    ) -> bool:
        """Take ``comment`` off every screen and read path (calling ``on_removed`` once the
        removal is published), then log it. False if it was already gone."""


class ModerationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queued = Counter("livecomments_moderation_queued", "Comments queued for automod", registry=r)
        self.skipped = Counter(
            "livecomments_moderation_skipped", "Comments not moderated because the automod queue was full", registry=r
        )
        self.checked = Counter("livecomments_moderation_checked", "Comments automod checked", registry=r)
        self.flagged = Counter("livecomments_moderation_flagged", "Comments automod removed, by rule", ["rule"], registry=r)
        self.classifier_errors = Counter(
            "livecomments_moderation_classifier_errors", "Classifier calls that failed or timed out", registry=r
        )
        self.errors = Counter("livecomments_moderation_errors", "Comments whose moderation failed", registry=r)
        self.removal_seconds = Histogram(
            "livecomments_moderation_removal_seconds",
            "Time from a comment's post to its removal by automod",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.check_seconds = Histogram(
            "livecomments_moderation_check_seconds",
            "Time automod spends on one comment (rules and classifier)",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.depth = Gauge("livecomments_moderation_queue_depth", "Comments waiting for automod", registry=r)
        for rule in (*RULES, "classifier"):
            self.flagged.labels(rule)


class InProcessQueue:
    """A bounded Trio memory channel: ``offer`` from the posting path, ``get`` in workers."""

    def __init__(self, size: int, metrics: ModerationMetrics) -> None:
        self.size = size
        self.metrics = metrics
        self._send, self._recv = trio.open_memory_channel[Comment](size)
        metrics.depth.set_function(lambda: self._send.statistics().current_buffer_used)

    def offer(self, comment: Comment) -> bool:
        try:
            self._send.send_nowait(comment)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.metrics.skipped.inc()
            return False
        self.metrics.queued.inc()
        return True

    async def get(self) -> Comment:
        return await self._recv.receive()

    def depth(self) -> int:
        return self._send.statistics().current_buffer_used


def limits_from(settings: Settings) -> Limits:
    from policy.rate import parse_rate

    def rate(text: str) -> tuple[int, float]:
        return (0, 0.0) if text.strip().lower() == "off" else parse_rate(text)

    repeat_count, repeat_window = rate(settings.moderation_repeat)
    flood_videos, flood_window = rate(settings.moderation_flood)
    return Limits(
        new_account_s=settings.moderation_new_account_min * 60.0,
        repeat_count=repeat_count,
        repeat_window_s=repeat_window,
        flood_videos=flood_videos,
        flood_window_s=flood_window,
        users_max=settings.moderation_users_max,
        per_user=max(16, repeat_count + 1, flood_videos + 1),
    )


def read_rules_file(path: str) -> RuleSet:
    """The rules file parsed (ValueError naming the file and line when it is not valid)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"moderation rules file {path}: {e}") from None
    try:
        return RuleSet.parse(text)
    except ValueError as e:
        raise ValueError(f"moderation rules file {path}: {e}") from None


class Automod:
    """The rules and the classifier, and what to do with a verdict."""

    def __init__(
        self,
        rules: Rules,
        metrics: ModerationMetrics,
        *,
        remover: Remover,
        classifier: Classifier | None = None,
        classifier_timeout_s: float = 2.0,
        rules_path: str = "",
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.rules = rules
        self.remover = remover
        self.metrics = metrics
        self.classifier = classifier
        self.classifier_timeout_s = classifier_timeout_s
        self.rules_path = rules_path
        self.wall_ms = wall_ms
        self._rules_mtime: float | None = None

    @classmethod
    def loader(cls, settings: Settings, metrics: ModerationMetrics) -> Callable[[Remover], Automod]:
        """Read the rules file and load the classifier now (ValueError for a bad one, so
        a server stops at once with a clear message, before it opens its stores); the
        returned function makes the ``Automod`` once its remover (the comment service)
        exists."""
        ruleset = read_rules_file(settings.moderation_rules) if settings.moderation_rules else RuleSet()
        classifier = load_classifier(settings.classifier) if settings.classifier else None

        def make(remover: Remover) -> Automod:
            return cls(
                Rules(ruleset, limits_from(settings)),
                metrics,
                remover=remover,
                classifier=classifier,
                classifier_timeout_s=settings.classifier_timeout_s,
                rules_path=settings.moderation_rules,
            )

        return make

    async def check(self, comment: Comment) -> Verdict | None:
        verdict = self.rules.evaluate(comment, trio.current_time())
        if verdict is not None or self.classifier is None:
            return verdict
        try:
            with trio.fail_after(self.classifier_timeout_s):
                verdict = await self.classifier.classify(comment)
        except Exception as e:  # a broken classifier lets the comment stand (fail open)
            self.metrics.classifier_errors.inc()
            log.warning("classifier failed on %s/%s: %r", comment.video_id, comment.id, e)
            return None
        if verdict is not None and not isinstance(verdict, Verdict):
            self.metrics.classifier_errors.inc()
            log.warning("classifier returned %r, not a Verdict or None", verdict)
            return None
        if verdict is not None:
            verdict = Verdict(f"classifier:{verdict.rule}", verdict.detail)
        return verdict

    async def handle(self, comment: Comment) -> Verdict | None:
        """Check one comment and remove it if flagged."""
        verdict = await self._checked(comment)
        if verdict is not None:
            await self._remove(comment, verdict)
        return verdict

    async def handle_batch(self, comments: Sequence[Comment]) -> list[Verdict | None]:
        """Check a batch (in order: the repeat and flood rules count what came before),
        then remove the flagged ones. A comment whose check or removal fails is counted
        in ``errors`` and lets the others go on (its verdict is None)."""
        verdicts: list[Verdict | None] = []
        for comment in comments:
            try:
                verdicts.append(await self._checked(comment))
            except Exception as e:
                self.metrics.errors.inc()
                log.warning("moderation of %s/%s failed: %r", comment.video_id, comment.id, e)
                verdicts.append(None)
        for i, (comment, verdict) in enumerate(zip(comments, verdicts, strict=True)):
            if verdict is None:
                continue
            try:
                await self._remove(comment, verdict)
            except Exception as e:
                self.metrics.errors.inc()
                log.warning("moderation of %s/%s failed: %r", comment.video_id, comment.id, e)
                verdicts[i] = None
        return verdicts

    async def _checked(self, comment: Comment) -> Verdict | None:
        started = trio.current_time()
        verdict = await self.check(comment)
        self.metrics.checked.inc()
        self.metrics.check_seconds.observe(trio.current_time() - started)
        return verdict

    async def _remove(self, comment: Comment, verdict: Verdict) -> None:
        details: dict[str, Any] = {"detail": verdict.detail}

        def removed() -> None:  # the Removal is on the bus: viewers are being told now
            elapsed_ms = max(0, self.wall_ms() - comment.created_at)
            details["post_to_removal_ms"] = elapsed_ms
            label = "classifier" if verdict.rule.startswith("classifier:") else verdict.rule
            self.metrics.flagged.labels(label).inc()
            self.metrics.removal_seconds.observe(elapsed_ms / 1000)

        await self.remover.remove(
            comment, actor=AUTOMOD, action="automod_remove", reason=verdict.rule, details=details, on_removed=removed
        )

    async def work(self, queue: InProcessQueue) -> None:
        """One worker: take, check, remove; a failure costs one comment, not the worker."""
        while True:
            comment = await queue.get()
            try:
                await self.handle(comment)
            except Exception as e:
                self.metrics.errors.inc()
                log.warning("moderation of %s/%s failed: %r", comment.video_id, comment.id, e)

    async def watch_rules(self, interval: float = RULES_CHECK_S) -> None:
        """Reload the rules file when it changes; a bad new file keeps the old rules."""
        if not self.rules_path:
            return
        path = trio.Path(self.rules_path)
        while True:
            try:
                mtime = (await path.stat()).st_mtime
            except OSError:
                mtime = None
            if self._rules_mtime is None:
                self._rules_mtime = mtime
            elif mtime is not None and mtime != self._rules_mtime:
                self._rules_mtime = mtime
                try:
                    ruleset = await trio.to_thread.run_sync(read_rules_file, self.rules_path)
                except ValueError as e:
                    log.error("%s; keeping the previous rules", e)
                else:
                    self.rules.ruleset = ruleset
                    log.info("moderation rules reloaded from %s", self.rules_path)
            await trio.sleep(interval)

    async def run(
        self, queue: InProcessQueue, workers: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self.work, queue)
            if workers:
                nursery.start_soon(self.watch_rules)
            task_status.started()
