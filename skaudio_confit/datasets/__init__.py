"""Datasets bundled with skaudio-confit."""

from ._spoken_digits import load_spoken_digits

__all__ = ["load_spoken_digits"]
