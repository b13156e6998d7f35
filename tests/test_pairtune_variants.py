"""Tests for PairTune's optional training variants (all off by default).

``augmentation`` (waveform perturbation, log-mel masking), ``memory_size`` (a
cross-batch memory of projections), ``ce_weight``/``label_smoothing`` (SupCon plus
cross-entropy) and ``freeze_layers`` (partial fine-tuning). Tiny random encoders from
conftest, synthetic clips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_class_sines, sine
from torch.nn import functional as F

from skaudio_confit import PairTuneTransformer
from skaudio_confit._augmentation import TrainingAugmentation
from skaudio_confit._objectives import SupConObjective
from skaudio_confit._supcon_variants import SupConVariantObjective
from skaudio_confit.backbones import load_backbone

PAIRTUNE = dict(epochs=2, batch_size=6, samples_per_class=2, projection_dim=16,
                learning_rate=1e-3, random_state=0, verbose=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    return make_class_sines(n_per_class=6)


def test_variants_are_off_by_default():
    params = PairTuneTransformer().get_params()
    assert params["augmentation"] is None and params["memory_size"] is None
    assert params["ce_weight"] == 0 and params["label_smoothing"] == 0
    assert params["freeze_layers"] == 0


# ---------------------------------------------------------------------------- augmentation


def test_waveform_augmentation_makes_new_views_of_the_same_length():
    aug = TrainingAugmentation("waveform", 16000)
    wave = sine(440, 16000, 0.5)
    views = [aug.waveform(wave, np.random.default_rng(s)) for s in (0, 0, 1)]
    for view in views:
        assert view.shape == wave.shape and view.dtype == np.float32
        # Gain within ±6 dB (plus a little noise): the level stays near the original.
        ratio = np.sqrt(np.mean(view**2) / np.mean(wave**2))
        assert 0.45 < ratio < 2.1
    np.testing.assert_array_equal(views[0], views[1])  # same generator state, same view
    assert not np.allclose(views[0], views[2])
    assert not np.allclose(views[0], wave)
    # Off: the very same array back.
    assert TrainingAugmentation("log-mel", 16000).waveform(wave, np.random.default_rng(0)) is wave


def test_log_mel_masking_masks_real_frames_only(tiny_whisper_encoder_dir):
    backbone = load_backbone(tiny_whisper_encoder_dir)
    waves = [sine(440, 16000, 1.0), sine(880, 16000, 0.5)]
    clean = backbone.featurize(waves)
    masked = TrainingAugmentation("log-mel", 16000).features(
        backbone.featurize(waves), np.random.default_rng(3))
    feats, ref = masked["input_features"], clean["input_features"]
    short = int(clean["lengths"][1])
    # The short clip's padding stays exactly zero; something real was changed.
    assert torch.all(feats[1, :, short:] == 0)
    assert not torch.equal(feats, ref)
    # Masked cells hold the clip's mean over its real frames.
    changed = feats[0] != ref[0]
    assert torch.allclose(feats[0][changed], ref[0].mean().expand(int(changed.sum())))


def test_augmentation_changes_training_reproducibly_and_not_transform(
        tiny_whisper_encoder_dir, data):
    X, y = data
    plain = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE).fit(X, y)
    fits = [PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                                augmentation="both").fit(X, y) for _ in range(2)]
    E = fits[0].transform(X)
    np.testing.assert_array_equal(E, fits[1].transform(X))
    assert not np.allclose(E, plain.transform(X))
    # Inference never augments: switching it off after fit changes nothing.
    np.testing.assert_array_equal(E, fits[0].set_params(augmentation=None).transform(X))


def test_log_mel_masking_needs_a_log_mel_front_end(tiny_wav2vec2_group_dir, data):
    X, y = data
    with pytest.raises(ValueError, match="augmentation='log-mel'.*raw waveforms"):
        PairTuneTransformer(tiny_wav2vec2_group_dir, **PAIRTUNE,
                            augmentation="log-mel").fit(X, y)
    # Waveform perturbation works with any backbone.
    model = PairTuneTransformer(tiny_wav2vec2_group_dir, **{**PAIRTUNE, "epochs": 1},
                                augmentation="waveform").fit(X, y)
    assert len(model.history_) == 1 and np.isfinite(model.history_[0]["loss"])


# ------------------------------------------------------------------------ memory and hybrid


def test_memory_adds_pairs_from_earlier_batches():
    torch.manual_seed(0)
    pooled = [torch.randn(4, 8) for _ in range(3)]
    targets = [torch.tensor([0, 0, 1, 1]), torch.tensor([2, 2, 0, 0]), torch.tensor([1, 1, 2, 2])]
    plain = SupConVariantObjective(8, 16, mining="none", n_classes=3)
    memory = SupConVariantObjective(8, 16, mining="none", n_classes=3, memory_size=8)
    memory.load_state_dict(plain.state_dict(), strict=False)
    for step, (p, t) in enumerate(zip(pooled, targets)):
        _, in_batch = plain(p, t)
        loss, with_memory = memory(p, t)
        assert torch.isfinite(loss)
        if step == 0:  # an empty memory holds only this batch: the same pairs
            assert with_memory["positive_pairs"] == in_batch["positive_pairs"] == 4
        else:  # earlier clips of the same classes are now positives too
            assert with_memory["positive_pairs"] > in_batch["positive_pairs"]
            assert with_memory["negative_pairs"] > in_batch["negative_pairs"]


def test_hybrid_loss_is_supcon_plus_weighted_smoothed_cross_entropy():
    torch.manual_seed(0)
    pooled, targets = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    supcon = SupConObjective(8, 16, mining="none")
    hybrid = SupConVariantObjective(8, 16, mining="none", n_classes=3, ce_weight=0.5,
                                    label_smoothing=0.2)
    hybrid.projection.load_state_dict(supcon.projection.state_dict())
    loss, stats = hybrid(pooled, targets)
    expected = supcon(pooled, targets)[0] + 0.5 * F.cross_entropy(
        hybrid.classifier(pooled), targets, label_smoothing=0.2)
    assert torch.allclose(loss, expected)
    assert "train_accuracy" in stats
    # The classifier head is trained (it is in the optimiser groups) at the head's rate.
    groups = SupConVariantObjective(8, 16, n_classes=3, ce_weight=1.0,
                                    head_learning_rate=0.3).param_groups()
    assert [len(g["params"]) for g in groups] == [2, 2] and all(g["lr"] == 0.3 for g in groups)


@pytest.mark.parametrize("variant", [dict(memory_size=12),
                                     dict(ce_weight=1.0, label_smoothing=0.1)])
def test_objective_variants_fit_reproducibly_and_keep_no_head(tiny_whisper_encoder_dir, data,
                                                              variant):
    X, y = data
    plain = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE).fit(X, y)
    fits = [PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, **variant).fit(X, y)
            for _ in range(2)]
    np.testing.assert_array_equal(fits[0].transform(X), fits[1].transform(X))
    assert not np.allclose(fits[0].transform(X), plain.transform(X))
    # The fitted encoder is the backbone alone: no memory or classifier is kept.
    assert set(fits[0].backbone_.state_dict()) == set(plain.backbone_.state_dict())


# ------------------------------------------------------------------------- freeze_layers


def test_freeze_layers_tunes_only_the_upper_layers(tiny_whisper_encoder_dir, data):
    X, y = data
    pretrained = load_backbone(tiny_whisper_encoder_dir).state_dict()
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, layer=-1,
                                freeze_layers=1).fit(X, y)
    tuned = model.backbone_.state_dict()
    changed = {k for k in pretrained if not torch.equal(pretrained[k], tuned[k])}
    assert changed, "nothing was trained"
    assert all(k.startswith(("model.layers.1.", "model.layer_norm.")) for k in changed), changed
    assert any(k.startswith("model.layers.1.") for k in changed)


def test_freeze_layers_beyond_the_encoder_is_a_clear_error(tiny_whisper_encoder_dir, data):
    X, y = data
    n_layers = load_backbone(tiny_whisper_encoder_dir).num_layers
    with pytest.raises(ValueError, match=f"freeze_layers={n_layers + 1}.*only {n_layers}"):
        PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                            freeze_layers=n_layers + 1).fit(X, y)


@pytest.mark.parametrize("bad", [dict(augmentation="noise"), dict(memory_size=0),
                                 dict(ce_weight=-1.0), dict(label_smoothing=1.0),
                                 dict(freeze_layers=-1)])
def test_bad_variant_parameters_are_refused(data, bad):
    X, y = data
    with pytest.raises(ValueError, match=next(iter(bad))):
        PairTuneTransformer(**PAIRTUNE, **bad).fit(X, y)
