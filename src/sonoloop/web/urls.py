from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from sonoloop.web.accounts.forms import LoginForm

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("dicomweb/", include("sonoloop.web.archive.dicomweb_urls")),
    path("", include("sonoloop.web.audit.urls")),
    path("", include("sonoloop.web.analysis.urls")),
    path("", include("sonoloop.web.annotations.urls")),
    path("", include("sonoloop.web.learning.urls")),
    path("", include("sonoloop.web.archive.urls")),
]

handler400 = "sonoloop.web.archive.views.bad_request"
handler403 = "sonoloop.web.archive.views.permission_denied"
handler404 = "sonoloop.web.archive.views.page_not_found"
handler500 = "sonoloop.web.archive.views.server_error"
