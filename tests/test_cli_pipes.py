"""A pipe's reader gone (`| head -1`) and names an ASCII locale decoded into surrogates (h174)."""

import os
import subprocess
import sys

import pytest

ENTRY = [sys.executable, "-c", "from geoseg.cli import entry; entry()"]


def _run_with_reader_gone(args, fd):
    """Run `geoseg args` with descriptor `fd` (1 or 2) a pipe whose reading end is already closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        streams = {"stdout": write} if fd == 1 else {"stderr": write, "stdout": subprocess.DEVNULL}
        if fd == 1:
            streams["stderr"] = subprocess.PIPE
        return subprocess.run(ENTRY + args, timeout=300, **streams)
    finally:
        os.close(write)


def test_a_closed_stderr_lets_the_batch_finish(make_raster, tmp_path):
    # `geoseg segment a.tif b.tif c.tif ... 2>&1 | head -1` stopped after a.tif's summary with status 1, no word
    names = [make_raster(name, shape=(32, 40)) for name in ("a.tif", "b.tif", "c.tif")]
    done = _run_with_reader_gone(["segment", *map(str, names), "-o", str(tmp_path / "out"), "-m", "threshold"], 2)
    assert done.returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.tif")) == ["a_mask.tif", "b_mask.tif", "c_mask.tif"]


@pytest.mark.parametrize("args", [["models"], ["--help"], ["segment", "{image}", "-o", "{out}", "-m", "threshold",
                                                          "--json"]])
def test_a_closed_stdout_ends_as_on_sigpipe(make_raster, tmp_path, args):
    # `geoseg models | true` exited 1, the status of a failure; --json's object at exit also printed a traceback
    image = make_raster(shape=(32, 40))
    done = _run_with_reader_gone([a.format(image=image, out=tmp_path / "out") for a in args], 1)
    assert done.returncode == 128 + 13, done.stderr[-800:]
    assert b"Traceback" not in done.stderr and b"Exception ignored" not in done.stderr, done.stderr[-800:]


def test_surrogate_names_are_shown_as_named(make_raster, tmp_path):
    # an ASCII locale (LC_ALL=C, PYTHONUTF8=0) decodes 'scène' as 'sc\udcc3\udca8ne': messages showed the escapes
    from geoseg import segment
    from geoseg.errors import InputError
    from geoseg.raster import inspect_raster

    image = make_raster("scène.tif")
    surrogates = os.fsencode(image).decode("utf-8").encode("utf-8").decode("ascii", "surrogateescape")
    assert os.path.exists(surrogates)  # the same file, as that locale names it
    with pytest.raises(InputError) as error:
        inspect_raster(surrogates)
    assert "scène.tif'" in str(error.value) and "\\udc" not in str(error.value)
    out = os.fsencode(tmp_path / "out_é").decode("utf-8").encode("utf-8").decode("ascii", "surrogateescape")
    with pytest.raises(InputError) as error:
        segment(str(make_raster()), out, model="threshold")
    assert "out_é'" in str(error.value) and "\\udc" not in str(error.value)
