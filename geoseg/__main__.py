"""``python -m geoseg``: the `geoseg` command, where a venv's bin/ is not on PATH (cron, several venvs)."""

from geoseg._launch import main

main()
