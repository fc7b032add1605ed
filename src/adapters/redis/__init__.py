"""Cluster mode on Redis: the bus, the rate limiter, the hot store and presence.

Every piece talks to Redis through ``coredis`` (AnyIO based, so it runs under
``trio.run``; redis-py's async client is asyncio-only). Every key name comes from
``keys.Keys``: everything that belongs to one video shares a hash tag, so the Lua
scripts that touch several of a video's keys stay on one slot of a Redis Cluster.
"""
