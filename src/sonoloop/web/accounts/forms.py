"""The login form: says plainly when a user name or address must wait after failed sign-ins."""

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from .throttle import address_of, wait_seconds


class LoginForm(AuthenticationForm):
    def clean(self):
        seconds = wait_seconds(self.cleaned_data.get("username") or "", address_of(self.request))
        if seconds:
            raise forms.ValidationError(
                f"Too many failed sign-ins for this user or from this computer. Try again in "
                f"{(seconds + 59) // 60} minutes, or ask an administrator.", code="throttled")
        return super().clean()
