"""HTTP routes: the dashboard page and the Django admin."""
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path
from django.views.generic import TemplateView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", TemplateView.as_view(template_name="dashboard.html"), name="dashboard"),
]
# Static files from the app's own process in development only (empty unless
# DEBUG): `runserver` does this by itself, uvicorn does not. A deployment
# serves `collectstatic`'s output from the proxy (docs/deploy.md).
urlpatterns += staticfiles_urlpatterns()
