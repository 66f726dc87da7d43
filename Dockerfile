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
RUN pip install .

RUN useradd --system --uid 10001 --home-dir /data wxkf \
    && mkdir -p /data \
    && chown wxkf /data
USER wxkf
VOLUME ["/data"]
EXPOSE 8080

# For now the image runs the WeCom simulator; the services' `wxkf up` replaces this when it lands.
CMD ["wxkf", "sim", "--host", "0.0.0.0"]
