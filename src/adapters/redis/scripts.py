"""The Lua scripts of cluster mode: ``lua/<name>.lua``, shipped as package data.

Each file starts with comments that say its KEYS, ARGV and answer. ``source(name)`` reads a
script once per process (``importlib.resources``); ``register(redis, name)`` gives the
coredis ``Script`` that callers await with ``keys=`` and ``args=`` (EVALSHA, re-sent when
Redis forgot it after a restart).

A line ``--#include other as fn`` puts script ``other`` there as a local function
``fn(KEYS, ARGV)`` (its ``return`` is the function's answer), so one script can run
another's steps on its own slices of KEYS and ARGV without a copy of their code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from coredis.commands import Script

from adapters.redis.client import Redis

NAMES = (
    "append",
    "remove",
    "presence_report",
    "mode_propose",
    "spread_propose",
    "shard_loads",
    "snapshot_write",
    "sliding_window",
    "moderation_write",
    "post",
)


@functools.cache
def source(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"no Lua script {name!r} (one of {', '.join(NAMES)})")
    text = (resources.files("adapters.redis") / "lua" / f"{name}.lua").read_text("utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("--#include "):
            other, _as, fn = line[len("--#include ") :].split()
            if _as != "as" or not fn.isidentifier() or other == name:
                raise ValueError(f"{name}.lua: bad include line {line!r}")
            lines += [f"local function {fn}(KEYS, ARGV)", source(other).rstrip("\n"), "end"]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


# A registered script: ``await script(keys=[...], args=[...])``; the answer is the script's
# own (each file says what it returns).
ScriptCall = Callable[..., Awaitable[Any]]


def register(redis: Redis, name: str) -> ScriptCall:
    script: Script[Any] = redis.register_script(source(name))
    return script
