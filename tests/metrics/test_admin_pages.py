"""The metrics and alerts admin for people (issue 16): times as dates in the
server's time zone, one-line text boxes, an exact-match name filter and
counts that do not scan the table, short keys, and the CSV export of the
filtered readings. Through Django's test client as a superuser."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from metrics.admin_display import ms_text
from metrics.models import Alert, Metric

FEB = 1706745600000  # 2024-02-01T00:00:00Z: CET (+1) in Prague
JUL = 1719792000000  # 2024-07-01T00:00:00Z: CEST (+2)


@pytest.fixture
def prague(settings):
    settings.TIME_ZONE = "Europe/Prague"


@pytest.fixture
def readings() -> list[Metric]:
    rows = [
        ("k-cpu-1-0123456789", "cpu", 72.5, "%", FEB),
        ("k-mem-1-0123456789", "mem", 1024.0, "MB", JUL),
        ("k-cpu-2-0123456789", "cpu", 80.25, "%", FEB + 250),
        ("k-inj-1-0123456789", "=HYPERLINK(1)", -1.5, "@x", 0),
    ]
    return [
        Metric.objects.create(key=key, name=name, value=value, unit=unit, timestamp=ts, created_at=ts + 5)
        for key, name, value, unit, ts in rows
    ]


def cells(html: str, column: str) -> list[str]:
    """The column's cells, in order; the first column's without its change link."""
    return [
        re.sub(r'^<a href="[^"]*">(.*)</a>$', r"\1", cell)
        for cell in re.findall(rf'<t[dh] class="field-{column}[^"]*">(.*?)</t[dh]>', html)
    ]


def body(response) -> bytes:
    """The whole streamed body. The export streams an async iterator (what the
    ASGI server sends as it comes); the synchronous test client reads it
    through async_to_sync and says so in a warning, expected here."""
    with pytest.warns(Warning, match="StreamingHttpResponse must consume asynchronous iterators"):
        return b"".join(response)


@pytest.mark.django_db
def test_change_list_shows_dates_in_the_server_time_zone_and_short_keys(superuser_client, readings, prague):
    html = superuser_client.get("/admin/metrics/metric/").content.decode()
    # Newest first by insertion.
    assert cells(html, "time") == [
        "1970-01-01 01:00:00.000 CET",
        "2024-02-01 01:00:00.250 CET",
        "2024-07-01 02:00:00.000 CEST",
        "2024-02-01 01:00:00.000 CET",
    ]
    assert cells(html, "short_key") == [
        '<span title="k-inj-1-0123456789">k-inj-1-</span>',
        '<span title="k-cpu-2-0123456789">k-cpu-2-</span>',
        '<span title="k-mem-1-0123456789">k-mem-1-</span>',
        '<span title="k-cpu-1-0123456789">k-cpu-1-</span>',
    ]
    assert "metrics/admin.css" in html  # the no-wrap rules


@pytest.mark.django_db
def test_times_follow_the_time_zone_setting(superuser_client, readings, settings):
    settings.TIME_ZONE = "UTC"
    html = superuser_client.get("/admin/metrics/metric/?name=cpu").content.decode()
    assert cells(html, "time") == ["2024-02-01 00:00:00.250 UTC", "2024-02-01 00:00:00.000 UTC"]


def test_times_outside_the_calendar_are_shown_as_numbers():
    assert ms_text(8.64e15) == "8.64e+15 ms"
    assert ms_text(-8.64e15) == "-8.64e+15 ms"
    assert ms_text(None) == ""


@pytest.mark.django_db
def test_change_form_has_one_line_boxes_and_readable_created_and_updated(superuser_client, readings, prague):
    html = superuser_client.get(f"/admin/metrics/metric/{readings[1].seq}/change/").content.decode()
    assert "<textarea" not in html
    for field, value in (("name", "mem"), ("unit", "MB")):
        assert re.search(rf'<input type="text" name="{field}" value="{value}" class="vTextField"[^>]*>', html), field
    readonly = re.findall(r'<div class="readonly">(.*?)</div>', html)
    assert readonly == ["k-mem-1-0123456789", "1", "2024-07-01 02:00:00.005 CEST", "2024-07-01 02:00:00.005 CEST"]


@pytest.mark.django_db
def test_name_filter_is_an_exact_text_box_and_nothing_scans_the_table(superuser_client, readings):
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get("/admin/metrics/metric/?name=cpu&o=1")
    html = response.content.decode()
    assert cells(html, "shown_name") == ['<span title="cpu">cpu</span>'] * 2
    assert response.context["cl"].result_count == 2
    # The filter: a text box holding the value, suggestions from the per-name figures,
    # the page's other parameters kept.
    assert (
        '<input type="text" name="name" value="cpu" placeholder="exact name" aria-label="name" list="name-suggestions">'
        in html
    )
    suggestions = re.search(r'<datalist id="name-suggestions">(.*?)</datalist>', html).group(1)
    assert re.findall(r'<option value="([^"]*)">', suggestions) == ["=HYPERLINK(1)", "cpu", "mem"]
    assert '<input type="hidden" name="o" value="1">' in html
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"] and "metrics_metric" in q["sql"]]
    assert counts == []

    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get("/admin/metrics/metric/")
    assert response.context["cl"].result_count == 4
    assert [q for q in queries.captured_queries if "COUNT(" in q["sql"] and "metrics_metric" in q["sql"]] == []

    # Other filters count at most COUNT_LIMIT rows (a LIMITed subquery).
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get("/admin/metrics/metric/?unit=%25")
    assert response.context["cl"].result_count == 2
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"] and "metrics_metric" in q["sql"]]
    assert len(counts) == 1 and "LIMIT 10001" in counts[0], counts


@pytest.mark.django_db
def test_name_search_is_exact_and_case_insensitive(superuser_client, readings):
    html = superuser_client.get("/admin/metrics/metric/?q=CPU").content.decode()
    assert cells(html, "shown_name") == ['<span title="cpu">cpu</span>'] * 2
    html = superuser_client.get("/admin/metrics/metric/?q=cp").content.decode()
    assert cells(html, "shown_name") == []


@pytest.mark.django_db
def test_csv_export_of_the_filtered_readings(superuser_client, readings, prague):
    page = superuser_client.get("/admin/metrics/metric/?name=cpu").content.decode()
    assert '<a href="/admin/metrics/metric/export.csv?name=cpu" class="export-csv">Export CSV</a>' in page

    response = superuser_client.get("/admin/metrics/metric/export.csv?name=cpu")
    assert response.status_code == 200
    assert (response["Content-Type"], response["Content-Disposition"]) == (
        "text/csv; charset=utf-8",
        'attachment; filename="metrics.csv"',
    )
    assert body(response).decode() == (
        "id,name,value,unit,timestamp,time\r\n"
        "k-cpu-2-0123456789,cpu,80.25,%,1706745600250.0,2024-02-01T01:00:00.250+01:00\r\n"
        "k-cpu-1-0123456789,cpu,72.5,%,1706745600000.0,2024-02-01T01:00:00.000+01:00\r\n"
    )


@pytest.mark.django_db
def test_csv_export_of_everything_in_the_lists_order_with_formulas_defused(superuser_client, readings):
    response = superuser_client.get("/admin/metrics/metric/export.csv?o=-4")  # time, newest first
    assert body(response).decode() == (
        "id,name,value,unit,timestamp,time\r\n"
        "k-mem-1-0123456789,mem,1024.0,MB,1719792000000.0,2024-07-01T00:00:00.000+00:00\r\n"
        "k-cpu-2-0123456789,cpu,80.25,%,1706745600250.0,2024-02-01T00:00:00.250+00:00\r\n"
        "k-cpu-1-0123456789,cpu,72.5,%,1706745600000.0,2024-02-01T00:00:00.000+00:00\r\n"
        "k-inj-1-0123456789,'=HYPERLINK(1),-1.5,'@x,0.0,1970-01-01T00:00:00.000+00:00\r\n"
    )


@pytest.mark.django_db
def test_csv_export_over_the_limit_is_refused_with_a_message(superuser_client, readings, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "ADMIN_EXPORT_MAX_ROWS": 1}
    response = superuser_client.get("/admin/metrics/metric/export.csv?name=cpu")
    assert (response.status_code, response["Location"]) == (302, "/admin/metrics/metric/?name=cpu")
    page = superuser_client.get(response["Location"]).content.decode()
    assert "More than 1 readings match: narrow the filter to export (DASHBOARD_ADMIN_EXPORT_MAX_ROWS)." in page
    settings.DASHBOARD = {**settings.DASHBOARD, "ADMIN_EXPORT_MAX_ROWS": 2}
    response = superuser_client.get("/admin/metrics/metric/export.csv?name=cpu")
    assert response.status_code == 200 and len(body(response).splitlines()) == 3


@pytest.mark.django_db
def test_csv_export_needs_the_admin_and_view_permission(readings, django_user_model):
    response = Client().get("/admin/metrics/metric/export.csv")
    assert (response.status_code, response["Location"]) == (
        302,
        "/admin/login/?next=/admin/metrics/metric/export.csv",
    )
    staff = django_user_model.objects.create_user("staff", password="pw-not-used", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/metrics/metric/export.csv").status_code == 403


@pytest.mark.django_db
def test_alerts_list_dates_short_keys_and_filter_by_metric(superuser_client, prague):
    Alert.objects.create(key="a-cpu-0123456789", metric="cpu", threshold=90, severity="high", timestamp=JUL)
    Alert.objects.create(key="a-mem-0123456789", metric="mem", threshold=1e3, severity="low", timestamp=FEB)
    html = superuser_client.get("/admin/metrics/alert/?metric=cpu").content.decode()
    assert cells(html, "metric") == ["cpu"]
    assert cells(html, "time") == ["2024-07-01 02:00:00.000 CEST"]
    assert cells(html, "short_key") == ['<span title="a-cpu-0123456789">a-cpu-01</span>']
    assert '<input type="text" name="metric" value="cpu" placeholder="exact metric" aria-label="metric">' in html
    form = superuser_client.get("/admin/metrics/alert/add/").content.decode()
    assert "<textarea" not in form and re.search(r'<input type="text" name="metric"[^>]*class="vTextField"', form)
