# syntax=docker/dockerfile:1
# slimspect services: the gRPC aggregator (`slimspect aggregator serve`) and the HTTP API,
# which also serves the Fleet gRPC server of the rollout service (`slimspect api serve`).
# One image, two commands. No torch: `services` never imports the trainer.
#
#   docker build -f infra/docker/services.Dockerfile -t slimspect-services .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with slimspect[services], no compilers in the final image
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/slimspect
ENV PATH=/opt/slimspect/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slimspect ./slimspect
COPY services ./services
# A plain (not editable) install of the repository's own pyproject with the `services` extra.
RUN pip install ".[services]"

# ---- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 slimspect \
 && useradd --system --uid 10001 --gid slimspect --home-dir /home/slimspect --create-home slimspect
COPY --from=build /opt/slimspect /opt/slimspect
ENV PATH=/opt/slimspect/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLIMSPECT_AGGREGATOR_HOST=0.0.0.0 \
    SLIMSPECT_API_HOST=0.0.0.0 \
    SLIMSPECT_ROLLOUT_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/slimspect
# aggregator gRPC, aggregator /metrics, API HTTP, Fleet gRPC (the settings' defaults)
EXPOSE 50051 9464 8080 50052
CMD ["slimspect", "api", "serve"]
