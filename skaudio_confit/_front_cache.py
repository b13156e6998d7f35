"""The frozen front end of a backbone, computed once per clip for a whole fit.

When a backbone's front end has no trainable parameter (Whisper's log-mel, and its
conv stem or a wav2vec2 conv feature encoder under ``freeze_feature_encoder=True``),
every epoch would recompute the same features for every clip. :class:`FrontEndCache`
keeps them after their first use and builds batches from them; only random crops
(clips longer than ``max_duration``) are computed afresh, since a crop of the
features is not exactly the features of the crop. The batches give the same forward
as ``featurize`` up to float rounding (per-clip against batched front-end ops).
"""

from __future__ import annotations

# Features kept at most, in bytes: beyond it clips are featurized as usual, so a huge
# dataset never holds its whole front end in memory.
_MAX_CACHE_BYTES = 2 * 2**30


class FrontEndCache:
    """Front-end features of training clips, computed once each.

    Parameters
    ----------
    backbone : AudioBackbone
        Its :meth:`front_end_frozen` must be True for the whole fit.
    waves : list of ndarray
        The training clips; a clip passed to :meth:`featurize` that *is* (identity)
        ``waves[i]`` is uncropped and cached under ``i``.
    max_bytes : int
        Cap on the cached features.
    """

    def __init__(self, backbone, waves, max_bytes=_MAX_CACHE_BYTES):
        self.backbone = backbone
        self.waves = waves
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._features = {}

    def featurize(self, indices, clips):
        """The batch of ``clips`` (crops of ``waves[indices]``) for the backbone's forward."""
        items = []
        for i, clip in zip(indices, clips):
            i = int(i)
            # A random crop or a padded copy is a new array: only the clip itself is cached.
            uncropped = clip is self.waves[i]
            item = self._features.get(i) if uncropped else None
            if item is None:
                item = self.backbone.front_features(clip)
                size = item[0].element_size() * item[0].nelement()
                if uncropped and self.nbytes + size <= self.max_bytes:
                    self._features[i] = item
                    self.nbytes += size
            items.append(item)
        return self.backbone.collate_front(items)


def front_end_cache(backbone, waves, enabled=True):
    """A :class:`FrontEndCache` when the backbone's front end is frozen, else None."""
    if not enabled or not backbone.front_end_frozen():
        return None
    return FrontEndCache(backbone, waves)
