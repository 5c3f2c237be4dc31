"""DICOM wildcard matching (PS3.4 C.2.2.2.4) as SQL pattern lookups, never a regular expression.

``*`` matches any run of characters and ``?`` one character. Case-sensitive attributes use
GLOB on SQLite (its ``[`` escaped) and LIKE on PostgreSQL. The case-insensitive Person Name
attributes compare case-folded text: SQLite's own LIKE and UPPER fold ASCII only (``ä`` would
not match ``Ä``), so on SQLite both sides go through Python's ``str.casefold`` (a function
registered on each connection) and GLOB; PostgreSQL's UPPER(...) LIKE UPPER(...) folds Unicode.
Both engines match such patterns without backtracking blow-up, unlike Python's ``re`` behind ``__regex``.
"""

from __future__ import annotations

from django.db.backends.signals import connection_created
from django.db.models import CharField, Lookup


def _casefold(value):
    return value.casefold() if isinstance(value, str) else value


def register_casefold(sender, connection, **kwargs) -> None:
    """``sonoloop_casefold(text)`` on every new SQLite connection."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("sonoloop_casefold", 1, _casefold, deterministic=True)


connection_created.connect(register_casefold, dispatch_uid="sonoloop-casefold")


def like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_pattern(value: str) -> str:
    return value.replace("[", "[[]")  # '*' and '?' are already GLOB's own wildcards


class _Wildcard(Lookup):
    case_sensitive = True

    def _sides(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return lhs, rhs, list(lhs_params), list(rhs_params)

    def as_sqlite(self, compiler, connection):
        lhs, rhs, lhs_params, rhs_params = self._sides(compiler, connection)
        if self.case_sensitive:
            return f"{lhs} GLOB {rhs}", lhs_params + [glob_pattern(p) for p in rhs_params]
        return f"sonoloop_casefold({lhs}) GLOB {rhs}", lhs_params + [glob_pattern(_casefold(p)) for p in rhs_params]

    def as_sql(self, compiler, connection):
        lhs, rhs, lhs_params, rhs_params = self._sides(compiler, connection)
        params = lhs_params + [like_pattern(p) for p in rhs_params]
        if self.case_sensitive:
            return f"{lhs} LIKE {rhs} ESCAPE '\\'", params
        return f"UPPER({lhs}) LIKE UPPER({rhs}) ESCAPE '\\'", params


@CharField.register_lookup
class DicomWildcard(_Wildcard):
    lookup_name = "dicom_wildcard"


@CharField.register_lookup
class DicomWildcardIgnoringCase(_Wildcard):
    lookup_name = "dicom_iwildcard"
    case_sensitive = False
