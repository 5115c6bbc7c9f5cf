"""Export defaults that `shoal export --help` shows and ExportOptions uses: a leaf module, so the
command line reads them without loading the exporter."""

DEFAULT_OPSET = 17  # TorchScript export; attention fuses at this opset (see optimize.py)
DEFAULT_MAX_BATCH_SIZE = 32
