#!/usr/bin/env bash
# Start (or find) the shared apt cache for test hosts: Debian's apt-cacher-ng in a
# container of our own test image, its cache on the controller's disk, so every
# scenario after the first gets its .deb files from the cache instead of the mirror.
# Prints the proxy URL for the test hosts on stdout (everything else goes to stderr).
# Idempotent; KBXY_APT_CACHE=0 turns it off (prints nothing).
set -euo pipefail

NAME=kbxy-apt-cache
IMAGE=kbxy/apt-cache:12
BASE=kbxy/test-debian:12
CACHE_DIR=${KBXY_CACHE_DIR:-$HOME/.cache/kbxy}/apt-cacher-ng
say() { printf 'apt-cache: %s\n' "$*" >&2; }

[ "${KBXY_APT_CACHE:-1}" = 1 ] || { say "disabled (KBXY_APT_CACHE=0)"; exit 0; }

proxy_url() {
    local ip
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$NAME" 2>/dev/null) || return 1
    [ -n "$ip" ] && echo "http://$ip:3142"
}

answers() {
    docker exec "$NAME" bash -c 'exec 3<>/dev/tcp/127.0.0.1/3142' 2>/dev/null
}

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "building $IMAGE from $BASE (apt-cacher-ng from Debian)"
    docker rm -f "$NAME-build" >/dev/null 2>&1 || true
    docker run --name "$NAME-build" "$BASE" /bin/sh -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends apt-cacher-ng >/dev/null && rm -rf /var/lib/apt/lists/*' >&2
    docker commit -c 'CMD ["/usr/sbin/apt-cacher-ng", "-c", "/etc/apt-cacher-ng", "ForeGround=1", "CacheDir=/var/cache/apt-cacher-ng", "LogDir=/var/log/apt-cacher-ng"]' \
        "$NAME-build" "$IMAGE" >/dev/null
    docker rm -f "$NAME-build" >/dev/null
fi

if [ "$(docker inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; then
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    mkdir -p "$CACHE_DIR"
    say "starting $NAME (cache: $CACHE_DIR)"
    docker run -d --name "$NAME" --restart unless-stopped \
        -v "$CACHE_DIR:/var/cache/apt-cacher-ng" "$IMAGE" >/dev/null
fi

for _ in $(seq 1 40); do
    if answers; then
        url=$(proxy_url)
        say "answers at $url ($(du -sh "$CACHE_DIR" 2>/dev/null | cut -f1) cached)"
        echo "$url"
        exit 0
    fi
    sleep 0.5
done
say "WARNING: apt-cacher-ng did not answer; test hosts will use the mirror directly"
