"""The documentation's code examples run, so that they stay true.

Every ```python block of README.md and docs/*.md is executed, the blocks of one page
in order in one namespace (as a reader would paste them), with ``__name__`` not
``"__main__"``, so scripts define their ``main`` without launching clusters or
processes. Blocks written as ``>>>`` sessions are doctests: their printed output is
checked too. A block preceded by ``<!-- docs-test: skip REASON -->`` is skipped (it
needs data or hardware the test machine lacks).

To keep this fast, the default backbone (bundled Whisper tiny.en) is replaced by the
tiny random Whisper encoder of the other tests: the examples' calls, names and shapes
are checked, not their accuracy (the benchmarks measure that).
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- docs-test: skip[^>]*-->\s*\n)?```python\n(.*?)```", re.DOTALL)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def python_blocks(page):
    """``(line number, code, skipped)`` of each python block on ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(text[:m.start(2)].count("\n") + 1, m.group(2), m.group(1) is not None)
            for m in _BLOCK.finditer(text)]


def test_every_page_is_looked_at():
    assert sum(len(python_blocks(page)) for page in PAGES) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples_run(page, tiny_whisper_encoder_dir, monkeypatch, tmp_path):
    import skaudio_confit._estimator as estimator

    real_load_backbone = estimator.load_backbone
    monkeypatch.setattr(estimator, "load_backbone", lambda backbone: real_load_backbone(
        tiny_whisper_encoder_dir if backbone is None else backbone))
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"__name__": "docs_example"}
    ran = 0
    for line, code, skipped in python_blocks(page):
        if skipped:
            continue
        where = f"{page.name}, block at line {line}"
        if code.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(code, namespace, where, str(page), line)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                           | doctest.NORMALIZE_WHITESPACE)
            runner.run(test, clear_globs=False)
            assert runner.failures == 0, f"{where}: doctest output differs (see above)"
        else:
            exec(compile(code, where, "exec"), namespace)
        ran += 1
    assert ran > 0


def test_stated_default_epochs_match_the_estimators():
    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    defaults = {PairTuneTransformer().epochs, FineTuneClassifier().epochs}
    stated = [(page.name, int(n)) for page in PAGES
              for n in re.findall(r"default to\s+`epochs=(\d+)`", page.read_text())]
    assert stated, "README should say which epochs the estimators default to"
    for name, epochs in stated:
        assert {epochs} == defaults, f"{name} says the default is epochs={epochs}"
