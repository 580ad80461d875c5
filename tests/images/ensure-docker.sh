#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine. Idempotent.
#  - installs Debian's docker.io when dockerd is missing
#  - starts dockerd through systemd when systemd is PID 1, else in the background
#  - waits for the socket and says what it did
set -euo pipefail

SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
LOG=${DOCKERD_LOG:-/var/log/kbxy-dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { printf 'ensure-docker: %s\n' "$*"; }

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
    say "engine already answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)); nothing to do"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd missing: installing Debian's docker.io"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io >/dev/null
    say "installed docker.io $(dpkg-query -W -f='${Version}' docker.io)"
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ]; then
    say "systemd is PID 1: starting docker.service"
    $SUDO systemctl start docker.service
else
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd runs (pid $(pgrep -x dockerd)) but does not answer yet; waiting"
    else
        say "no init system runs dockerd: starting it in the background (log: $LOG)"
        # nohup + setsid: dockerd must outlive this script and the shell that ran it
        $SUDO setsid nohup dockerd --host "unix://$SOCKET" >"$LOG" 2>&1 < /dev/null &
    fi
fi

for ((i = 0; i < WAIT_S * 2; i++)); do
    if engine_answers; then
        say "engine answers on $SOCKET after ~$((i / 2)) s ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 0.5
done

say "ERROR: no Docker engine answered on $SOCKET within ${WAIT_S} s; last log lines:" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1
