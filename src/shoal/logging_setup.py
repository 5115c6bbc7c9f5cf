"""How `shoal` logs, set once per process: by the command line (shoal.cli) and by the catalog's
export processes (shoal.catalog.worker).

shoal's own progress at INFO, other libraries at WARNING. Without `-v`, what libraries print that
says nothing to a shoal user is silenced: Hugging Face progress bars ("Loading weights") and
onnxruntime's advice on the root logger ("Please consider to run pre-processing before
quantization", on every int8 export; shoal checks the quantized model's parity itself). With
`-v` everything shows, at DEBUG.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Where onnxruntime's Python code lives: its quantizer logs with `logging.warning(...)`, on the
# root logger, so only the emitting file tells its records apart.
_ONNXRUNTIME_FILES = f"{os.sep}onnxruntime{os.sep}"


def configure_logging(verbose: bool, *, shoal_level: int = logging.INFO, fmt: str = FORMAT) -> None:
    """Root handler on stderr; `shoal_level` for shoal's loggers unless verbose (DEBUG)."""
    if not verbose:
        quiet_progress_bars()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format=fmt)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(drop_onnxruntime_advice)
    logging.getLogger("shoal").setLevel(logging.DEBUG if verbose else shoal_level)


def quiet_progress_bars() -> None:
    """Hugging Face progress bars off, unless the environment says otherwise. Read when
    huggingface_hub is imported (the commands import it lazily, after this), and inherited by
    the processes shoal starts (the catalog's exports)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def drop_onnxruntime_advice(record: logging.LogRecord) -> bool:
    """A handler filter: False for onnxruntime's warnings (its errors still show)."""
    return record.levelno >= logging.ERROR or _ONNXRUNTIME_FILES not in record.pathname
