"""The `geoseg` command: a click group whose commands are thin adapters over the library."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["entry", "main"]


def configure_logging(verbosity: int) -> None:
    """Map -v/-q counts to a logging level on stderr; only the CLI configures logging."""
    level = max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    # geoseg's warnings are made even under -q (the handler on stderr drops them): reports list them (flood.md)
    before = set(logging.getLogger().handlers)
    logging.basicConfig(level=min(level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
    for handler in set(logging.getLogger().handlers) - before:  # the one on stderr, not another's (pytest's)
        handler.setLevel(level)
    for noisy in ("tensorflow", "absl", "distributed", "rasterio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines ignore every log setting."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # stderr closed (2>&-): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_tensorflow(verbosity: int) -> None:
    """Import TensorFlow and probe for a GPU once, hiding its start-up chatter unless -vv."""
    if verbosity >= 2:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        return
    with _native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


ADDRESS_SPACE_FLOOR_GB = 8


def _warn_of_an_address_space_cap() -> None:
    """Warn when `ulimit -v` (an HPC job's vmem limit) caps the address space below what TensorFlow reserves: the
    default model's run aborted in C++ ("std::bad_alloc", exit 134) under a 4.5 GB cap, using 1.5 GB of memory."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft < ADDRESS_SPACE_FLOOR_GB * 1024**3:
        logging.getLogger("geoseg").warning(
            "virtual memory is capped at %.1f GB (ulimit -v): TensorFlow reserves far more address space than it "
            "uses (6 GB for 1.5 GB of memory with the default model) and may abort with 'std::bad_alloc'. Raise the "
            "cap to %d GB or more (ulimit -v unlimited), or limit memory itself instead (cgroups, --mem).",
            soft / 1024**3, ADDRESS_SPACE_FLOOR_GB)


def _exit_cleanly_on_sigterm() -> None:
    """Let SIGTERM (kill, a batch scheduler's time limit) unwind like Ctrl-C: temporary folders and
    half-written files are removed on the way out. Python's default ends at once and left them."""
    import signal
    import threading

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def _extra_arguments(message: str) -> str:
    """click's "Got unexpected extra arguments (...)" for files: an unquoted glob after an option of one value
    (`--images tiles/*.jpg`), which the shell expanded, listed every file after the first (63 Dubai paths), and
    said nothing of the quotes that fix it."""
    import re

    found = re.fullmatch(r"Got unexpected extra arguments? \((.*)\)", message, re.DOTALL)
    extra = found.group(1) if found else ""  # joined by spaces, as paths may hold them: not counted
    if not ("/" in extra or "." in extra):
        return message
    shown = extra if len(extra) <= 100 else extra[:100] + "..."
    return (f"got unexpected extra arguments ({shown}). An option takes one value each time it is given: quote a "
            "glob ('tiles/*.tif') so that geoseg expands it, not the shell, or give the option once per file.")


class _Group(click.Group):
    """Exit status 130 on Ctrl-C, as shells and batch scripts expect (click says "Aborted!" and exits 1,
    the status of a raster that failed in a survey)."""

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        # SIGTERM's handler is the command's: `main` called in a process of its own (a test run, a notebook) kept
        # it, and a CI runner's SIGTERM then ended one test with SystemExit while the run went on
        previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            return self._invoked(ctx)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _invoked(self, ctx: click.Context):
        from geoseg.cli.options import forget_json

        forget_json()  # a command run before in this process (a test, a notebook) printed its own
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # exit 2: the command line itself, which a script fixes rather than parses
            command = exc.ctx.command if exc.ctx is not None else None
            if command is not None and not any(isinstance(p, click.Argument) for p in command.params):
                # extras after options only: `scene a.tif b.tif` has one raster too many, no glob to quote (h136)
                exc.message = _extra_arguments(exc.message)
            raise
        except click.ClickException as exc:  # with --json, stdout held nothing: `| jq` failed to parse it
            _json_error(ctx, exc)
            raise
        except KeyboardInterrupt:
            status = 130
        except SystemExit as exc:  # SIGTERM (a scheduler's time limit): ended without a word in the job's log
            if exc.code != 143:
                raise
            status = 143
        except Exception as exc:
            # the signal's exception can land inside a library's own clean-up (rasterio's Env bookkeeping), which
            # then raises an error of its own: "EnvError: No GDAL environment exists", status 1, with a traceback
            status = _signal_status(exc)
            if status is None:
                known = _known_failure(exc)
                if known is None:
                    raise
                _json_error(ctx, known)
                raise known from None
        if status in (130, 143):
            said = "Interrupted" if status == 130 else "Terminated (SIGTERM)"
            # serve and models write no outputs of a run: "outputs ... are removed" told a server's log of none
            click.echo(f"{said}: " + _SIGNAL_NOTES.get(ctx.invoked_subcommand, _SIGNAL_NOTE), err=True)
            _json_error(ctx, click.ClickException(said), status)  # `| jq` got an empty stdout
        ctx.exit(status)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        ctx.meta["geoseg.command_args"] = list(args[1:])  # for _may_run_keras, before the command parses them
        return super().resolve_command(ctx, args)


_SIGNAL_NOTE = ("outputs of this run that were not complete are removed (a set that was being moved into place when "
                "the signal came is complete).")
_SIGNAL_NOTES = {"serve": "the server stopped; its uploads and results are deleted.", "models": "nothing was written."}


def _json_error(ctx: click.Context, exc: click.ClickException, status: int | None = None) -> None:
    """With --json, the error as the object on stdout (once): it held nothing, and `| jq` failed to parse it.
    `status` is the exit status where it is not the error's own (130 or 143 after a signal)."""
    if "--json" in ctx.meta.get("geoseg.command_args", ()):
        from geoseg.cli.options import emit_json, json_emitted

        if not json_emitted():
            emit_json({"error": exc.format_message(), "exit_code": exc.exit_code if status is None else status})


def _known_failure(exc: Exception) -> click.ClickException | None:
    """The message for a failure of the environment rather than of geoseg, None for any other."""
    if isinstance(exc, FileNotFoundError) and _working_folder_gone():
        # a relative path resolved in a folder deleted meanwhile: a bare FileNotFoundError traceback
        return click.ClickException("the current folder no longer exists (it was deleted or moved away), so "
                                    "relative paths cannot be found: cd to an existing folder, or give absolute "
                                    "paths.")
    if isinstance(exc, UnicodeEncodeError) and exc.reason == "surrogates not allowed" and isinstance(exc.object, str):
        # an ASCII locale (LC_ALL=C, PYTHONUTF8=0) decodes a non-ASCII name into surrogates, which GDAL, PROJ or
        # a writer cannot take: a --labels, --aoi or --zones path was a traceback from deep inside rasterio
        from geoseg.raster import shown_name

        name = shown_name(exc.object)
        return click.ClickException(f"{name!r}: its name cannot be passed to GDAL in this locale "
                                    f"({sys.getfilesystemencoding()} file names). Run in a UTF-8 locale (export "
                                    "LC_ALL=C.UTF-8) or with PYTHONUTF8=1.")
    return None


def _working_folder_gone() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def _signal_status(exc: BaseException | None) -> int | None:
    """128 + the signal (Ctrl-C or SIGTERM) behind `exc`, if one is in its chain of causes; else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, SystemExit) and exc.code in (130, 143):
            return exc.code
        exc = exc.__cause__ or exc.__context__
    return None


def _option_values(args: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The values given to any of `flags` in raw command-line `args` ('-m X', '--model=X', '-mX')."""
    values = []
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                values.append(args[i + 1])
            elif arg.startswith(flag + "=") and flag.startswith("--"):
                values.append(arg[len(flag) + 1:])
            elif len(flag) == 2 and arg.startswith(flag) and len(arg) > 2 and not arg.startswith("--"):
                values.append(arg[2:])
    return values


def _may_run_keras(command: str, args: Sequence[str]) -> bool:
    """Whether a command may load a Keras model, so that TensorFlow is imported (quietly) up front.

    Not for --help, flood --method ndwi, or models that are all built-in baselines (numpy): their runs
    then skip TensorFlow's import, 3 s and 550 MB. A guess wrong the other way only lets TensorFlow's
    start-up lines through.
    """
    if "--help" in args or "-h" in args:
        return False
    if command in ("train", "serve"):
        return True
    if command == "flood" and "ndwi" in _option_values(args, ("--method",)):
        return False
    if command == "compare":
        names = [n for value in _option_values(args, ("--models",)) for n in value.split(",") if n.strip()]
    else:
        names = _option_values(args, ("-m", "--model"))
    return not all_baselines(names)


def all_baselines(names: Sequence[str]) -> bool:
    """Whether every model named is a built-in baseline (numpy, no TensorFlow); no names: the default model."""
    from geoseg.models.registry import BUILTIN, builtin_names

    return bool(names) and all(n.strip().partition("?")[0].removeprefix(BUILTIN) in builtin_names() for n in names)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less log output.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Segment aerial, drone and satellite rasters of any size into georeferenced class masks."""
    configure_logging(verbose - quiet)
    _exit_cleanly_on_sigterm()
    if ctx.invoked_subcommand in ("segment", "scene", "flood", "survey", "train", "evaluate", "compare", "serve") \
            and _may_run_keras(ctx.invoked_subcommand, ctx.meta.get("geoseg.command_args", [])):
        _warn_of_an_address_space_cap()
        load_tensorflow(verbose - quiet)
    ctx.obj = {"verbosity": verbose - quiet}
    if "--json" in ctx.meta.get("geoseg.command_args", []) and _CLOSED.get("stdout"):
        error = click.ClickException("--json prints its object on standard output, which is closed (>&-): the "
                                     "run's record would be lost. Send it to a file (> run.json) or leave out --json.")
        error.exit_code = 2  # a usage error, without the group's usage line (it was not the group's option)
        raise error


from geoseg.cli.evaluate import compare, evaluate  # noqa: E402
from geoseg.cli.flood import flood  # noqa: E402
from geoseg.cli.models import models  # noqa: E402
from geoseg.cli.scene import scene  # noqa: E402
from geoseg.cli.segment import segment  # noqa: E402
from geoseg.cli.serve import serve  # noqa: E402
from geoseg.cli.survey import survey  # noqa: E402
from geoseg.cli.train import train  # noqa: E402
from geoseg.cli.vectorize import vectorize  # noqa: E402

main.add_command(segment)
main.add_command(models)
main.add_command(vectorize)
main.add_command(scene)
main.add_command(flood)
main.add_command(survey)
main.add_command(train)
main.add_command(evaluate)
main.add_command(compare)
main.add_command(serve)


def entry() -> None:
    """The `geoseg` console script: `main`, after which a Ctrl-C or SIGTERM that comes while Python shuts
    down ends the process at once with status 128 + the signal, as does a run that Ctrl-C or SIGTERM ended. It printed "Exception ignored in: <module
    'threading'> ... KeyboardInterrupt" and exited 0, or hung joining threads; every file of the run is
    complete or removed by then."""
    import signal

    _standard_streams_opened()
    _pipe_ends_installed()
    if isinstance(sys.stdout, io.TextIOWrapper):  # `geoseg models > list.txt` under a cp932 or Latin-1 locale: a
        sys.stdout.reconfigure(errors="backslashreplace")  # class name it cannot encode was a traceback (stderr's is not)
    try:
        main()
    except SystemExit as exc:
        try:  # --json's object, still buffered for a pipe: its reader gone, Python's exit printed a traceback
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        if _CLOSED.get("stdout's reader") and exc.code not in (130, 143):
            # `geoseg models | head -1`: click ends a write to a closed pipe with status 1, that of a failure;
            # Unix tools end of SIGPIPE, 141, without a word
            raise SystemExit(128 + 13) from None
        if exc.code in (130, 143) and threading.current_thread() is threading.main_thread():
            # interrupted: every file of the run is complete or removed by now, but Python's shutdown, with
            # Dask's threads still inside GDAL, crashed in 4 of 45 Ctrl-Cs (status 139, "CPLDestroyMutex")
            _exit_now(exc.code - 128, None)
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _exit_now)


_CLOSED: dict[str, bool] = {}  # the standard streams this process started without


def _standard_streams_opened() -> None:
    """Give a closed stdin, stdout or stderr (``2>&-``, a daemon) /dev/null, as daemons do. Python set sys.stderr to
    None: loading TensorFlow then failed silently (exit 1), and a survey's progress bar hung for ever; and the next
    file opened took descriptor 2, where native libraries write their messages."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            _CLOSED[name] = True
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        if getattr(sys, name) is None:
            _CLOSED[name] = True
            setattr(sys, name, open(fd, mode, closefd=False))


class _PipeEnd(io.FileIO):
    """Descriptor 1 or 2, sent to /dev/null once the reader of its pipe has gone (`2>&1 | head -1`). A closed stderr
    ended a batch after its first raster with status 1 and no word; a run now finishes. A closed stdout still
    raises (`entry` exits 141, as on SIGPIPE), and Python's last flush of it no longer prints a traceback."""

    def write(self, data) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.fileno())
            os.close(devnull)
            if self.fileno() == 1:
                _CLOSED["stdout's reader"] = True
                raise
            return memoryview(data).nbytes


def _pipe_ends_installed() -> None:
    """sys.stdout and sys.stderr over `_PipeEnd`s, encoded and buffered as Python set them up."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        try:
            if not isinstance(stream, io.TextIOWrapper) or stream.fileno() != fd:
                continue
            stream.flush()
        except (OSError, ValueError):
            continue
        setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(_PipeEnd(fd, "w", closefd=False)),
                                            encoding=stream.encoding, errors=stream.errors,
                                            line_buffering=stream.line_buffering, write_through=stream.write_through))


def _exit_now(signum, frame) -> None:
    for stream in (sys.stdout, sys.stderr):  # a --json object still buffered for a pipe, as far as it takes it now:
        try:  # a blocking flush into a full pipe held the exit until the reader went (or SIGKILL came)
            os.set_blocking(stream.fileno(), False)
            stream.flush()
        except (OSError, ValueError, RuntimeError, AttributeError):  # RuntimeError: inside a flush it interrupted
            pass
    os._exit(128 + signum)
