# The production image: the service only; stores come from docker-compose.yml.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY generated generated
COPY service service
COPY clients/python clients/python
# The server distribution depends on mcprouter-client (the generated contract).
RUN pip install --no-cache-dir ./clients/python . && useradd --system --uid 10001 mcprouter
USER mcprouter

ENV LISTEN_ADDRESS=0.0.0.0:50051 \
    DATA_DIR=/tmp/mcp-router
EXPOSE 50051
# The gRPC health protocol, through the image's own client.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["mcp-router", "health", "--address", "127.0.0.1:50051"]
CMD ["mcp-router", "serve"]
