# syntax=docker/dockerfile:1
# enrich: build with the official Swift image, run on a slim Ubuntu as a non-root user.
#   docker build -t enrich:latest .
# The same image serves every docker-compose service: worker, simulator, one-shot migrate and the cron
# scheduler (supercronic).

# ---- build ----
FROM swift:6.3-noble AS build
WORKDIR /build
# Resolve dependencies in their own layer, so that a source change does not refetch them. (Package.resolved
# is not committed: the versions are the newest within Package.swift's ranges.) Tests/ is copied because
# SwiftPM checks that every declared target has its sources, even when building one product.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product enrich \
    && install -D "$(swift build -c release --show-bin-path)/enrich" /staging/enrich

# ---- runtime ----
FROM ubuntu:noble
# supercronic: cron built for containers (see README, "docker-compose"). Pinned and checksum-verified;
# only its linux-amd64 build is pinned here, so other architectures stop with a clear message. tini runs
# in front of it as PID 1 (`tini -g`) so that `docker stop` delivers SIGTERM to a running enrich job too.
ARG SUPERCRONIC_VERSION=v0.2.34
ARG SUPERCRONIC_SHA1SUM=e8631edc1775000d119b70fd40339a7238eece14
RUN [ "$(dpkg --print-architecture)" = amd64 ] \
        || { echo "only supercronic's amd64 build is pinned: add its checksum for $(dpkg --print-architecture)"; exit 1; } \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata curl tini \
    && curl -fsSLo /usr/local/bin/supercronic \
        "https://github.com/aptible/supercronic/releases/download/${SUPERCRONIC_VERSION}/supercronic-linux-amd64" \
    && echo "${SUPERCRONIC_SHA1SUM}  /usr/local/bin/supercronic" | sha1sum -c - \
    && chmod 0755 /usr/local/bin/supercronic \
    && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /opt/enrich --create-home enrich
COPY --from=build /staging/enrich /usr/local/bin/enrich
COPY jobs /opt/enrich/jobs
USER enrich:enrich
WORKDIR /opt/enrich
ENV ENRICH_JOBS_DIR=/opt/enrich/jobs \
    ENRICH_LOG_FORMAT=json
ENTRYPOINT ["enrich"]
CMD ["--help"]
