# migration-runner: a PostgreSQL schema migration job, one image.
#
#   docker build -t migration-runner .
#   docker build --build-arg PYTHON_IMAGE=python:3.13-slim --build-arg VERSION=1.2.3 -t migration-runner .
#
# Classic Dockerfile syntax only (no "# syntax=" line, heredocs, COPY --link/--chmod or
# RUN --mount) so the legacy builder, BuildKit and buildah all build it.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------
# builder: a virtual environment holding the pinned runtime dependencies
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, from the pins in pyproject.toml, so that a change to the code
# alone does not reinstall them (layer cache). The cloud-identity extras (aws, gcp) too.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['aws'] + p['optional-dependencies']['gcp']))" > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --requirement requirements.txt \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode checked-hash /opt/venv

# The application: the package and the entry point, byte-compiled here because at run
# time the root filesystem is read-only and nothing may be written.
COPY entrypoint.py /app/entrypoint.py
COPY runner/ /app/runner/
COPY db/migrations/ /app/db/migrations/
RUN /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode checked-hash /app

# ---------------------------------------------------------------------------
# final: the venv and the app, run as a numeric non-root user
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/migration-runner

LABEL org.opencontainers.image.title="migration-runner" \
      org.opencontainers.image.description="PostgreSQL schema migration job: applies db/migrations once, then exits with a sysexits-style status" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# A fixed numeric user and group, so Kubernetes can verify runAsNonRoot without a name
# lookup; no home directory, no login shell.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MIGRATIONS_DIR=/app/db/migrations

WORKDIR /app
USER 10001:10001

# Mount a volume over /app/db/migrations, or point MIGRATIONS_DIR elsewhere, to run other
# migrations with the same image.
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD ["up"]
