"""The names of the ways linear layers can hold their weights (rillet/model/linear.py says what
each does); here so that the command line and the API process know them without importing torch."""
from __future__ import annotations

from rillet.config import DEFAULTS

WEIGHT_FORMATS = ("quantized", "quantized-int8x2", "quantized-int8", "float16", "float32")
DEFAULT_WEIGHT_FORMAT = DEFAULTS.weights
BLOCK_FORMATS = ("quantized", "quantized-int8x2", "quantized-int8")  # the weight formats that keep a file's blocks
