"""python -m imgcls.cli: the imgcls command."""

from imgcls.cli import run

run()
