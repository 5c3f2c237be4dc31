"""Roles are Django groups: viewer ⊂ annotator ⊂ reviewer ⊂ admin.

Each role includes the ones before it (a reviewer may also annotate and view); a superuser
has every role. Views check a role with :func:`role_required` (pages) or
``api_login_required(role=...)`` (APIs).
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

ROLES = ("viewer", "annotator", "reviewer", "admin")
DESCRIPTIONS = {
    "viewer": "sees patients, studies, images, AI results and annotations",
    "annotator": "also saves annotations and submits them for review",
    "reviewer": "also approves annotations (only approved ones train models) and exports them as DICOM SEG",
    "admin": "also uploads images and retries analysis jobs",
}


class UnknownRole(ValueError):
    pass


def _rank(role: str) -> int:
    try:
        return ROLES.index(role)
    except ValueError:
        raise UnknownRole(f"unknown role {role!r}; roles are {', '.join(ROLES)}") from None


def user_roles(user) -> set[str]:
    """Every role the user has, the implied ones included."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    if user.is_superuser:
        return set(ROLES)
    cached = getattr(user, "_sonoloop_roles", None)
    if cached is None:
        names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        top = max((_rank(n) for n in names), default=-1)
        cached = set(ROLES[: top + 1])
        user._sonoloop_roles = cached
    return cached


def has_role(user, role: str) -> bool:
    _rank(role)
    return role in user_roles(user)


def role_grant(user, role: str) -> None:
    from django.contrib.auth.models import Group

    _rank(role)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    user.__dict__.pop("_sonoloop_roles", None)


def role_revoke(user, role: str) -> None:
    _rank(role)
    user.groups.remove(*user.groups.filter(name=role))
    user.__dict__.pop("_sonoloop_roles", None)


def role_required(role: str):
    """For HTML pages: log in first, then a 403 page unless the user has ``role``."""
    _rank(role)

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"this needs the {role} role")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
