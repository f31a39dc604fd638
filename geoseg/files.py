"""Writing files so that a reader never sees half of one: a temporary name, then a rename."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["replaced_atomically"]


@contextmanager
def replaced_atomically(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield ``.NAME`` + `suffix` beside `path` to write; it replaces `path` when the block ends.

    On any failure, Ctrl-C or SIGTERM (which the CLI turns into SystemExit) inside the
    block the temporary file is removed: a 55 MB ``.layer.tmp.gpkg`` was left behind.
    Drivers that pick a format by extension need it last: ``suffix=".tmp.gpkg"`` with
    the name's stem.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{suffix}" if suffix == ".tmp" else f".{path.stem}{suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
