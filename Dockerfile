# springcore-bridge container image: build in one stage, run slim and non-root in the next.
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY bridge /src/bridge
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    BRIDGE_SPOOL_PATH=/data/spool.db
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home bridge \
    && mkdir -p /data && chown bridge:bridge /data
COPY --from=build /opt/venv /opt/venv
USER bridge
WORKDIR /data
# State (the durable outage spool) lives here; mount a volume to keep it across restarts.
VOLUME ["/data"]
# Health and metrics listener (/healthz, /readyz, /metrics). BRIDGE_HTTP_HOST stays 127.0.0.1,
# so it listens inside the container only, for the HEALTHCHECK below; set BRIDGE_HTTP_HOST=0.0.0.0
# and publish the port for a Prometheus server outside.
ENV BRIDGE_HTTP_PORT=8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["springcore-bridge", "health"]
# Exec form: the bridge runs as PID 1 and gets SIGTERM itself (it handles SIGTERM and SIGINT).
ENTRYPOINT ["springcore-bridge"]
CMD ["run"]
