"""Reading ``Settings`` from flags and ``LIVECOMMENTS_<NAME>`` variables.

The flag wins over the variable, the variable over the default (and a command's own
defaults, ``overrides``, sit between the default and the variable).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from domain.settings import Settings, check


def env_name(field: str) -> str:
    return "LIVECOMMENTS_" + field.upper()


def _convert(kind: type, text: str, name: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None


def add_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add a ``--flag`` per setting (all of them unless ``only`` names some)."""
    for f in attrs.fields(Settings):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.metadata["kind"]
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default!r})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=str, help=help_text)


def load(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults <- overrides (a command's own defaults) <- environment <- flags."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dict(overrides)
    for f in attrs.fields(Settings):
        kind = f.metadata["kind"]
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is not None:
            values[f.name] = raw if isinstance(raw, bool) else _convert(kind, raw, "--" + f.name.replace("_", "-"))
        elif env_name(f.name) in env:
            values[f.name] = _convert(kind, env[env_name(f.name)], env_name(f.name))
    s = Settings(**values)
    check(s)
    return s
