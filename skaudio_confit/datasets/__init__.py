"""Datasets: the bundled Free Spoken Digit Dataset, ESC-50 and folders of audio files."""

from ._audio_folder import load_audio_folder
from ._base import get_data_home
from ._esc50 import ESC50_URL, fetch_esc50, load_esc50
from ._spoken_digits import load_spoken_digits

__all__ = [
    "ESC50_URL",
    "fetch_esc50",
    "get_data_home",
    "load_audio_folder",
    "load_esc50",
    "load_spoken_digits",
]
