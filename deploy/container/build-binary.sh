#!/bin/sh
# Builds the fhirsync binary the container image ships: one static ELF file
# that needs nothing from the image but CA certificates and time-zone data.
#
# SQLite comes from github.com/mattn/go-sqlite3, which is C: the build needs
# cgo and a C compiler, and links statically (-extldflags -static) against
# the C library's static archive (libc6-dev on Debian). The netgo and
# osusergo tags keep name resolution and user lookup in Go, so the static
# glibc never tries to load NSS modules at run time;
# sqlite_omit_load_extension drops SQLite's dlopen of extensions.
#
# Usage: build-binary.sh OUTPUT   (run from the repository root;
# VERSION sets what `fhirsync version` prints, "dev" when unset)
set -eu
out=${1:?usage: build-binary.sh OUTPUT}
version=${VERSION:-dev}
CGO_ENABLED=1 go build -trimpath \
  -tags 'netgo osusergo sqlite_omit_load_extension' \
  -ldflags "-s -w -X main.version=${version} -linkmode external -extldflags -static" \
  -o "$out" ./cmd/fhirsync
