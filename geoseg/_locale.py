"""Character rules GDAL and PROJ can live with, set when geoseg is imported."""

import locale


def neutral_case_rules() -> None:
    """Under a Turkish or Azeri locale (tr_TR.UTF-8, tr_TR.ISO-8859-9), take C's character rules (C.UTF-8 where the
    locale is UTF-8): GDAL and PROJ compare names case-insensitively by the C library, where 'i' is not the lower
    case of 'I' there. Every run printed dozens of "ERROR 1: ... does not support creation option BLOCKXSIZE"
    lines, and esri:102100 was "not a CRS", in the console script and from Python alike. Other locales are left
    as they are."""
    try:
        current = locale.setlocale(locale.LC_CTYPE)
        if current.split("_")[0].lower() in ("tr", "az"):
            utf8 = "utf8" in current.lower().replace("-", "")
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8" if utf8 else "C")
    except locale.Error:  # no C.UTF-8 here: as it was
        pass
