"""The `geoseg` console script: a Ctrl-C or SIGTERM while the command's modules are imported ends it at once,
with status 130 or 143 and no traceback (it printed one: nothing is written before the command runs)."""

import os
import signal


def _gone(signum, frame) -> None:
    os._exit(128 + signum)


def _neutral_case_rules() -> None:
    """Under a Turkish or Azeri locale (tr_TR.UTF-8), take C.UTF-8's character rules, still UTF-8: GDAL and PROJ
    compare names case-insensitively by the C library, where 'i' is not the lower case of 'I' there. Every run
    printed dozens of "ERROR 1: ... does not support creation option BLOCKXSIZE" lines, and --to-crs esri:102100
    was "not a CRS". Before GDAL and PROJ are loaded, so that they never see the other rules."""
    import locale

    try:
        current = locale.setlocale(locale.LC_CTYPE)
        if current.split("_")[0].lower() in ("tr", "az") and "utf8" in current.lower().replace("-", ""):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:  # no C.UTF-8 here: as it was
        pass


def main() -> None:
    _neutral_case_rules()
    interrupt, terminate = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for sig, handler in ((signal.SIGINT, interrupt), (signal.SIGTERM, terminate)):
        if handler is not signal.SIG_IGN:  # `geoseg ... &` in a script ignores the terminal's Ctrl-C: it still does
            signal.signal(sig, _gone)
    from geoseg.cli import entry

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, terminate)
    entry()
