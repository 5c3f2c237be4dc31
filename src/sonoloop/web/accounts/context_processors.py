from .roles import user_roles


def roles(request):
    """`roles` in every template: the signed-in user's roles, to show only what they may use."""
    return {"roles": user_roles(getattr(request, "user", None))}
