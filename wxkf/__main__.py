"""``python -m wxkf`` — the same as the ``wxkf`` command."""

from wxkf.cli import app

app(prog_name="wxkf")
