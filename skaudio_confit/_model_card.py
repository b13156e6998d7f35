"""The model card written beside every save, with huggingface_hub's card tools.

A card is a ``huggingface_hub.ModelCard``: YAML metadata (``ModelCardData``) above
a Markdown body rendered from the Jinja template below, as other libraries on the
Hub (SetFit, sentence-transformers) write theirs. It says what was saved (steps,
backbone, classes, parameters), how to load it, and whatever the caller adds (the
command line adds the training data and a held-out estimate).
"""

from __future__ import annotations

import json

MODEL_CARD = "MODEL_CARD.md"

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

Saved with skaudio-confit {{ version }} in its safe format (safetensors weights and
JSON manifests; loading it never unpickles anything). Load it with:

```python
{{ load_code }}
```

## Steps

| step | kind | what it holds |
|---|---|---|
{% for step in steps -%}
| `{{ step.name }}` | {{ step.kind }} | {{ step.details }} |
{% endfor %}
{%- if classes %}
## Classes

{{ classes }}
{% endif %}
{%- for heading, text in sections %}
## {{ heading }}

{{ text }}
{% endfor %}
## Parameters
{% for step in steps %}
### `{{ step.name }}` ({{ step.kind }})

```json
{{ step.params }}
```
{% endfor %}"""


def _details(step):
    """One line on what a fitted step holds."""
    parts = []
    backbone = getattr(step, "backbone_", None)
    if backbone is not None:
        parts.append(f"{backbone.config.model_type} encoder `{step.backbone}`, layer "
                     f"{step.layer}, hidden size {backbone.hidden_size}, tuned for "
                     f"{len(getattr(step, 'history_', []))} epochs")
    if hasattr(step, "n_features_in_"):
        parts.append(f"{step.n_features_in_} input features")
    if hasattr(step, "classes_"):
        parts.append(f"{len(step.classes_)} classes")
    return "; ".join(parts) or "-"


def _params_json(step):
    # Classes and other objects are shown by name: the card is for people to read.
    params = {k: v if v is None or isinstance(v, (bool, int, float, str))
              else f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else str(v)
              for k, v in step.get_params(deep=False).items()}
    return json.dumps(params, indent=2, sort_keys=True)


def _classes_line(steps):
    classes = next((s.classes_ for _, s in reversed(steps) if hasattr(s, "classes_")), None)
    if classes is None:
        return None
    shown = ", ".join(f"`{c}`" for c in classes[:20])
    return f"{len(classes)}: {shown}{', ...' if len(classes) > 20 else ''}"


def model_card(steps, load_code, sections=None):
    """The card of a save holding ``steps`` (a list of ``(name, fitted step)``).

    Parameters
    ----------
    steps : list of (str, estimator)
        What was saved, in pipeline order.
    load_code : str
        The Python lines that load the save.
    sections : dict of str to str, optional
        Further sections of the card, ``{heading: Markdown}``, in that order.

    Returns
    -------
    card : huggingface_hub.ModelCard
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    final = steps[-1][1]
    classifies = hasattr(final, "classes_") and hasattr(final, "predict")
    data = ModelCardData(
        library_name="skaudio-confit",
        pipeline_tag="audio-classification" if classifies else "feature-extraction",
        tags=["audio", "scikit-learn", "safetensors", "skaudio-confit"]
        + sorted({type(s).__name__ for _, s in steps}),
    )
    title = " + ".join(type(s).__name__ for _, s in steps)
    return ModelCard.from_template(
        data, template_str=_TEMPLATE, title=f"skaudio-confit model: {title}",
        version=__version__, load_code=load_code, classes=_classes_line(steps),
        sections=list((sections or {}).items()),
        steps=[{"name": name, "kind": type(step).__name__, "details": _details(step),
                "params": _params_json(step)} for name, step in steps],
    )
