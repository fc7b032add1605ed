"""A classifier for the tests, loaded by the server with
``LIVECOMMENTS_CLASSIFIER=tests.moderation.fake_classifier:MarkerClassifier``."""

from __future__ import annotations

from domain.model import Comment
from ingest.moderation.rules import Verdict

MARKER = "classifier-bait"


class MarkerClassifier:
    """Flags comments containing ``MARKER``; raises on ``classifier-crash`` (fail open)."""

    async def classify(self, comment: Comment) -> Verdict | None:
        if "classifier-crash" in comment.text:
            raise RuntimeError("the classifier fell over")
        if MARKER in comment.text:
            return Verdict("marker", "the test marker")
        return None
