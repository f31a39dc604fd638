"""`geoseg serve`: the web page and JSON API."""

from __future__ import annotations

import click

from geoseg.cli.options import FiniteRange

__all__ = ["serve"]


def _host_names(ctx, param, names):
    """--allow-host takes names as a Host header gives them without the port (which is not compared)."""
    from urllib.parse import urlsplit

    for name in names:
        parsed = urlsplit(f"//{name}")
        try:
            port = parsed.port
        except ValueError:
            port = "bad"
        if port is not None or not parsed.hostname or "/" in name:
            raise click.BadParameter(f"{name!r}: give a host name alone, such as maps.example.org (no port, scheme "
                                     "or path).", param_hint="--allow-host")
    return names


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. On a loopback address only requests addressed to a loopback address or "
                   "localhost (or an --allow-host) are answered; 0.0.0.0 shares the page with the network.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME", callback=_host_names,
              help="Also answer requests addressed to NAME on a loopback --host: the public name of a reverse "
                   "proxy on this machine (which passes the Host header on: nginx's proxy_set_header Host "
                   "$http_host). Repeatable.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option("--max-mb", type=click.IntRange(min=1), default=200, show_default=True, help="Largest upload.")
@click.option("--max-mpx", type=FiniteRange(min=0.01), default=50.0, show_default=True,
              help="Largest image in megapixels.")
@click.option("--ttl", type=click.IntRange(min=60), default=3600, show_default=True,
              help="Seconds from a job's end before its upload and results are deleted.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Jobs run at once.")
@click.option("--max-queued", type=click.IntRange(min=1), default=20, show_default=True,
              help="Jobs that may wait for a worker; past it, uploads are refused (503) until one starts.")
@click.option("--abandon-after", type=click.IntRange(min=10), default=180, show_default=True,
              envvar="GEOSEG_ABANDON_AFTER", show_envvar=True,
              help="Seconds a job may go without anyone asking about it (GET /api/jobs/ID) before it is dropped "
                   "from the queue or stopped: its page was closed. Raise it for scripts that poll less often.")
@click.option("--idle-timeout", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds a connection may send nothing before it is closed (each gets a thread meanwhile: 400 "
                   "half-open connections held 426 threads for good). An upload that keeps sending is not cut.")
def serve(host, port, allow_hosts, max_mb, max_mpx, ttl, workers, max_queued, abandon_after, idle_timeout):
    """Serve the page: upload an image, segment it, switch and compare models, download outputs.

    JSON API: GET /api/models, POST /api/segment (multipart 'image', 'models', optional
    'label', 'tta' none|flips, 'precision' float32|bfloat16, 'normalize' as --normalize, 'sieve' PX),
    GET /api/jobs/ID (410 once expired), DELETE /api/jobs/ID (cancel it). Bind to 127.0.0.1 unless you mean to
    share it.
    Ctrl-C stops it at once: jobs still running are abandoned, uploads and results deleted.
    """
    import socket

    from werkzeug.serving import select_address_family

    from geoseg.web import create_app

    family = select_address_family(host, port)  # as werkzeug will bind: IPv4 unless the host has a ':'
    try:  # a clear error before "serving on" is printed, not werkzeug's bare resolver message
        family, kind, proto, _, address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise click.BadParameter(f"{host!r} is not an address this machine can listen on ({exc}). "
                                 "Use 127.0.0.1, 0.0.0.0 or one of its own addresses.", param_hint="--host") from None
    try:  # the port in use, an address of another machine, or IPv6 where the machine has none
        with socket.socket(family, kind, proto) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            trial.bind(address)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Pick another "
                                   "--port, or a --host that is an address of this machine.") from None
    from geoseg.errors import GeosegError

    try:
        app = create_app({"MAX_CONTENT_LENGTH": max_mb * 1024**2, "GEOSEG_MAX_PIXELS": int(max_mpx * 1e6),
                          "GEOSEG_RESULT_TTL": ttl, "GEOSEG_WORKERS": workers,
                          "GEOSEG_MAX_QUEUED": max_queued, "GEOSEG_ABANDON_AFTER": abandon_after,
                          "GEOSEG_LOCAL_ONLY": _loopback(host), "GEOSEG_ALLOWED_HOSTS": list(allow_hosts)})
    except GeosegError as exc:  # no folder for its files: a traceback
        raise click.ClickException(str(exc)) from None
    import logging

    # the page polls each job twice a second: log those answers only when they are not 200
    logging.getLogger("werkzeug").addFilter(
        lambda record: not ("GET /api/jobs/" in record.getMessage() and '" 200 ' in record.getMessage()))
    shown = f"[{host.strip('[]')}]" if ":" in host else host  # http://::1:5000/ is no URL
    click.echo(f"geoseg serving on http://{shown}:{port}/", err=True)
    import os
    import shutil
    import sys
    import tempfile

    import werkzeug.serving

    if not sys.stderr.isatty() or os.environ.get("NO_COLOR"):  # its request log coloured a log file with escapes
        werkzeug.serving._log_add_style = False

    # TensorFlow's autograph files go to the temporary folder, and away at Python's exit, which os._exit below
    # skips: 3 were left per server. In the server's own folder they go with it.
    before = tempfile.tempdir  # put back when the server stops: a caller in this process (a test) went on with
    # a temporary folder that was deleted with the server's (h149's test failed 56 later ones)
    tempfile.tempdir = str(app.extensions["geoseg_jobs"].root / "tmp")
    os.makedirs(tempfile.tempdir, exist_ok=True)

    try:
        app.run(host=host, port=port, threaded=True,  # returns on Ctrl-C; SIGTERM raises SystemExit(143)
                request_handler=_idle_handler(idle_timeout))
    finally:
        tempfile.tempdir = before  # first: whatever fails below (h153)
        # jobs still running held the exit for 8-17 s, then failed with "cannot schedule new futures after
        # shutdown" tracebacks: they are abandoned, and the server's folder deleted, as it always was on exit
        jobs = app.extensions["geoseg_jobs"]
        running = jobs.stop()
        if running:
            click.echo(f"stopped: {running} job(s) still running were abandoned.", err=True)
        shutil.rmtree(jobs.root, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # app.run returns only on Ctrl-C: 130, as every other command (it was 0, which a supervisor reads as a clean
    os._exit(130)  # end); not Python's shutdown, which waits for the abandoned jobs' threads


def _idle_handler(seconds: int):
    """werkzeug's request handler with socketserver's per-read `timeout`: a connection that sends nothing for
    `seconds` is closed, and said once in the request log, not twice as an ERROR."""
    from werkzeug.serving import WSGIRequestHandler

    class IdleTimeoutHandler(WSGIRequestHandler):
        timeout = seconds

        def log_error(self, format: str, *args) -> None:
            if format.startswith("Request timed out"):
                self.log("info", "connection closed after %d s without a request", seconds)
            else:
                super().log_error(format, *args)

    return IdleTimeoutHandler


def _loopback(host: str) -> bool:
    """Whether `host` (--host) is a loopback address or name: the server then answers only requests to those."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"
