"""DICOM wildcard matching (PS3.4 C.2.2.2.4) as SQL pattern lookups, never a regular expression.

``*`` matches any run of characters and ``?`` one character. SQLite's LIKE ignores ASCII
case, so case-sensitive attributes use GLOB there (its ``[`` escaped); PostgreSQL uses LIKE,
and UPPER(...) LIKE UPPER(...) for the case-insensitive Person Name attributes. Both engines
match such patterns without backtracking blow-up, unlike Python's ``re`` behind ``__regex``.
"""

from __future__ import annotations

from django.db.models import CharField, Lookup


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
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", lhs_params + [like_pattern(p) for p in rhs_params]

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
