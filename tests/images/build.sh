#!/usr/bin/env bash
# Build the molecule test host images kbxy/test-debian:<suite> from Debian packages
# (debootstrap + docker import). Nothing is pulled from a registry.
# Cached: an image already present is left alone (set KBXY_IMAGES_REBUILD=1 to rebuild).
#
# usage: tests/images/build.sh [12 13 ...]
set -euo pipefail

VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(12 13)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE_DIR=${KBXY_CACHE_DIR:-$HOME/.cache/kbxy}
# Bump when the recipe changes so cached images are rebuilt.
RECIPE_VERSION=3
PACKAGES=systemd,systemd-sysv,python3,python3-apt,sudo,ca-certificates,iproute2,dbus
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { printf 'images: %s\n' "$*"; }

suite_for() {
    case "$1" in
        11) echo bullseye ;;
        12) echo bookworm ;;
        13) echo trixie ;;
        *) echo "images: unknown Debian version '$1' (known: 11 12 13)" >&2; return 1 ;;
    esac
}

image_is_current() {
    local tag=$1 recipe
    recipe=$(docker image inspect --format '{{ index .Config.Labels "org.kbxy.recipe" }}' "$tag" 2>/dev/null) || return 1
    [ "$recipe" = "$RECIPE_VERSION" ]
}

build_one() {
    local version=$1 suite tag rootfs started
    suite=$(suite_for "$version")
    tag="kbxy/test-debian:$version"
    if [ "${KBXY_IMAGES_REBUILD:-0}" != 1 ] && image_is_current "$tag"; then
        say "$tag present (recipe $RECIPE_VERSION): cached"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || {
        say "installing debootstrap"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
    }
    started=$(date +%s)
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/kbxy-rootfs-$suite.XXXXXX")
    # shellcheck disable=SC2064
    trap "$SUDO rm -rf '$rootfs'" RETURN
    say "$tag: debootstrap $suite (minbase) into $rootfs"
    mkdir -p "$CACHE_DIR/debootstrap-$suite"
    $SUDO debootstrap --variant=minbase --include="$PACKAGES" \
        --cache-dir="$CACHE_DIR/debootstrap-$suite" "$suite" "$rootfs" "$MIRROR" \
        >"$CACHE_DIR/debootstrap-$suite.log" 2>&1 || {
        say "debootstrap failed; last lines of $CACHE_DIR/debootstrap-$suite.log:" >&2
        tail -n 20 "$CACHE_DIR/debootstrap-$suite.log" >&2
        return 1
    }

    # Every container must generate its own machine-id at boot.
    $SUDO truncate -s 0 "$rootfs/etc/machine-id"
    $SUDO rm -f "$rootfs/var/lib/dbus/machine-id"
    # Docker provides these per container; the host's must not be baked in.
    $SUDO rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
    # Security fixes and point-release updates, as on a real host.
    $SUDO tee "$rootfs/etc/apt/sources.list" >/dev/null <<SOURCES
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY_MIRROR $suite-security main
SOURCES
    # Units that cannot work in a container and would leave the system degraded.
    for unit in systemd-remount-fs.service getty@tty1.service console-getty.service \
        systemd-firstboot.service sys-kernel-config.mount; do
        $SUDO ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    # Keep the image small: no apt lists or package cache in the layer.
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb

    say "$tag: docker import"
    $SUDO tar -C "$rootfs" -c . | docker import \
        -c 'CMD ["/lib/systemd/systemd"]' \
        -c 'ENV container=docker' \
        -c "LABEL org.kbxy.recipe=$RECIPE_VERSION org.kbxy.suite=$suite" \
        - "$tag" >/dev/null
    say "$tag built in $(($(date +%s) - started)) s ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
}

for version in "${VERSIONS[@]}"; do
    build_one "$version"
done
