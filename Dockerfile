# otelgate: the proxy (and, with another entrypoint, its simulated upstream) for docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, then the package: pip install re-runs only when either changes.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The Redis store (several replicas, docs/scaling.md) and uvloop (the faster event loop) belong in a production image.
RUN pip install ".[redis,speed]" \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin otelgate \
    && mkdir -p /data && chown otelgate /data

# The SQLite budget store (sqlite:///./otelgate.db by default) lands in /data, a volume in the compose file.
WORKDIR /data
USER otelgate
EXPOSE 8787

# /health is liveness only (the process serves); /health/deep would also fail on a slow store or collector,
# and restarting the proxy for those would not help.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/health', timeout=2)"]

ENTRYPOINT ["otelgate"]
CMD ["serve", "--host", "0.0.0.0"]
