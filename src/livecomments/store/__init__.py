"""Comment stores: the interface and its adapters."""

from livecomments.store.base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable"]
