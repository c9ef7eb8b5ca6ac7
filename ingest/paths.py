"""The ingest endpoints' paths: routed by urls.py, capped by body_cap.py,
kept quiet by logfilters.py."""

JSON_READINGS = "/api/metrics"
LINE_PROTOCOL = "/api/v2/write"
OTLP = "/v1/metrics"
INGEST_PATHS = frozenset({JSON_READINGS, LINE_PROTOCOL, OTLP})
