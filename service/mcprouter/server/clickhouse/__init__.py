"""ClickHouse: event ingestion with dedup, real-time metrics and analytics.

``processor`` serves the RouteData operations; ``tracking`` runs the dedup
records (``dedup``: pending, then done), the group-committed insert
(``ingest``) and the Redis real-time counters (``realtime``); ``store`` holds
the queries; ``analytics_math`` and ``analytics_report`` turn counts into an
experimenter's figures; ``schema`` the versioned tables.
"""
