# llm-broker: one image for every role (api, worker, dev, check-config).
#   docker build -t llm-broker .
#
# Everything in one container (API, a worker per provider, an in-process Redis) with the built-in
# mock config: key sk-dev, model mock-chat.
#   docker run --rm -p 8080:8080 llm-broker dev --host 0.0.0.0
#
# API and workers as separate containers sharing a Redis container, all reading deploy/config.yaml;
# deploy/docker.env gives them REDIS_URL (the `redis` container) and the ${VLLM_*} variables the
# config needs. (`docker compose up --build` does the same.)
#   docker network create llmb && docker run -d --name redis --network llmb redis:7-alpine
#   docker run --rm --network llmb -p 8080:8080 --env-file deploy/docker.env \
#     -v $PWD/deploy/config.yaml:/etc/llm-broker/config.yaml:ro llm-broker
#   docker run --rm --network llmb --env-file deploy/docker.env \
#     -v $PWD/deploy/config.yaml:/etc/llm-broker/config.yaml:ro \
#     llm-broker worker --config /etc/llm-broker/config.yaml --provider mock
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The runtime lock first (its layer is cached until the lock changes): the exact versions, hashes
# checked, that CI tested. Then the package itself, resolving nothing more.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# Only what the package build needs (pyproject's `readme` must exist).
COPY pyproject.toml README.md ./
COPY api ./api
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin broker

USER broker

EXPOSE 8080

ENTRYPOINT ["llm-broker"]
CMD ["api", "--config", "/etc/llm-broker/config.yaml"]
