#!/bin/sh
# Builds the fhirsync image without a registry: the binary is built on this
# machine (build-binary.sh, as the Dockerfile's build stage does) and the
# image starts FROM scratch with CA certificates and time-zone data copied
# from this machine's Debian packages (ca-certificates, tzdata).
#
# Usage: deploy/container/build-offline.sh [TAG]    (from the repository root)
# BUILDER picks podman, buildah or docker; the first found is used otherwise.
# VERSION is passed to build-binary.sh.
set -eu
tag=${1:-localhost/fhirsync:dev}
here=$(dirname "$0")

builder=${BUILDER:-}
if [ -z "$builder" ]; then
  for b in podman buildah docker; do
    if command -v "$b" >/dev/null 2>&1; then builder=$b; break; fi
  done
fi
if [ -z "$builder" ]; then
  echo "build-offline.sh: no podman, buildah or docker on PATH" >&2
  exit 1
fi

for f in /etc/ssl/certs/ca-certificates.crt /usr/share/zoneinfo/UTC; do
  if [ ! -e "$f" ]; then
    echo "build-offline.sh: $f is missing (apt-get install ca-certificates tzdata)" >&2
    exit 1
  fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM

mkdir -p "$ctx/out/var-lib/fhirsync" "$ctx/base/etc/ssl/certs" "$ctx/base/usr/share" "$ctx/base/tmp"
"$here/build-binary.sh" "$ctx/out/fhirsync"

cp /etc/ssl/certs/ca-certificates.crt "$ctx/base/etc/ssl/certs/"
cp -R -P /usr/share/zoneinfo "$ctx/base/usr/share/"
chmod 1777 "$ctx/base/tmp"
cat >"$ctx/base/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$ctx/base/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' >"$ctx/base/etc/nsswitch.conf"

case "$(basename "$builder")" in
  podman | buildah)
    # HEALTHCHECK exists only in the Docker image format, not in OCI's.
    # --layers=false commits the final image only, no cached step images.
    "$builder" build --format docker --layers=false --tag "$tag" --file "$here/Containerfile.scratch" "$ctx" ;;
  *)
    "$builder" build --tag "$tag" --file "$here/Containerfile.scratch" "$ctx" ;;
esac
