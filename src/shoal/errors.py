"""Errors every part of shoal may raise to the command line (a leaf module: imports nothing),
and the check of a local-folder argument every command shares.

`shoal.cli` prints a `UserError` as one line and exits 2; the component CLIs (exporter, runtime,
operator, catalog, model repository) raise it without importing the root CLI.
"""


class UserError(Exception):
    """An error caused by input a person gave: printed without a traceback, exit code 2."""


def local_folder_problem(value: str, option: str, *, must_exist: bool) -> str | None:
    """Why `value` cannot be the local folder `option` names (a URL, a file, missing), or None."""
    from pathlib import Path  # noqa: PLC0415 - keep the leaf module import-free at load

    if "://" in value and not value.startswith("file://"):
        return (
            f"{option} {value}: this command needs a local folder, not a URL (`shoal build` "
            "publishes to s3:// and gs://)"
        )
    path = Path(value.removeprefix("file://")).expanduser()
    if path.exists() and not path.is_dir():
        return f"{option} {value} is a file; give a folder"
    if must_exist and not path.exists():
        return f"{option} {value} does not exist; give the model repository's folder"
    return None
