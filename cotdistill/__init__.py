"""cotdistill: offline chain-of-thought distillation (generate -> filter -> train -> evaluate)."""

__version__ = "0.1.0"
