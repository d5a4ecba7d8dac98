#!/usr/bin/env bash
# Sourced by test.sh: makes sure Debian's redis-server is installed (apt-get, once, when it is
# missing), starts one on 127.0.0.1 on a free port with a temporary directory and no
# persistence (no system service), exports CREWTHROTTLE_TEST_REDIS_URL for the shared-budget
# tests, and stops it when the calling script exits. Tests that kill and restart a server
# start their own from the same binary.

ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        sudo="sudo"
    fi
    echo "redis-server is missing: installing Debian's package" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}

start_test_redis() {
    ensure_redis_server
    local port dir
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    dir=$(mktemp -d -t crewthrottle-redis-XXXXXX)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    for _ in $(seq 100); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            break
        fi
        sleep 0.05
    done
    export CREWTHROTTLE_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
    CREWTHROTTLE_TEST_REDIS_DIR="$dir"
    trap stop_test_redis EXIT
}

stop_test_redis() {
    local dir="${CREWTHROTTLE_TEST_REDIS_DIR:-}"
    if [ -n "$dir" ] && [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        sleep 0.1
    fi
    if [ -n "$dir" ]; then
        rm -rf "$dir"
    fi
}
