"""LaTeX in answers made readable on a terminal (fractions, roots, powers, Greek, boxed answers).

Pipes and JSON keep the raw LaTeX; only the terminal view converts it.
"""

from __future__ import annotations

import re
from functools import lru_cache

# $$...$$, \[...\], \(...\), $...$ (a lone $ followed by a digit and space is left alone: prices).
_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$(?!\s)([^$\n]+?)(?<!\s)\$", re.S)
_SUPERSCRIPT = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUBSCRIPT = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")


@lru_cache(maxsize=1)
def _converter():
    from pylatexenc.latex2text import LatexNodes2Text

    return LatexNodes2Text(math_mode="text")


def _scripts(text: str) -> str:
    """x^2 -> x², x^{10} -> x¹⁰, a_1 -> a₁ where Unicode has the characters."""
    def sup(m: re.Match) -> str:
        body = m.group(1) or m.group(2)
        return body.translate(_SUPERSCRIPT) if all(c in "0123456789+-=()n" for c in body) else m.group(0)

    def sub(m: re.Match) -> str:
        body = m.group(1) or m.group(2)
        return body.translate(_SUBSCRIPT) if all(c in "0123456789+-=()" for c in body) else m.group(0)

    text = re.sub(r"\^\{([^{}]+)\}|\^([0-9n])", sup, text)
    return re.sub(r"_\{([^{}]+)\}|_([0-9])", sub, text)


def latex_to_unicode(expression: str) -> str:
    # \boxed{...} would lose its frame in plain text: mark it, then make it bold Markdown.
    expression = re.sub(r"\\(?:boxed|fbox)\s*", r"\\textbf", expression)
    text = _converter().latex_to_text(_scripts(expression))
    text = re.sub(r"\s*([×÷±·≤≥≠≈])\s*", r" \1 ", text)  # LaTeX eats the space after \times
    return re.sub(r"\s+", " ", text).strip()


def render_math(markdown: str) -> str:
    """Markdown with each math span replaced by readable Unicode; boxed answers in bold."""
    def replace(m: re.Match) -> str:
        expression = next(g for g in m.groups() if g is not None)
        boxed = re.search(r"\\(?:boxed|fbox)\b", expression) is not None
        text = latex_to_unicode(expression)
        return f"**{text}**" if boxed else text

    converted = _MATH.sub(replace, markdown)
    # A \boxed{} outside math delimiters still deserves the highlight.
    return re.sub(r"\\(?:boxed|fbox)\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", lambda m: f"**{latex_to_unicode(m.group(1))}**", converted)
