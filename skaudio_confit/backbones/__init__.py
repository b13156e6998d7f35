"""Adapters over transformers audio encoders and the bundled Whisper tiny.en encoder."""

from ._base import AudioBackbone
from ._loading import (
    SUPPORTED_MODEL_TYPES,
    build_backbone,
    bundled_backbone_path,
    load_backbone,
    load_config,
)
from ._wav2vec2 import Wav2Vec2FamilyBackbone
from ._whisper import WhisperEncoderBackbone

__all__ = [
    "AudioBackbone",
    "SUPPORTED_MODEL_TYPES",
    "Wav2Vec2FamilyBackbone",
    "WhisperEncoderBackbone",
    "build_backbone",
    "bundled_backbone_path",
    "load_backbone",
    "load_config",
]
