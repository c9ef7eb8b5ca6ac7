"""Fixtures of the metrics tests."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture
def superuser_client(django_user_model) -> Client:
    """Django's test client logged in as a superuser (the admin's pages)."""
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-not-used")
    client = Client()
    client.force_login(root)
    return client
