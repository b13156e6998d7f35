"""Partial fine-tuning: keep the front end and the lowest transformer layers fixed.

With very few clips per class, tuning every weight can overfit; keeping the lower
layers as pretrained tunes only the upper ones (and a training step costs less
backward work). The front end (convolutions, feature projection, positional
embedding) sits below the first layer and is frozen with it.
"""

from __future__ import annotations


def transformer_layers(backbone):
    """The ``ModuleList`` of the backbone's transformer layers, lowest first."""
    model = backbone.model
    layers = getattr(model, "layers", None)  # Whisper's encoder
    if layers is None:
        layers = model.encoder.layers  # the wav2vec2 family
    return layers


def freeze_lower_layers(backbone, n_layers):
    """Stop gradient updates below transformer layer ``n_layers`` (0: nothing frozen).

    Frozen: every parameter of the encoder except those of layers ``n_layers`` and
    up and of a final layer norm applied after them. Raises ``ValueError`` if the
    backbone has fewer than ``n_layers`` layers.
    """
    if n_layers == 0:
        return
    layers = transformer_layers(backbone)
    if n_layers > len(layers):
        raise ValueError(
            f"freeze_layers={n_layers}, but this backbone has only {len(layers)} "
            "transformer layers."
        )
    trainable = {id(p) for layer in layers[n_layers:] for p in layer.parameters()}
    trainable |= {id(p) for p in _final_norm_parameters(backbone)}
    for param in backbone.parameters():
        if id(param) not in trainable:
            param.requires_grad_(False)
    backbone.freeze_feature_encoder()  # also switches off transformers' conv bookkeeping


def _final_norm_parameters(backbone):
    model, config = backbone.model, backbone.config
    if getattr(model, "layer_norm", None) is not None and hasattr(model, "layers"):
        return list(model.layer_norm.parameters())  # Whisper: after the last layer
    if getattr(config, "do_stable_layer_norm", False):
        return list(model.encoder.layer_norm.parameters())  # pre-norm wav2vec2 variants
    return []  # post-norm wav2vec2: its encoder norm precedes the layers
