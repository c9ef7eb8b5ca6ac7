"""HTTP routes: the dashboard page, the Django admin and the ingest endpoints."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from .views import DashboardView

urlpatterns = [
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico whatever the page links: answer it instead
    # of logging a 404 WARNING per visitor.
    path("favicon.ico", RedirectView.as_view(url=static("dashboard/favicon.svg"))),
    path("", include("ingest.urls")),
    path("", DashboardView.as_view(), name="dashboard"),
]
# Static files from the app's own process in development only (empty unless
# DEBUG): `runserver` does this by itself, uvicorn does not. A deployment
# serves `collectstatic`'s output from the proxy (docs/deploy.md).
urlpatterns += staticfiles_urlpatterns()
