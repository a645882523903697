#!/usr/bin/env bash
# `make test-docker`: the images and docker/compose.yaml end to end, on this machine's docker.
#
#   1. a docker daemon (started when none answers: dockerd with $XC_DOCKERD_ARGS, as root)
#   2. local stand-ins for the base images (docker/local-images.sh; XC_TEST_LOCAL_IMAGES=0 uses
#      the official images instead, for a machine that reaches Docker Hub)
#   3. the runtime and trainer images (BuildKit where the docker CLI has it)
#   4. the default profile: the demo bundle is trained in the trainer container, `api` gets
#      healthy, POST /search answers on the published port, the server is not root
#   5. the fleet profile: PostgreSQL and three replicas healthy, the load balancer answers and
#      spreads searches over all three replicas, the replicas share /data and run as non-root,
#      and with one replica killed the load balancer still answers every search
#   then everything is taken down with its volumes (XC_TEST_KEEP=1 leaves it up after a failure).
# XC_TEST_BUILD=0 skips step 3 and uses the images already tagged XC_RUNTIME_IMAGE and
# XC_TRAINER_IMAGE (xc-search:runtime, xc-search:trainer).
#
# Not part of `make test`: 11 minutes on 2 cores with warm caches (7.5 of them training the demo
# bundle), 18 from nothing (no images, no debootstrap cache, no daemon) on a busy machine.
# Compose project: $XC_TEST_PROJECT (xc-test). Exits non-zero at the first failed check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=docker/local/common.sh
. docker/local/common.sh

PROJECT=${XC_TEST_PROJECT:-xc-test}
USE_LOCAL=${XC_TEST_LOCAL_IMAGES:-1}
KEEP=${XC_TEST_KEEP:-0}
HEALTH_TIMEOUT_S=${XC_TEST_HEALTH_TIMEOUT_S:-1200}
REQUIRE_POSTGRES=${XC_TEST_REQUIRE_POSTGRES:-0}
BUILD=${XC_TEST_BUILD:-1}
DOCKERD_ARGS=${XC_DOCKERD_ARGS:---storage-driver=vfs --iptables=false --bridge=none}
LOGS=${XC_TEST_LOGS:-/tmp/xc-test-docker}
API_PORT=8000
LB_PORT=${XC_LB_PORT:-8080}
SEARCH_BODY='{"query": "cordless drill 20v", "k": 5}'

# The test's own settings, whatever the caller's environment says: loopback only, no search key,
# an admin key of its own (the fleet check PUTs a product through the balancer).
export XC_PUBLISH_ADDRESS=127.0.0.1 XC_SEARCH_KEY='' XC_ADMIN_KEY=xc-test-admin XC_LB_PORT=$LB_PORT
# Creating a container copies its image's layers on the vfs storage driver: minutes for the
# trainer's 2 GB, beyond docker-compose v1's 60 s.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600} DOCKER_CLIENT_TIMEOUT=${DOCKER_CLIENT_TIMEOUT:-600}
export XC_RUNTIME_IMAGE=${XC_RUNTIME_IMAGE:-xc-search:runtime}
export XC_TRAINER_IMAGE=${XC_TRAINER_IMAGE:-xc-search:trainer}

mkdir -p "$LOGS"
started=$SECONDS
timings=()
stage_start=$SECONDS
stage_name=
end_stage() {
  [[ -z "$stage_name" ]] || timings+=("$(printf '%6ds  %s' $((SECONDS - stage_start)) "$stage_name")")
  stage_name=
}
stage() {
  end_stage
  stage_name=$1
  stage_start=$SECONDS
  xc_step "$1"
}

