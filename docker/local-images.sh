#!/usr/bin/env bash
# Builds, from Debian packages, local stand-ins for the base images that docker/Dockerfile and
# docker/compose.yaml name, for machines that reach Debian's mirror and PyPI but not Docker Hub:
#
#   xc-local/debian:bookworm    debootstrap --variant=minbase, imported (the root filesystem is
#                               cached under $XC_DEBOOTSTRAP_CACHE, so a rerun skips debootstrap)
#   xc-local/python:3.11-slim   for python:3.11-slim: Debian's python3 (3.11), venv and pip;
#                               `python` resolves; pip trusts this machine's CA bundle
#   xc-local/postgres:15        for postgres:16: Debian's PostgreSQL 15 behind an entrypoint that
#                               honours POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, keeps its
#                               data in /var/lib/postgresql/data and listens on 5432 everywhere
#   xc-local/haproxy:2.6        for haproxy:2.8: Debian's HAProxy, non-root, in the foreground,
#                               reading /usr/local/etc/haproxy/haproxy.cfg
#
# Usage: docker/local-images.sh            build what is missing (cached layers make reruns fast)
#        XC_LOCAL_REBUILD=1 docker/local-images.sh   import and rebuild everything
#        eval "$(docker/local-images.sh --print-env)"  the variables that point compose at them
#
# Needs root (debootstrap), a running docker daemon, and Debian's mirror ($XC_DEBIAN_MIRROR).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/local/common.sh
. "$here/local/common.sh"

SUITE=${XC_DEBIAN_SUITE:-bookworm}
MIRROR=${XC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${XC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${XC_DEBOOTSTRAP_CACHE:-/var/cache/xc-debootstrap}
PREFIX=${XC_LOCAL_PREFIX:-xc-local}
CA_BUNDLE=${XC_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
REBUILD=${XC_LOCAL_REBUILD:-0}

BASE_IMAGE=$PREFIX/debian:$SUITE
PYTHON_IMAGE=$PREFIX/python:3.11-slim
POSTGRES_IMAGE=$PREFIX/postgres:15
LB_IMAGE=$PREFIX/haproxy:2.6

print_env() {
  cat <<ENV
export XC_PYTHON_IMAGE=$PYTHON_IMAGE
export XC_POSTGRES_IMAGE=$POSTGRES_IMAGE
export XC_LB_IMAGE=$LB_IMAGE
ENV
}

if [[ "${1:-}" == --print-env ]]; then
  print_env
  exit 0
fi

have_image() { [[ "$REBUILD" != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

# 1. The minimal Debian root filesystem, as a tarball in the cache, imported as an image.
rootfs_tarball() {
  local tarball=$CACHE/$SUITE-minbase.tar rootfs=$CACHE/$SUITE-rootfs.tmp
  if [[ -s "$tarball" && "$REBUILD" != 1 ]]; then
    xc_info "cached root filesystem: $tarball"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    xc_info "installing debootstrap"
    apt-get install -y -qq debootstrap >/dev/null
  }
  mkdir -p "$CACHE"
  rm -rf "$rootfs"
  xc_info "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
  debootstrap --variant=minbase --components=main "$SUITE" "$rootfs" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    xc_fail "debootstrap failed (log: $CACHE/debootstrap.log)"
  }
  # What an image's apt needs: the suite, its updates and security; no recommends; no service
  # started by a package's postinst; no caches left in layers.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
  cat >"$rootfs/etc/apt/apt.conf.d/90xc-container" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  local dir
  for dir in proc sys dev/pts dev; do
    ! mountpoint -q "$rootfs/$dir" || umount -l "$rootfs/$dir"
  done
  rm -rf "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/archives/*.deb \
    "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/log/*.log "${rootfs:?}"/dev/* \
    "${rootfs:?}"/proc/* "${rootfs:?}"/sys/* "${rootfs:?}"/run/* "${rootfs:?}"/tmp/* \
    "${rootfs:?}"/debootstrap
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  xc_info "root filesystem cached: $tarball ($(du -h "$tarball" | cut -f1))"
}

# Builds one stand-in from docker/local/<name>.Dockerfile; the context is a temporary folder
# holding the Dockerfile, the CA bundle and the files named after it.
build_standin() {
  local tag=$1 name=$2 context
  shift 2
  if have_image "$tag"; then
    xc_info "$tag: present"
    return
  fi
  context=$(mktemp -d)
  cp "$here/local/$name.Dockerfile" "$context/Dockerfile"
  cp "$CA_BUNDLE" "$context/ca-certificates.crt"
  for file in "$@"; do cp "$here/local/$file" "$context/"; done
  xc_info "$tag: building from docker/local/$name.Dockerfile"
  "${XC_BUILD[@]}" --network host --build-arg "BASE=$BASE_IMAGE" -t "$tag" "$context" \
    >"$context/build.log" 2>&1 || {
    tail -30 "$context/build.log" >&2
    xc_fail "building $tag failed (log: $context/build.log)"
  }
  rm -rf "$context"
}

docker info >/dev/null 2>&1 || xc_fail "no docker daemon (start dockerd first)"
[[ -s "$CA_BUNDLE" ]] || xc_fail "no CA bundle at $CA_BUNDLE (set XC_CA_BUNDLE)"
xc_pick_builder
xc_info "builder: ${XC_BUILD[*]}"

if have_image "$BASE_IMAGE"; then
  xc_info "$BASE_IMAGE: present"
else
  rootfs_tarball
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
    "$CACHE/$SUITE-minbase.tar" "$BASE_IMAGE" >/dev/null
  xc_info "$BASE_IMAGE: imported"
fi
build_standin "$PYTHON_IMAGE" python
build_standin "$POSTGRES_IMAGE" postgres postgres-entrypoint.sh
build_standin "$LB_IMAGE" haproxy
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$PREFIX/*" | sed 's/^/    /'
