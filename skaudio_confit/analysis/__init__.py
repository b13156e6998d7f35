"""Geometry of embedding spaces: anisotropy, dimension contribution, separability.

The tools behind the paper's analysis (section 3.4) of why contrastive fine-tuning
helps: pooled embeddings of pretrained audio encoders are *anisotropic* (they
occupy a narrow cone, so any two clips look alike under cosine similarity), a
handful of "rogue" dimensions account for most of that similarity, and classes
are poorly separated. The functions take any 2-D array of embeddings, e.g. the
output of :meth:`PairTuneTransformer.transform
<skaudio_confit.PairTuneTransformer.transform>` or :meth:`FineTuneClassifier.transform
<skaudio_confit.FineTuneClassifier.transform>`:

- :func:`anisotropy`: mean cosine similarity of distinct pairs of embeddings;
- :func:`dimension_contribution`: each dimension's share of that similarity
  (Timkey & van Schijndel, 2021);
- :func:`separability_score`: silhouette score under the cosine distance;
- :func:`plot_separability`: a 2-D projection (UMAP, t-SNE or PCA) coloured by
  class, annotated with the separability score.

All of them measure cosine geometry, so they ignore the length of each embedding;
rows of zeros have no direction and are rejected.

References
----------
W. Timkey and M. van Schijndel (2021). "All Bark and No Bite: Rogue Dimensions in
Transformer Language Models Obscure Representational Quality". EMNLP 2021.
"""


from ._metrics import anisotropy, dimension_contribution, separability_score
from ._plots import plot_separability

__all__ = [
    "anisotropy",
    "dimension_contribution",
    "plot_separability",
    "separability_score",
]
