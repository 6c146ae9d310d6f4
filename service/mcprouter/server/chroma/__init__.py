"""ChromaDB: embeddings and cached semantic search.

``processor`` serves the RouteData operations; ``store`` and ``backends`` talk
to an embedded or a server Chroma; ``filters`` builds Chroma's ``where`` from
typed conditions; ``search_keys`` makes the generation-scoped cache keys.
"""
