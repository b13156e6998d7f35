"""A griffe extension for the docs build: Sphinx roles in docstrings become links.

The docstrings follow numpydoc, whose cross-references are Sphinx roles
(``:class:`~sklearn.utils.Bunch```); mkdocstrings would print them literally. This
rewrites each role, once the package is loaded, as an *optional* autorefs reference:
a link where the target is documented on the site, plain code otherwise (e.g.
scikit-learn's classes, since the build is offline and has no inventories), so an
unresolvable reference never fails the strict build.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")
_EXPLICIT_TITLE = re.compile(r"(.*?)\s*<([^<>]+)>")


def _resolve(obj, name):
    """Full path of ``name`` as written in ``obj``'s docstring, or ``name`` itself."""
    if "." in name.split("(")[0]:
        return name
    scope = obj
    while scope is not None:
        member = scope.members.get(name) if hasattr(scope, "members") else None
        if member is not None:
            try:
                return member.final_target.path if member.is_alias else member.path
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return member.path
        scope = scope.parent
    return name


def _rewrite(obj):
    def link(match):
        short, text = match.group(1), " ".join(match.group(2).split())
        explicit = _EXPLICIT_TITLE.fullmatch(text)  # :meth:`title <target>`
        if explicit:
            title, target = explicit.group(1), explicit.group(2)
        else:
            target = text
            title = target.rsplit(".", 1)[-1] if short else target
        return (f'<autoref identifier="{_resolve(obj, target)}" optional>'
                f"<code>{title}</code></autoref>")

    if obj.docstring is not None and ":`" in obj.docstring.value:
        obj.docstring.value = _ROLE.sub(link, obj.docstring.value)


def _walk(obj, seen):
    if obj.path in seen:
        return
    seen.add(obj.path)
    _rewrite(obj)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package."""

    def on_package(self, *, pkg, **kwargs):
        _walk(pkg, set())
