"""The gRPC edge: everything that knows gRPC, and nothing below it does.

``server`` builds the ``grpc.aio`` server (per-call layers, health,
reflection, TLS) around an ``App``; ``servicer`` is the thin RouterService;
requests are checked by ``operations.validated`` and answered by
``responses``; the exception tree of ``mcprouter.server.errors`` becomes rich
statuses in ``status``. Layers (``wrapping``, applied once per method):
``auth`` (bearer tokens), ``inflight`` (the in-flight bound), ``status``
(error translation), ``deadlines`` (the caller's deadline, recorded for
``budget``).
"""
