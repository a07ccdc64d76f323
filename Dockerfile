# The docbus services, as docker-compose.yml runs them.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus bus
COPY producers producers
COPY consumers consumers
COPY schemas schemas
RUN pip install --no-cache-dir .
ENTRYPOINT ["docbus"]
