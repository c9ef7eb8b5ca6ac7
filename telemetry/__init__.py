"""Operations endpoints: `/metrics` (Prometheus), `/healthz` and `/readyz`.

`telemetry.instruments` defines every metric; other packages call into it
(it imports none of them). See docs/operations.md.
"""
