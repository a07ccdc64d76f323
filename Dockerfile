# The docbus services, as docker-compose.yml runs them: as an unprivileged user, with a
# health check on the ops endpoint every service serves (DOCBUS_LISTEN).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus bus
COPY producers producers
COPY consumers consumers
COPY schemas schemas
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin docbus \
    && mkdir -p /pki /tls /credentials /archive /witness /inbox /inbox-edxml /run/credentials \
    && chown docbus:docbus /pki /tls /credentials /archive /witness /inbox /inbox-edxml
# Volumes mounted on these folders start out owned by docbus.
USER docbus
ENV DOCBUS_LISTEN=0.0.0.0:9100
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/readyz', timeout=3)"]
ENTRYPOINT ["docbus"]
