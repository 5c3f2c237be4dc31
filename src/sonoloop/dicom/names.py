"""Person names (PN) and dates (DA) for people to read: "Family, Given Middle", not
``Family^Given^Middle``; "2019-01-24", not ``20190124``."""

from __future__ import annotations


def _group(group: str) -> str:
    family, given, middle, prefix, suffix = (group.split("^") + [""] * 5)[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = ", ".join(p for p in (family, first) if p)
    return f"{name}, {suffix}" if suffix and name else name or suffix


def format_person_name(value: str) -> str:
    """The alphabetic group formatted, with the ideographic and phonetic ones (Japanese,
    Chinese, Korean names) after it in brackets: ``Yamada, Tarou (山田 太郎; やまだ たろう)``."""
    if not value:
        return ""
    alphabetic, *others = str(value).split("=")
    shown = _group(alphabetic)
    extra = [" ".join(p for p in group.split("^") if p) for group in others]
    extra = [e for e in extra if e]
    if extra:
        return f"{shown} ({'; '.join(extra)})" if shown else "; ".join(extra)
    return shown


def format_date(value: str) -> str:
    """``20190124`` → ``2019-01-24``; anything that is not a full DA value is shown as it is
    (``1994.01.`` from old devices stays readable rather than wrong)."""
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text
