# llm-broker: one image for every role (api, worker, dev, check-config).
#   docker build -t llm-broker .
#   docker run --rm -v $PWD/deploy/config.yaml:/etc/llm-broker/config.yaml:ro -p 8080:8080 llm-broker
#   docker run --rm ... llm-broker worker --config /etc/llm-broker/config.yaml --provider mock
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package build needs (pyproject's `readme` must exist).
COPY pyproject.toml README.md ./
COPY api ./api
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin broker

USER broker

EXPOSE 8080

ENTRYPOINT ["llm-broker"]
CMD ["api", "--config", "/etc/llm-broker/config.yaml"]
