"""The gRPC edge: everything that knows gRPC, and nothing below it does.

``server`` builds the ``grpc.aio`` server (interceptors, health, reflection,
TLS) around an ``App``; ``servicer`` is the thin RouterService; requests are
checked in ``request_validation`` and answered by ``responses``; the
exception tree of ``mcprouter.server.errors`` becomes rich statuses in
``status``. Interceptors: ``auth`` (bearer tokens), ``limits`` (in-flight
bound), ``deadlines`` (the caller's deadline, recorded for ``budget``).
"""
