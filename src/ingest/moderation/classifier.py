"""The pluggable classifier: anything with ``async def classify(comment) -> Verdict | None``.

``LIVECOMMENTS_CLASSIFIER=package.module:attr`` loads one. ``attr`` is either an object
with a ``classify`` coroutine method, or a zero-argument callable (a class, a factory)
returning such an object. The pipeline calls it after the rules found nothing, with a
timeout (``LIVECOMMENTS_CLASSIFIER_TIMEOUT_S``); a classifier that raises or times out
lets the comment stand (fail open) and is counted in a metric.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Protocol, runtime_checkable

from domain.model import Comment
from ingest.moderation.rules import Verdict

__all__ = ["Classifier", "Verdict", "load_classifier"]


@runtime_checkable
class Classifier(Protocol):
    async def classify(self, comment: Comment) -> Verdict | None:
        """A verdict to remove ``comment``, or None to let it stand."""


def load_classifier(spec: str) -> Classifier:
    """Import ``module:attr`` and return the classifier it names (ValueError if it is not one)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"classifier must look like module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"classifier {spec!r}: cannot import {module_name}: {e}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"classifier {spec!r}: {module_name} has no {attr}") from None
    if not hasattr(obj, "classify") and callable(obj):
        obj = obj()
    if inspect.isclass(obj):
        obj = obj()
    method = getattr(obj, "classify", None)
    if method is None or not inspect.iscoroutinefunction(method):
        raise ValueError(f"classifier {spec!r} has no async classify(comment) method")
    assert isinstance(obj, Classifier)
    return obj