wheel_server_pid=
phase=setup
compose=()
cleanup() {
  local rc=$?
  if [[ -n "$wheel_server_pid" ]]; then kill "$wheel_server_pid" 2>/dev/null || true; fi
  if ((${#compose[@]})); then
    if ((rc != 0)); then
      printf '\n==> failed during %s; state of the project:\n' "$phase" >&2
      "${compose[@]}" --profile fleet ps >&2 || true
      local service
      for service in demo-bundle api postgres api-1 api-2 api-3 lb; do
        if [[ -n "$("${compose[@]}" --profile fleet ps -q "$service" 2>/dev/null)" ]]; then
          printf -- '--- last log lines of %s\n' "$service" >&2
          "${compose[@]}" --profile fleet logs --no-color --tail 25 "$service" >&2 || true
        fi
      done
    fi
    if ((rc != 0)) && [[ "$KEEP" == 1 ]]; then
      printf '\nXC_TEST_KEEP=1: left up (take down: %s --profile fleet down -v)\n' "${compose[*]}" >&2
    else
      "${compose[@]}" --profile fleet down -v --remove-orphans >"$LOGS/down.log" 2>&1 || true
    fi
  fi
  if ((rc == 0)); then
    printf '\nPASS: make test-docker (%ds)\n' $((SECONDS - started))
  else
    printf '\nFAIL: make test-docker (exit %d after %ds; logs in %s)\n' "$rc" $((SECONDS - started)) "$LOGS" >&2
  fi
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# POST /search at $1; sets $code and $body.
search() {
  local out
  out=$(curl -s -o "$LOGS/search.json" -w '%{http_code}' --max-time 30 -X POST "$1/search" \
    -H 'content-type: application/json' -d "$SEARCH_BODY") || out=000
  code=$out
  body=$(cat "$LOGS/search.json" 2>/dev/null || true)
}

# Checks that $body is an answer with results, and prints its first result.
check_results() {
  python3 - "$body" <<'PY' || xc_fail "the answer has no results: $body"
import json
import sys

answer = json.loads(sys.argv[1])
results = answer["results"]
assert results, "no results"
top = results[0]
print("    %d results (model %s), top: %s %r %s"
      % (len(results), answer.get("model"), top["id"], top["title"], top["score"]))
PY
}

container_of() { "${compose[@]}" "${profile[@]}" ps -q "$1"; }

# Waits until service $1's container reports healthy (health check of its image or compose).
wait_healthy() {
  local service=$1 deadline=$((SECONDS + HEALTH_TIMEOUT_S)) id status
  while :; do
    id=$(container_of "$service")
    [[ -n "$id" ]] || xc_fail "$service has no container"
    status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
    (($(docker inspect -f '{{.RestartCount}}' "$id") < 3)) || xc_fail "$service keeps restarting"
    case "$status" in
      "running healthy") xc_info "$service: healthy after $((SECONDS - phase_start))s"; return ;;
      *unhealthy) xc_fail "$service is unhealthy" ;;
      exited* | dead*) xc_fail "$service stopped ($status)" ;;
    esac
    ((SECONDS < deadline)) || xc_fail "$service not healthy after ${HEALTH_TIMEOUT_S}s ($status)"
    sleep 3
  done
}

not_root() {
  local uid
  uid=$("${compose[@]}" "${profile[@]}" exec -T "$1" id -u | tr -d '\r')
  [[ "$uid" =~ ^[0-9]+$ ]] || xc_fail "$1: id -u gave '$uid'"
  ((uid != 0)) || xc_fail "$1 runs as root"
  xc_info "$1 runs as uid $uid"
}

# Where the trainer's torch 2.13.0 (CPU) comes from: XC_TORCH_INDEX_URL / XC_TORCH_FIND_LINKS
# when set; else the Dockerfile's default (PyTorch's CPU index) when it answers; else a CPU wheel
# in one of pip's find-links folders on this machine, served to the build over loopback; else
# pip's default index (its torch 2.13.0 is the CUDA build: several GB more).
pick_torch_source() {
  if [[ -n "${XC_TORCH_INDEX_URL+set}" || -n "${XC_TORCH_FIND_LINKS:-}" ]]; then
    xc_info "torch: XC_TORCH_INDEX_URL='${XC_TORCH_INDEX_URL-}' XC_TORCH_FIND_LINKS='${XC_TORCH_FIND_LINKS:-}'"
    return
  fi
  if curl -sf -o /dev/null --max-time 10 https://download.pytorch.org/whl/cpu/torch/; then
    xc_info "torch: the Dockerfile's default, https://download.pytorch.org/whl/cpu"
    return
  fi
  local dirs dir wheel port
  dirs=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  for dir in ${XC_TORCH_WHEEL_DIR:-} $dirs; do
    dir=${dir#file://}
    wheel=$(find "$dir" -maxdepth 1 -name 'torch-2.13.0+cpu-cp311-*.whl' 2>/dev/null | head -1)
    [[ -n "$wheel" ]] || continue
    # A fixed port when it is free: the URL is a build argument, so the same URL keeps the
    # trainer's torch layer cached from one run to the next.
    port=${XC_TORCH_WHEEL_PORT:-18731}
    port_free "$port" ||
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >"$LOGS/wheels.log" 2>&1 &
    wheel_server_pid=$!
    export XC_TORCH_INDEX_URL='' XC_TORCH_FIND_LINKS=http://127.0.0.1:$port/
    xc_info "torch: PyTorch's index unreachable; $(basename "$wheel") served from $dir on $XC_TORCH_FIND_LINKS"
    return
  done
  export XC_TORCH_INDEX_URL=''
  xc_info "torch: PyTorch's index unreachable and no CPU wheel here: pip's default index (CUDA build, large)"
}

build_image() {
  local target=$1 tag=$2
  shift 2
  "${XC_BUILD[@]}" --network host -f docker/Dockerfile --target "$target" \
    --build-arg "PYTHON_IMAGE=$XC_PYTHON_IMAGE" "$@" -t "$tag" . >"$LOGS/build-$target.log" 2>&1 || {
    tail -30 "$LOGS/build-$target.log" >&2
    xc_fail "building the $target image failed (log: $LOGS/build-$target.log)"
  }
  xc_info "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
}

# ---------------------------------------------------------------------------------------------
stage "docker daemon"
if docker info >/dev/null 2>&1; then
  xc_info "running: $(docker version --format 'server {{.Server.Version}}')"
else
  ((EUID == 0)) || xc_fail "no docker daemon answers, and starting one needs root"
  command -v dockerd >/dev/null 2>&1 || apt-get install -y -qq docker.io >/dev/null
  xc_info "starting dockerd $DOCKERD_ARGS (log: $LOGS/dockerd.log)"
  # shellcheck disable=SC2086  # the arguments are words
  setsid dockerd $DOCKERD_ARGS >"$LOGS/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || xc_fail "dockerd did not come up (log: $LOGS/dockerd.log)"
  xc_info "running: $(docker version --format 'server {{.Server.Version}}')"
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  xc_fail "neither 'docker compose' nor docker-compose (apt-get install docker-compose)"
fi
xc_info "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || true))"
compose+=(-p "$PROJECT" -f docker/compose.yaml)
profile=()
xc_pick_builder
xc_info "builder: ${XC_BUILD[*]}"
((XC_BUILDKIT)) || xc_info "no BuildKit: the classic builder also builds trainer-build for the runtime image"

stage "base images"
if [[ "$USE_LOCAL" == 1 ]]; then
  bash docker/local-images.sh
  eval "$(bash docker/local-images.sh --print-env)"
else
  xc_info "official images (XC_TEST_LOCAL_IMAGES=0)"
fi
export XC_PYTHON_IMAGE=${XC_PYTHON_IMAGE:-python:3.11-slim}
xc_info "XC_PYTHON_IMAGE=$XC_PYTHON_IMAGE XC_POSTGRES_IMAGE=${XC_POSTGRES_IMAGE:-postgres:16 (default)} XC_LB_IMAGE=${XC_LB_IMAGE:-haproxy:2.8 (default)}"

if [[ "$BUILD" == 1 ]]; then
  stage "runtime image"
  build_image runtime "$XC_RUNTIME_IMAGE"

  stage "trainer image"
  pick_torch_source
  build_image trainer "$XC_TRAINER_IMAGE" \
    --build-arg "TORCH_INDEX_URL=${XC_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" \
    --build-arg "TORCH_FIND_LINKS=${XC_TORCH_FIND_LINKS:-}"
else
  stage "images (XC_TEST_BUILD=0: not rebuilt)"
  for image in "$XC_RUNTIME_IMAGE" "$XC_TRAINER_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || xc_fail "no image $image (run with XC_TEST_BUILD=1)"
    xc_info "$image: $(docker image inspect -f '{{.Created}}' "$image")"
  done
fi
if docker run --rm "$XC_RUNTIME_IMAGE" python -c 'import psycopg, psycopg_pool' >/dev/null 2>&1; then
  xc_info "the runtime image has psycopg and psycopg_pool"
else
  # The replicas get XC_DATABASE_URL: a service that reads it cannot start without them.
  [[ "$REQUIRE_POSTGRES" != 1 ]] || xc_fail "the runtime image lacks psycopg / psycopg_pool"
  xc_info "WARN: the runtime image lacks psycopg / psycopg_pool (pyproject's dependencies);" \
    "the fleet's replicas fail if the service reads XC_DATABASE_URL"
fi

# ---------------------------------------------------------------------------------------------
stage "default profile: demo bundle and api"
phase="the default profile"
"${compose[@]}" --profile fleet down -v --remove-orphans >"$LOGS/down.log" 2>&1
port_free "$API_PORT" || xc_fail "127.0.0.1:$API_PORT is taken (make run?): stop that first"
phase_start=$SECONDS
xc_info "compose up -d (demo-bundle trains the demo bundle first: minutes; log: $LOGS/up-default.log)"
"${compose[@]}" up -d --no-build >"$LOGS/up-default.log" 2>&1 || {
  tail -20 "$LOGS/up-default.log" >&2
  xc_fail "compose up failed"
}
xc_info "demo-bundle done after $((SECONDS - phase_start))s"
wait_healthy api

stage "default profile: checks"
search "http://127.0.0.1:$API_PORT"
[[ "$code" == 200 ]] || xc_fail "POST /search on :$API_PORT gave $code: $body"
xc_info "POST /search on 127.0.0.1:$API_PORT: 200"
check_results
not_root api
"${compose[@]}" down >"$LOGS/down-default.log" 2>&1 # keeps the models volume for the fleet
xc_info "down (the models volume stays for the fleet)"

# ---------------------------------------------------------------------------------------------
stage "fleet profile: postgres, three replicas, load balancer"
phase="the fleet profile"
profile=(--profile fleet)
port_free "$LB_PORT" || xc_fail "127.0.0.1:$LB_PORT is taken: set XC_LB_PORT"
phase_start=$SECONDS
xc_info "compose --profile fleet up -d lb (log: $LOGS/up-fleet.log)"
"${compose[@]}" "${profile[@]}" up -d --no-build lb >"$LOGS/up-fleet.log" 2>&1 || {
  tail -20 "$LOGS/up-fleet.log" >&2
  xc_fail "compose up failed"
}
for service in postgres api-1 api-2 api-3; do wait_healthy "$service"; done
[[ -z "$(container_of api)" ]] || xc_fail "the single-process api started with the fleet"
lb_url=http://127.0.0.1:$LB_PORT
deadline=$((SECONDS + 60))
while search "$lb_url"; [[ "$code" != 200 ]]; do
  ((SECONDS < deadline)) || xc_fail "the load balancer does not answer: $code $body"
  sleep 2
done
xc_info "the load balancer answers on 127.0.0.1:$LB_PORT after $((SECONDS - phase_start))s"

stage "fleet profile: checks"
check_results
for i in $(seq 12); do
  search "$lb_url"
  [[ "$code" == 200 ]] || xc_fail "search $i through the load balancer gave $code: $body"
done
xc_info "12 more searches through the load balancer: all 200"
"${compose[@]}" "${profile[@]}" logs --no-color lb >"$LOGS/lb.log" 2>&1
served=$(grep -oE ' api/api-[0-9]+ ' "$LOGS/lb.log" | sort | uniq -c | awk '{printf "%s:%s ", $2, $1}')
xc_info "answered by (from the balancer's log): $served"
for replica in api-1 api-2 api-3; do
  [[ "$served" == *"api/$replica:"* ]] || xc_fail "$replica answered no search (log: $LOGS/lb.log)"
done
for replica in api-1 api-2 api-3; do not_root "$replica"; done
# shellcheck disable=SC2016  # expanded in the containers
marker=$("${compose[@]}" "${profile[@]}" exec -T api-1 sh -c 'echo "written by $(hostname)" | tee /data/.xc-test-shared' | tr -d '\r')
seen=$("${compose[@]}" "${profile[@]}" exec -T api-3 cat /data/.xc-test-shared | tr -d '\r')
[[ -n "$marker" && "$seen" == "$marker" ]] || xc_fail "api-3 does not see api-1's /data ('$marker' / '$seen')"
"${compose[@]}" "${profile[@]}" exec -T api-2 rm /data/.xc-test-shared
xc_info "/data is one volume: api-3 reads what api-1 wrote there, api-2 removes it"
# shellcheck disable=SC2016  # expanded in the container
sessions=$("${compose[@]}" "${profile[@]}" exec -T postgres sh -c \
  'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"' | tr -d '\r ')
if [[ "$sessions" =~ ^[0-9]+$ ]] && ((sessions > 0)); then
  xc_info "PostgreSQL: $sessions sessions from the replicas"
elif [[ "$REQUIRE_POSTGRES" == 1 ]]; then
  xc_fail "no replica is connected to PostgreSQL"
else
  xc_info "WARN: no replica is connected to PostgreSQL ('$sessions'; XC_DATABASE_URL not used by this build yet?)"
fi

# A catalog change through the balancer reaches every replica (through PostgreSQL's log and
# LISTEN/NOTIFY): each replica is asked directly, inside its container.
put_code=$(curl -s -o "$LOGS/put.json" -w '%{http_code}' -X PUT "$lb_url/products" \
  -H "authorization: Bearer $XC_ADMIN_KEY" -H 'content-type: application/json' \
  -d '{"products": [{"id": "FLEET-1", "title": "Quillwort fleet probe lantern"}]}')
[[ "$put_code" == 200 ]] || xc_fail "PUT /products through the load balancer gave $put_code: $(cat "$LOGS/put.json")"
probe='import json, time, urllib.request
body = json.dumps({"query": "Quillwort fleet probe lantern", "k": 5}).encode()
for _ in range(50):
    request = urllib.request.Request("http://127.0.0.1:8000/search", body, {"content-type": "application/json"})
    answer = json.load(urllib.request.urlopen(request, timeout=5))
    if "FLEET-1" in [hit["id"] for hit in answer["results"]]:
        print(answer["version"])
        break
    time.sleep(0.1)
else:
    print("missing")'
for replica in api-1 api-2 api-3; do
  version=$("${compose[@]}" "${profile[@]}" exec -T "$replica" python -c "$probe" | tr -d '\r')
  [[ "$version" == *+c1 ]] || xc_fail "$replica does not answer with the product PUT through the balancer ('$version')"
done
xc_info "a product PUT through the balancer is answered by api-1, api-2 and api-3 (catalog version 1)"

stage "fleet profile: one replica killed"
"${compose[@]}" "${profile[@]}" kill api-2 >"$LOGS/kill.log" 2>&1
xc_info "compose kill api-2"
slowest=0
for i in $(seq 12); do
  t0=$(date +%s%N)
  search "$lb_url"
  [[ "$code" == 200 ]] || xc_fail "search $i with api-2 killed gave $code: $body"
  ms=$((($(date +%s%N) - t0) / 1000000))
  ((ms > slowest)) && slowest=$ms
done
xc_info "12 searches through the load balancer with api-2 killed: all 200 (slowest ${slowest} ms)"

stage "teardown"
phase=teardown
"${compose[@]}" --profile fleet down -v --remove-orphans >"$LOGS/down.log" 2>&1
xc_info "compose --profile fleet down -v"
compose=()
end_stage
printf '\n==> timings\n'
printf '%s\n' "${timings[@]}"
