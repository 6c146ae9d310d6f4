"""PostgreSQL: experiments, user profiles and sticky assignments.

``processor`` serves the RouteData operations through the cache core; ``store``
holds the SQL; ``assignment`` is the published hashing algorithm; ``migrations``
the versioned schema.
"""
