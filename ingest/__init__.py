"""HTTP ingest: readings pushed over plain HTTP (JSON, InfluxDB line protocol, OTLP)."""
