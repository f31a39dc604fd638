"""Writing files so that a reader never sees half of one: a temporary name, then a rename."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["RollbackError", "folder_lock", "move_all", "named_as_final", "refuse_folders", "refuse_stray_whitespace",
           "replace_set", "replaced_atomically", "signals_held", "whitespace_note"]


def decoded_text(data: bytes) -> str:
    """Text as Windows tools save it too: UTF-8 with or without a byte-order mark, or UTF-16 with one (Notepad's
    "UTF-8 with BOM", PowerShell 5's `>`). Raises UnicodeDecodeError for anything else."""
    return data.decode("utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig")


@contextmanager
def replaced_atomically(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield ``.NAME`` + `suffix` beside `path` to write; it replaces `path` when the block ends.

    On any failure, Ctrl-C or SIGTERM (which the CLI turns into SystemExit) inside the
    block, or a failure of the final rename (a folder in the way, no permission), the
    temporary file is removed: a 55 MB ``.layer.tmp.gpkg`` was left behind.
    Drivers that pick a format by extension need it last: ``suffix=".tmp.gpkg"`` with
    the name's stem.
    """
    import secrets
    import socket

    path = Path(path)
    refuse_folders([path])
    # each run its own temporary name (host, process, a random part): with one fixed name, two runs writing one
    # output removed or wrote into each other's file (`vectorize` twice at once: both failed, or one's success
    # was undone by the other's clean-up); those of killed processes are removed as staging folders are
    host = socket.gethostname().replace("-", "_").replace(".", "_")
    own = f"geoseg-{host}-{os.getpid()}-{secrets.token_hex(3)}"
    tmp = path.with_name(f".{path.name}.{own}{suffix}" if suffix == ".tmp" else f".{path.stem}.{own}{suffix}")
    # a legal name of 250 bytes was refused for its temporary one's length; a GeoPackage's SQLite adds '-journal'
    if len(tmp.name.encode()) > 255 - len("-journal"):
        import hashlib

        tmp = path.with_name(f".{hashlib.sha1(path.name.encode()).hexdigest()[:16]}.{own}{suffix}")
    _remove_dead_temp_files(tmp.parent, host)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_dead_temp_files(folder: Path, host: str) -> None:
    """Remove ``.NAME.geoseg-HOST-PID-XXXXXX...`` files of `replaced_atomically` whose process is gone (killed)."""
    import re

    pattern = re.compile(rf"^\..*\.geoseg-{re.escape(host)}-(\d+)-[0-9a-f]{{6}}(\.|$)")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = pattern.match(name)
        if found and int(found.group(1)) != os.getpid():
            try:
                os.kill(int(found.group(1)), 0)
            except ProcessLookupError:
                try:
                    (folder / name).unlink(missing_ok=True)
                except OSError:  # a folder of that name, or gone meanwhile: not ours to remove (h119)
                    pass
            except OSError:
                pass


@contextmanager
def named_as_final(logger_name: str, staged: dict[str, str]) -> Iterator[None]:
    """Within the block, warnings of `logger_name` and geoseg errors name the user's files: each key of
    `staged` (a copy in a staging folder, ``out/.geoseg-vm-…/x_mask.cog.tif``) becomes its value."""
    import logging

    from geoseg.errors import GeosegError

    def final(text: str) -> str:
        for copy, path in staged.items():
            text = text.replace(copy, path)
        return text

    class Renamed(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = final(record.getMessage()), None
            return True

    logger, renamed = logging.getLogger(logger_name), Renamed()
    logger.addFilter(renamed)
    try:
        yield
    except GeosegError as exc:
        raise type(exc)(final(str(exc))) from None
    finally:
        logger.removeFilter(renamed)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then act on the first that came.

    For the few renames that put a finished set of outputs in place: a signal between two of
    them left half a set. Python runs signal handlers in the main thread only, so elsewhere
    (the web page's jobs) the block runs as it is.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    # a handler not set from Python (None: QGIS's or another embedding program's own, in C) is left alone: it was
    # replaced by SIG_DFL afterwards, and the host's next SIGTERM then ended it
    held = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not None]
    before = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])  # now to the handler that was in place: KeyboardInterrupt, SystemExit(143)


def refuse_unwritable(paths, *, vector: bool = False) -> None:
    """OutputError for a vector file (GeoPackage, GeoJSON, FlatGeobuf) whose path holds ';': GDAL's vector
    drivers cut it there, so that ``site;A_polygons.gpkg`` was written as a file named ``site`` and then
    reported missing (with advice to free disk space). A ``.json`` is a vector file only where `vector` says so
    (`vectorize`'s output): a run's JSON report is written by Python, which takes the name."""
    from geoseg.errors import OutputError

    suffixes = (".gpkg", ".geojson", ".fgb", *((".json",) if vector else ()))
    for path in map(Path, paths):
        if path.suffix.lower() in suffixes and ";" in os.path.abspath(path):
            raise OutputError(f"{path}: GDAL cannot write a vector file whose path holds ';' (it cuts the path "
                              "there). Rename the file or folder without ';', or pick another output folder.")


LOW_SPACE = 16 * 2**20  # bytes free under which a failed write is taken for a full disk


def write_advice(exc: BaseException, where: str | os.PathLike | None = None) -> str:
    """What to do about a failed write: free disk space only where the disk is full. GDAL's drivers often say
    only 'Cannot write feature' or 'Unexpected I/O failure' (h118): with `where`, the folder written to, a disk
    that has next to no room left is taken for the cause."""
    import errno
    import shutil

    text = str(exc).lower()
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space" in text or "disk is full" in text:
        return "Free some disk space or pick another output folder"
    if "cannot rollback - no transaction is active" in text:  # SQLite undid the write itself, as it does when
        # the disk fills (SQLITE_FULL), and GDAL's ROLLBACK after it is all pyogrio tells; the part written is gone
        # by then, so the disk has room again when it is measured below (a GeoPackage 45 MB to 20 MB free, h170)
        return "The disk was likely full: free some disk space or pick another output folder"
    if where is not None:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        if free is not None and free < LOW_SPACE:
            return f"The disk has {free / 2**20:.1f} MB left: free some disk space or pick another output folder"
    if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS) or "permission denied" in text \
            or "read-only" in text:
        return "Check the permissions of the output folder, or pick another one"
    return "Pick another output folder or file name"


_SPACE_NAMES = {" ": "a space", "\n": "a newline", "\r": "a carriage return", "\t": "a tab"}


def _stray_whitespace(text: str) -> tuple[str, str, str | None] | None:
    """What is wrong in `text` (a path): the path itself or the first of its names that starts or ends in
    whitespace, what is wrong with it ('ends with a newline') and the path up to that name (None for the whole
    path); else any line break in it; None for a path without either."""
    parts = Path(text).parts
    for i, part in enumerate([text, *parts]):
        words = []
        if part[:1].isspace():
            words.append(f"starts with {_SPACE_NAMES.get(part[0], 'whitespace')}")
        if part[-1:].isspace():
            words.append(f"ends with {_SPACE_NAMES.get(part[-1], 'whitespace')}")
        if words:
            return part, " and ".join(words), None if i == 0 else str(Path(*parts[:i]))
    return (text, "holds a line break", None) if "\n" in text or "\r" in text else None


def _stripped(text: str) -> str:
    """`text` with the whitespace around each of its names dropped."""
    parts = [p.strip() for p in Path(text.strip()).parts]
    return str(Path(*parts)) if parts else text.strip()


def _fix(text: str, *, say_there: bool = False) -> str:
    """What to pass instead of `text`, a path with stray whitespace; with `say_there`, whether that is there."""
    clean = _stripped(text)
    if "\n" in clean or "\r" in clean:
        return "Remove the line break"
    there = ", which exists" if say_there and os.path.lexists(clean) else ""
    newline = "\n" in text or "\r" in text
    how = (" (str.strip(): a line read from a file keeps its newline)" if newline else " (str.strip())"
           ) if text.strip() == clean else ""
    return f"Pass {clean!r}{there}{how}"


def whitespace_note(path: str | os.PathLike) -> str:
    """' The path ends with a newline ...' for a missing input whose path starts or ends in whitespace (a name
    read from a file keeps its line's end, a pasted one a space), '' for any other: the error printed the
    newline as it is, a path broken over two lines, with no word of it."""
    text = os.fsdecode(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    found = _stray_whitespace(text)
    if found is None:
        return ""
    part, what, _ = found
    name = "The path" if part == text else f"The name {part!r} in the path"
    return f" {name} {what}. {_fix(text, say_there=True)}."


def refuse_stray_whitespace(path: str | os.PathLike, what: str = "output folder") -> None:
    """OutputError for an output path that starts or ends in whitespace or holds a line break: segment(x,
    "out\\n") made a folder whose name ends in a newline (a path read from a file keeps it), "out " one that
    ``ls`` shows as ``out``, and a survey's GeoPackage under such a folder failed in SQLite. A name with whitespace
    at an end is taken where that folder is there already (``"/mnt/My Drive /out"``, ``"/mnt/My Drive "``)."""
    from geoseg.errors import OutputError

    text = os.fsdecode(os.fspath(path))
    found = _stray_whitespace(text)
    if found is None:
        return
    part, wrong, upto = found
    if "\n" not in text and "\r" not in text and os.path.lexists(text if upto is None else upto):
        return  # there already ("/mnt/My Drive ", a folder whose name ends in a space): taken as "/mnt/My Drive /" is
    name = f"the {what}'s path" if part == text else f"the name {part!r} in the {what}'s path"
    raise OutputError(f"{text!r}: {name} {wrong}, which would make a file or folder of that name. {_fix(text)}.")


def refuse_folders(paths) -> None:
    """OutputError when a folder stands where one of `paths`, a file, goes: `os.replace` then failed
    with IsADirectoryError, a traceback, after the moves before it (a style without its mask)."""
    from geoseg.errors import OutputError

    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            raise OutputError(f"{path}: is a folder, where this run writes a file. Move or rename the folder, "
                              "or pick another output folder.")


def move_all(moves: list[tuple[Path, Path]], *, staging: Path, refuse_existing: Sequence[Path] = (),
             remove: Sequence[Path] = ()) -> list[Path]:
    """``os.replace`` each (staged, final) pair in order and remove the files of `remove` (an earlier run's
    outputs that no longer match), the whole set or nothing (`replace_set`, its backups in `staging`, the
    folder the staged files are in); callers hold signals around it (`signals_held`). Returns the paths
    removed.

    A failed rename (a file that cannot be replaced) was a traceback that left new files beside old ones; it
    is now an OutputError, with the earlier files as they were. Should putting one back fail too, the backups
    are moved beside the outputs (``.geoseg-kept-…``) and the error names that folder: they are never deleted.
    A folder where a file goes is refused (`refuse_folders`) before anything moves, and so is a file at
    one of `refuse_existing` (the outputs a run without --overwrite found absent when it started): another
    run into the same folder put it there meanwhile (both runs succeeded, the second silently replacing the
    first's files).
    """
    import tempfile

    from geoseg.errors import OutputError

    refuse_folders(final for _, final in moves)
    there = [str(path) for path in refuse_existing if os.path.exists(path)]  # as the check at the start: a dangling
    # link there is replaced, not "appeared"
    if there:
        raise OutputError(f"{there[0]}{f' and {len(there) - 1} more' if len(there) > 1 else ''} appeared while this "
                          "run worked (another run into the same folder?); nothing of this run was put in place. "
                          "Pass --overwrite to replace them, or use another output folder.")
    for _, final in moves:
        final.parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=".aside-", dir=staging))
    try:
        return replace_set(moves, aside, remove=remove)
    except RollbackError as exc:
        kept = (moves[0][1] if moves else Path(remove[0])).parent / f".geoseg-kept-{aside.name[len('.aside-'):]}"
        os.replace(aside, kept)  # out of the staging folder, which is deleted next
        raise OutputError(f"{exc.failed}: could not be replaced ({exc.error}), and the earlier "
                          f"{', '.join(str(p) for p in exc.lost)} could not be put back: they are in {kept}. "
                          "Move them back by hand.") from None
    except OSError as exc:
        inside = (Path(staging), aside)  # name the user's file, not a staged copy or a backup
        where = next((f for f in (exc.filename2, exc.filename) if f and not any(p in Path(f).parents for p in inside)),
                     exc.filename)
        raise OutputError(f"{where}: could not be replaced ({exc.strerror or exc}); nothing of this run was put in "
                          "place, and the earlier files are as they were. Check that the file is not immutable "
                          "or open in another program, and that the disk has space.") from None


class RollbackError(OSError):
    """`replace_set` failed, and so did putting back some of the files it had replaced (`lost`, whose
    earlier versions are in its `aside` folder)."""

    def __init__(self, failed: Path, error: str, lost: list[Path]) -> None:
        super().__init__(f"{failed}: {error}; not put back: {', '.join(map(str, lost))}")
        self.failed, self.error, self.lost = failed, error, lost


def replace_set(moves: list[tuple[Path, Path]], aside: Path, *, remove: Sequence[Path] = ()) -> list[Path]:
    """``os.replace`` each (staged, final) pair in order and remove the files of `remove`, so that the set
    appears whole or not at all; returns the paths removed.

    Each file a move replaces is first hard-linked into `aside` (an empty folder on the same file system,
    which the caller removes afterwards), so that its path always holds the old file or the new one, even
    if the process is killed outright; where hard links are refused it is renamed there instead. The files
    of `remove` are renamed into `aside`. If any step fails, the files already moved in are removed and those
    set aside are put back, and the error is raised: a failed last rename left a new model beside the old
    model's card. If putting one back fails too, RollbackError names it, and its earlier version stays in
    `aside`. A folder where a file goes is refused (IsADirectoryError) before anything moves. Callers hold
    signals around it (`signals_held`).
    """
    for _, final in moves:
        if final.is_dir() and not final.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(final))
    undo: list[tuple[Path, Path | None]] = []  # (path, its earlier version in `aside`, or None: it was not there)
    removed: list[Path] = []
    try:
        for i, (staged, final) in enumerate(moves):
            backup = None
            if os.path.lexists(final):
                backup = aside / f"{i}-{final.name}"
                try:
                    os.link(final, backup, follow_symlinks=False)
                except OSError:  # no hard links on this file system: set it aside, for a moment not at its path
                    os.replace(final, backup)
            undo.append((final, backup))
            os.replace(staged, final)
        for j, path in enumerate(map(Path, remove)):
            if os.path.lexists(path):
                backup = aside / f"r{j}-{path.name}"
                os.replace(path, backup)
                undo.append((path, backup))
                removed.append(path)
    except BaseException as exc:
        lost = []
        for path, backup in reversed(undo):
            try:
                if backup is None:
                    path.unlink(missing_ok=True)
                elif not _same_file(backup, path):  # a hard link to a file still at its path: nothing to undo
                    os.replace(backup, path)
            except OSError:
                lost.append(path)
        if lost:
            raise RollbackError(Path(getattr(exc, "filename2", None) or getattr(exc, "filename", None) or "?"),
                                getattr(exc, "strerror", None) or str(exc), lost) from exc
        raise
    return removed


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file (hard links), not following symbolic links."""
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


_LOCKS_HELD: set[str] = set()  # the folder locks this process holds (two surveys of one program, in two threads)


@contextmanager
def folder_lock(lock: Path, refused) -> Iterator[None]:
    """Hold the file `lock` (this host and process id in it) while the block runs; where another live process
    holds it, raise OutputError(``refused(where, lock)``), `where` naming that process. A lock left by a process
    killed outright on this host, or by this very process id after a container restart, is taken over."""
    import socket

    from geoseg.errors import OutputError
    from geoseg.raster import pid_alive

    host = socket.gethostname()
    taken = False
    try:
        with signals_held():  # SIGTERM between taking the lock and the `try` that gives it back left it behind
            while True:
                try:
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    try:
                        holder, pid = lock.read_text().split()
                    except (OSError, ValueError):  # being written, or not ours: as held
                        holder, pid = "", ""
                    # a container restarted after a kill runs the survey under the killed one's process id (1)
                    ours = pid == str(os.getpid()) and os.path.realpath(lock) not in _LOCKS_HELD
                    if holder == host and pid.isdigit() and (ours or not pid_alive(int(pid))):
                        lock.unlink(missing_ok=True)
                        continue
                    where = (f"process {pid}" if holder == host else f"process {pid} on {holder}" if holder
                             else "a process")
                    raise OutputError(refused(where, lock)) from None
                with os.fdopen(fd, "w") as f:
                    f.write(f"{host} {os.getpid()}\n")
                taken = True
                _LOCKS_HELD.add(os.path.realpath(lock))
                break
        yield
    finally:
        if taken:
            _LOCKS_HELD.discard(os.path.realpath(lock))
            lock.unlink(missing_ok=True)
