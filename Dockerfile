# trustgc serving image: TorchServe 0.12 (Java 17) + the trustgc package, CPU-only torch.
#   docker build -t trustgc:staging .          (docker-compose.yml builds it as service torchserve)
# Runs as a non-root user (uid 10001) and writes only to /app/.run (TorchServe's run directory:
# config, logs, key_file.json) and /tmp (TorchServe's pid file, unpacked .mar, worker sockets),
# so it runs with a read-only root filesystem (compose: read_only, Kubernetes:
# readOnlyRootFilesystem) when those two are writable volumes.
# bookworm, not the plain 3.11-slim tag: Debian 13 (trixie) no longer ships openjdk-17.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp

# procps: pgrep, which `serving.server.TorchServe.stop()` uses to wait for java to exit
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first, from the PyTorch CPU index: the project's torch==2.13.0 pin is then already
# satisfied and pip never pulls the multi-GB CUDA build from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Editable install from /app with the serving extra: serving/paths.py finds deploy/torchserve/
# and model_store/ in the source checkout (a plain install would need TRUSTGC_HOME=/app).
COPY pyproject.toml README.md ./
COPY trustgc/ trustgc/
COPY trustgc_cli/ trustgc_cli/
COPY training/ training/
COPY serving/ serving/
COPY deploy/torchserve/ deploy/torchserve/
COPY deploy/kubernetes/probe.py deploy/kubernetes/probe.py
RUN pip install -e '.[serve,kserve]' \
    && python -c "import torch, ts, serving.handler, serving.kserve_runtime; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# The shipped model, baked in for Kubernetes; compose mounts ./model_store over it read-only.
COPY model_store/ model_store/

RUN groupadd --gid 10001 trustgc \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin trustgc \
    && mkdir -p /app/.run \
    && chown 10001:10001 /app/.run
USER 10001:10001

# inference, management, metrics (no token needed), gRPC inference, gRPC management;
# 8090/8091: the KServe runtime's OIP REST and gRPC (`trustgc serve --runtime kserve`)
EXPOSE 8080 8081 8082 7070 7071 8090 8091

# `trustgc serve` (token auth on, SIGTERM stops TorchServe and java cleanly), listening on the
# container's interfaces: `trustgc serve` itself binds 127.0.0.1, which nothing outside the
# container can reach.  Publish the ports on the host's loopback only (docker-compose.yml does).
# TRUSTGC_TOKEN_AUTH=false is `trustgc serve --no-auth`: only behind an authenticating gateway
# (deploy/kubernetes/ explains why replicas need it).  Once the CLI has a --host option this
# becomes: CMD ["trustgc", "serve", "--host", "0.0.0.0"]
ENV TRUSTGC_TOKEN_AUTH=true
STOPSIGNAL SIGTERM
CMD ["python", "-c", "import os, sys; from serving.server import ServerSettings, run_foreground; sys.exit(run_foreground(ServerSettings(host='0.0.0.0', auth=os.environ['TRUSTGC_TOKEN_AUTH'] != 'false')))"]
