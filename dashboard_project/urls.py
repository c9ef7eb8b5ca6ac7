"""HTTP routes: the dashboard page and the Django admin."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from .views import DashboardView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", DashboardView.as_view(), name="dashboard"),
]
# Static files from the app's own process in development only (empty unless
# DEBUG): `runserver` does this by itself, uvicorn does not. A deployment
# serves `collectstatic`'s output from the proxy (docs/deploy.md).
urlpatterns += staticfiles_urlpatterns()
