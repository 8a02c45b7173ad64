# xpander-bridge container image.
#
#   docker build -t REGISTRY/xpander-bridge:0.1.0 .
#
# builder: installs the runtime dependencies from requirements.lock, every file
# checked against its sha256 (--require-hashes), into /opt/venv; then builds the
# wheel from the repository root (the same `pip wheel .` as anywhere else) and
# installs it with --no-deps, so nothing reaches the venv unhashed.
# runtime: the same base image plus that venv, run as an unprivileged user.
# No HEALTHCHECK: Kubernetes probes /livez and /readyz (see charts/xpander-bridge).
#
# The base image of both stages. The tag alone moves with every Debian and
# Python patch release, so a release pins it by digest, resolved on a machine
# with registry access (docs/OPERATIONS.md, "The image"):
#
#   docker buildx imagetools inspect python:3.11-slim   # the top "Digest:" line
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<that digest> ...
#
# That digest is the multi-architecture index's, so amd64 and arm64 builds pin
# alike. The tag stays in the reference for the reader; Docker goes by the digest.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies first, from the lock alone: this layer is reused until the
# lock changes. Wheels only: building an sdist would fetch its build tools
# unhashed. (The bridge's own build below does fetch setuptools and wheel that
# way; they stay in pip's throwaway build environment, not in /opt/venv.)
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
       -r requirements.lock
# Only what the wheel is built from (.dockerignore keeps the rest out).
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# pip check: a dependency added to pyproject.toml but missing from the lock
# fails the build here, not the bridge at its first import.
RUN pip wheel --no-cache-dir --no-deps . -w /dist \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /dist/xpander_bridge-*.whl \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="xpander-bridge" \
      org.opencontainers.image.description="Streams xpander.ai task events into Kafka and records external task runs from Kafka on the platform." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed UID/GID, matching the chart's runAsUser, so file ownership and
# runAsNonRoot checks do not depend on the image's /etc/passwd.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["xpander-bridge"]
CMD ["run"]
