# databricks run watcher: `watcher run` as a non-root daemon on a read-only root filesystem.
#
#   docker build -t databricks-run-watcher:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# The base is pinned by tag and digest (the multi-arch index of python:3.13.9-slim-trixie);
# Renovate or Dependabot should keep both current. Override with --build-arg PYTHON_IMAGE=...
# Both stages must use the same image: the virtualenv is copied, not rebuilt.
ARG PYTHON_IMAGE=python:3.13.9-slim-trixie@sha256:326df678c20c78d465db501563f3492d17c42a4afe33a1f2bf5406a1d56b0e86

# --- build: wheels of the package and its dependencies, installed into a virtualenv -----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher ./watcher
# Every dependency has manylinux wheels, so no compiler is needed here either. pip compiles
# the bytecode now: at run time the root filesystem is read-only. pip itself is removed from
# the virtualenv so that the runtime image carries no installer.
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/watcher \
 && /opt/watcher/bin/pip install --no-index --find-links /wheels databricks-run-watcher \
 && /opt/watcher/bin/pip uninstall --yes pip \
 && /opt/watcher/bin/watcher --version

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="databricks-run-watcher" \
      org.opencontainers.image.description="Watches Databricks job runs, alerts on failures and duration breaches, exports run durations to Prometheus." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The base image's own pip goes too: nothing installs anything at run time.
RUN python -m pip uninstall --yes pip \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/watcher \
 && install -d -m 0755 /etc/watcher

COPY --from=build /opt/watcher /opt/watcher

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only (the virtualenv's bytecode was
# compiled at build time). HOME and TMPDIR point at /tmp, the only other writable place (an
# emptyDir in Kubernetes, `--tmpfs /tmp` with docker run --read-only).
ENV PATH=/opt/watcher/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    WATCHER_CONFIG=/etc/watcher/config.yaml

# A numeric UID/GID that exists nowhere else (the distroless "nonroot" convention), so that
# Kubernetes can verify runAsNonRoot without a passwd entry.
USER 65532:65532
WORKDIR /var/lib/watcher
VOLUME ["/var/lib/watcher"]
EXPOSE 9108

# exec: the daemon is PID 1 and receives SIGTERM itself. Arguments given to the container are
# appended to `watcher run`; for another command use `--entrypoint watcher`.
ENTRYPOINT ["/bin/sh", "-c", "exec watcher run -c \"${WATCHER_CONFIG}\" \"$@\"", "watcher"]
