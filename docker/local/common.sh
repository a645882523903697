# shellcheck shell=bash disable=SC2034  # XC_BUILD and XC_BUILDKIT are for the sourcing script
# Sourced by docker/local-images.sh and docker/test-docker.sh: which docker command builds.
#
# BuildKit builds only the stages a target needs (the runtime image never builds trainer-build).
# A docker CLI from 23 on hands BuildKit builds to the buildx plugin; an older CLI (Debian 12's
# docker.io is 20.10) has BuildKit built in. Without either, the classic builder still works,
# but builds every stage before the target.

# Sets XC_BUILD (an array: the command that builds, e.g. `docker build`) and XC_BUILDKIT (0/1).
xc_pick_builder() {
  local client version
  XC_BUILDKIT=0
  if docker buildx version >/dev/null 2>&1; then
    XC_BUILD=(env DOCKER_BUILDKIT=1 docker build)
    XC_BUILDKIT=1
    return
  fi
  for client in docker /usr/bin/docker; do
    command -v "$client" >/dev/null 2>&1 || continue
    version=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [[ "${version%%.*}" =~ ^[0-9]+$ ]] && (( ${version%%.*} < 23 )); then
      XC_BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
      XC_BUILDKIT=1
      return
    fi
  done
  XC_BUILD=(env DOCKER_BUILDKIT=0 docker build)
}

xc_step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
xc_info() { printf '    %s\n' "$*"; }
xc_fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
