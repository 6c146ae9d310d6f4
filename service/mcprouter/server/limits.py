"""Bounds on what one request may carry, in one place.

The edge validates every request against these before anything runs
(``request_checks.py``), and the stores that depend on them (Chroma's
filters and dimensions) import them from here, so the two can never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MAX_KEYS_PER_CALL = 500
MAX_EVENTS_PER_CALL = 1000
MAX_ITEMS_PER_CALL = 1000
MAX_DIMENSION = 4096
MAX_K = 100
MAX_FILTER_CONDITIONS = 16
MAX_FILTER_VALUES = 100
MAX_METADATA_ENTRIES = 32
MAX_METADATA_VALUE_LENGTH = 1024
MAX_DOCUMENT_LENGTH = 65_536
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
# Clocks drift; an event "from the future" beyond this is a client bug.
MAX_CLOCK_SKEW = timedelta(hours=1)
