"""``python -m hub`` — the same as the ``wxkf`` command."""

from hub.cli import app

app(prog_name="wxkf")
