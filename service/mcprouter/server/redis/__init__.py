"""Redis as a processor: the cache-only RPCs (GetCached, Invalidate, dedup).

``processor`` serves them; ``connection`` builds the shared client.
"""
