# chute's image: one image for control-plane, ingest-api and sync-worker; the command picks the
# service (compose.yaml gives each its own):
#   docker build -t chute .
#   docker run chute python -m ingest_api          (CHUTE_INGEST_PORT, default 4000)
#   docker run chute python -m sync_worker         (CHUTE_SYNC_PORT, default 4100)
#   docker run chute python -m control_plane serve (CHUTE_CONTROL_PORT, default 4200)
# The image holds `pip install .` of the project in /opt/venv (with its C extension, built
# against Debian's librdkafka), and runs as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler and librdkafka's headers for chute's batch producer (shared/chute/kafka/native).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev librdkafka-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Third-party dependencies first, from pyproject.toml alone (with empty package stubs), so that a
# change to chute's own code does not reinstall them.
COPY pyproject.toml README.md /tmp/deps/
RUN cd /tmp/deps \
 && for pkg in shared/chute services/ingest_api services/sync_worker services/control_plane schemas; do \
      mkdir -p "$pkg" && touch "$pkg/__init__.py"; \
    done \
 && pip install /tmp/deps \
 && pip uninstall --yes chute \
 && rm -rf /tmp/deps

# Then chute itself: packages chute, ingest_api, sync_worker, control_plane and schemas.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY schemas/ schemas/
RUN pip install --no-deps .


FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CHUTE_LOG_FORMAT=json \
    CHUTE_SCHEMAS=schemas
# librdkafka for the batch producer built above (the same Debian release as the build stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends librdkafka1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 chute \
 && useradd --system --uid 10001 --gid chute --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin chute
COPY --from=build /opt/venv /opt/venv
# The default pipeline definitions; compose mounts ./schemas over them (`python -m` puts the
# working directory first on sys.path, so /app/schemas wins over the installed copy).
WORKDIR /app
COPY schemas/ /app/schemas/
USER chute
EXPOSE 4000 4100 4200
# Without a command: the control plane's command line and its help.
CMD ["chute", "--help"]
