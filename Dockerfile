# syntax=docker/dockerfile:1
# One image for every Audiences process. The command picks the process:
#   services.ingest | services.segmentation | services.prediction | services.profile |
#   services.sync | services.segmentation.realtime | services.shared.cli migrate
# e.g. `docker run IMAGE services.sync` (the entrypoint is `python -m`).
#
# The base is pinned by tag; pin it by digest as well in your registry mirror
# (--build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...) so a rebuild is
# byte-for-byte the same base. Both stages use the same base, so the virtualenv built
# in the first runs unchanged in the second.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Compilers only here: every pinned dependency ships manylinux wheels today, but a
# platform without one (e.g. a new arm64 release) then still builds.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first (their layer is reused while only code changes), then the project.
COPY pyproject.toml README.md ./
RUN /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
COPY services ./services
COPY gen ./gen
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -c "import services.shared.server, audiences.v1.ingest_pb2"

FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: LightGBM's OpenMP runtime (prediction training). Nothing else is added:
# no compiler, no package manager cache.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 audiences \
 && useradd --system --uid 10001 --gid audiences --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin audiences
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_HOST=0.0.0.0
# A read-only root filesystem on Kubernetes: the only writable place is /tmp (an
# emptyDir there); the working directory holds nothing the processes write.
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 50056 8080 8081 9464
ENTRYPOINT ["python", "-m"]
CMD ["services.ingest"]
