# The production image: the service only (no embedded servers; the client SDK
# distribution comes along because it carries the generated contract);
# the stores come from docker-compose.yml or Kubernetes. tests/e2e/test_image.py
# builds a wheel from exactly the files copied here and runs these commands.
# Base pinned to a patch release: bump it on purpose, not by a rebuild.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY generated generated
COPY service service
COPY clients/python clients/python
# The server distribution depends on mcprouter-client (the generated contract).
RUN pip install --no-cache-dir ./clients/python . && useradd --system --uid 10001 mcprouter
USER 10001

# Health on its own plaintext port too, so the HEALTHCHECK and Kubernetes
# probes work when the main port serves TLS and requires tokens.
ENV LISTEN_ADDRESS=0.0.0.0:50051 \
    HEALTH_LISTEN_ADDRESS=0.0.0.0:8081 \
    DATA_DIR=/tmp/mcp-router
EXPOSE 50051 8081
# The gRPC health protocol, through the image's own client.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["mcp-router", "health", "--address", "127.0.0.1:8081"]
CMD ["mcp-router", "serve"]
