from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import Http404


def staff_only(view):
    """Anonymous visitors go to the login page; signed-in non-staff get a 404 (no hint)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapped
