# syntax=docker/dockerfile:1
# slimspect trainer: the Ray head and worker nodes, and the pipeline job
# (`slimspect pipeline run ...`), all from one image so every node runs the same Ray,
# torch and trainer code (Ray requires identical versions across a cluster).
#
#   docker build -f infra/docker/trainer.Dockerfile -t slimspect-trainer .
#   docker build -f infra/docker/trainer.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t slimspect-trainer:cuda .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU torch: constraints/cpu.txt pins torch==2.13.0 (the version the project is tested
# with). From PyPI that version is the multi-GB CUDA build on linux/x86_64, so torch is
# installed FIRST from PyTorch's CPU wheel index (where 2.13.0 resolves to 2.13.0+cpu,
# which satisfies the ==2.13.0 pin); the second pip install, constrained by cpu.txt, then
# finds torch already satisfied and pulls everything else from PyPI. For a GPU image pass
# another TORCH_INDEX_URL (e.g. .../whl/cu128).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/slimspect
ENV PATH=/opt/slimspect/bin:$PATH
WORKDIR /src
COPY constraints/cpu.txt ./constraints/cpu.txt
RUN pip install --index-url "${TORCH_INDEX_URL}" -c constraints/cpu.txt torch
COPY pyproject.toml README.md ./
COPY slimspect ./slimspect
COPY trainer ./trainer
# `ray[default]` adds the dashboard and the Job API on top of the `train` extra's
# ray[data,train,tune]: KubeRay's RayJob submits through the Job API and probes the
# dashboard, and `ray start --head` serves the dashboard with it. Same Ray version (the
# resolver keeps the one `train` selects).
RUN pip install -c constraints/cpu.txt ".[train]" "ray[default]"

FROM ${PYTHON_IMAGE}
# wget: KubeRay's default liveness/readiness probes call it (raylet and GCS health
# endpoints). libgomp1: OpenMP runtime of torch and ONNX Runtime CPU kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 slimspect \
 && useradd --system --uid 10001 --gid slimspect --home-dir /home/slimspect --create-home slimspect \
 && install -d -o slimspect -g slimspect /var/lib/slimspect
COPY --from=build /opt/slimspect /opt/slimspect
COPY --chown=slimspect:slimspect configs/pipeline.example.yaml /etc/slimspect/pipeline.yaml
ENV PATH=/opt/slimspect/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/slimspect
USER 10001:10001
WORKDIR /var/lib/slimspect
# Ray GCS, Ray client server (the pipeline's --address ray://head:10001), dashboard / Job API
EXPOSE 6379 10001 8265
# No ENTRYPOINT: the same image runs `ray start ...` (nodes) and `slimspect pipeline run ...`
# (the default: the example pipeline on a local Ray inside this container).
CMD ["slimspect", "pipeline", "run", "/etc/slimspect/pipeline.yaml", "--workdir", "/var/lib/slimspect/runs"]
