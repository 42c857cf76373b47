# syntax=docker/dockerfile:1
#
# The fhirsync container image: one static binary on distroless static
# (CA certificates, time-zone data, /etc/passwd with nonroot 65532, /tmp),
# running as 65532 with the root filesystem read-only; state lives in the
# volume /var/lib/fhirsync. See docs/deploy.md.
#
#   docker build -t fhirsync --build-arg VERSION=v1.2.3 .
#
# Both bases are pinned by digest; the tag beside each says what it is.
# golang:1.26.5 — the digest Renovate pinned in bl4ko/netbox-ssot PR #825
# (merged 2026-08-11), used as-is in many public Dockerfiles.
# gcr.io/distroless/static-debian12:nonroot — the digest Renovate pinned in
# bug-ops/zeph PR #6318 (merged 2026-07-16). Refresh both with
# `crane digest IMAGE:TAG` (or `docker buildx imagetools inspect`) and review
# the change like any other dependency bump.
#
# CI cannot reach a registry, so it builds deploy/container/Containerfile.scratch
# instead: the same runtime stage on a root filesystem assembled from Debian
# packages. TestDockerfileMatchesScratchBuild keeps the two runtime stages equal.
ARG GO_IMAGE=docker.io/library/golang:1.26.5@sha256:7caba5286b4c3613a337b709c573047d8ae62ee76106647313b61e72b99f20af
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:aef9602f8710ec12bde19d593fed1f76c708531bb7aba205110f1029786ead7b

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN VERSION="${VERSION}" deploy/container/build-binary.sh /out/fhirsync \
 && mkdir -p /out/var-lib/fhirsync

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/fhirsync /usr/local/bin/fhirsync
# --- runtime (identical in deploy/container/Containerfile.scratch) ---
COPY --from=build --chown=65532:65532 --chmod=0700 /out/var-lib/ /var/lib/
ENV FHIRSYNC_DATA_DIR=/var/lib/fhirsync \
    FHIRSYNC_LISTEN=0.0.0.0:8080 \
    FHIRSYNC_LOG_FORMAT=json
USER 65532:65532
WORKDIR /var/lib/fhirsync
VOLUME ["/var/lib/fhirsync"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/fhirsync", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/fhirsync"]
CMD ["serve"]
