FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WXKF_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wecom ./wecom
COPY simulator ./simulator
COPY wxkf ./wxkf
COPY gateway ./gateway
COPY token_service ./token_service
COPY manager ./manager
COPY puppets ./puppets
COPY hub ./hub
RUN pip install .

RUN useradd --system --uid 10001 --home-dir /data wxkf \
    && mkdir -p /data \
    && chown wxkf /data
USER wxkf
VOLUME ["/data"]
EXPOSE 8080

# The whole hub on an embedded database in /data; HOST and PORT above are what it binds. For the admin
# CLI: docker exec <container> wxkf corp list (it reads /data/admin.token).
CMD ["wxkf", "up"]
