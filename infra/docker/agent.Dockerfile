# syntax=docker/dockerfile:1
# slimspect station agent (`slimspect agent --config station.yaml`): cameras, ONNX Runtime,
# SQLite spool, gRPC uplink, heartbeat and verified model updates. No torch.
#
#   docker build -f infra/docker/agent.Dockerfile -t slimspect-agent .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/slimspect
ENV PATH=/opt/slimspect/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slimspect ./slimspect
COPY edge_agent ./edge_agent
RUN pip install ".[edge]"

FROM ${PYTHON_IMAGE}
# The video group (gid 44 on Debian) lets the agent open /dev/video* when a capture device
# is passed in (`devices:`); synthetic, folder and url cameras need nothing.
RUN groupadd --system --gid 10001 slimspect \
 && useradd --system --uid 10001 --gid slimspect --groups video \
      --home-dir /home/slimspect --create-home slimspect \
 && install -d -o slimspect -g slimspect -m 0750 /var/lib/slimspect-agent
COPY --from=build /opt/slimspect /opt/slimspect
ENV PATH=/opt/slimspect/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# The agent's default state_dir: spool.sqlite, the model cache, current.json. Mount a volume.
VOLUME ["/var/lib/slimspect-agent"]
# /metrics and /healthz (metrics.port; bind metrics.host 0.0.0.0 to scrape from outside)
EXPOSE 9465
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/healthz', timeout=4)"]
CMD ["slimspect", "agent", "--config", "/etc/slimspect/station.yaml"]
