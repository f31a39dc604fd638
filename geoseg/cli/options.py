"""Options and parameter types shared by geoseg commands."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import click

from geoseg.errors import GeosegError

__all__ = ["BandsType", "fail_cleanly", "emit_json"]


class BandsType(click.ParamType):
    """1-based band indexes as ``3,2,1``."""

    name = "bands"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            bands = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"use comma-separated 1-based band indexes such as 1,2,3. Received: {value!r}", param, ctx)
        if not bands or min(bands) < 1:
            self.fail(f"band indexes start at 1. Received: {value!r}", param, ctx)
        return bands


@contextmanager
def fail_cleanly():
    """Turn a GeosegError into a one-line message and exit status 1, without a traceback."""
    try:
        yield
    except GeosegError as exc:
        raise click.ClickException(str(exc)) from None


def emit_json(data) -> None:
    """Print one JSON object on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
