"""The `geoseg` console script: a Ctrl-C or SIGTERM while the command's modules are imported ends it at once,
with status 130 or 143 and no traceback (it printed one: nothing is written before the command runs)."""

import os
import signal


def _gone(signum, frame) -> None:
    os._exit(128 + signum)


def main() -> None:
    interrupt, terminate = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for sig, handler in ((signal.SIGINT, interrupt), (signal.SIGTERM, terminate)):
        if handler is not signal.SIG_IGN:  # `geoseg ... &` in a script ignores the terminal's Ctrl-C: it still does
            signal.signal(sig, _gone)
    from geoseg.cli import entry

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, terminate)
    entry()
