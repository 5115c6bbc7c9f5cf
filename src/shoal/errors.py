"""Errors every part of shoal may raise to the command line (a leaf module: imports nothing).

`shoal.cli` prints a `UserError` as one line and exits 2; the component CLIs (exporter, runtime,
operator, catalog, model repository) raise it without importing the root CLI.
"""


class UserError(Exception):
    """An error caused by input a person gave: printed without a traceback, exit code 2."""
