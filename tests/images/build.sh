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

# The tools layer kbxy/test-debian:<version>-tools: test-only packages that no role installs
# (the nginx scenario's TLS clients and ACME server), so scenarios don't apt-install them on
# every run. Every package a role installs (nginx, curl, openssh-server, ...) stays out, so
# fresh-host installs and --check on a fresh host are still proven. dpkg writes with
# unsafe-io and leaves out docs, man pages and translations (of these packages and of
# whatever a role installs later on such a host).
# (The hardening scenario stays on the base images: its Lynis index must not see packages
# that only another scenario's tests need.)
TOOLS_COMMON="pebble openssl"
tools_for() {
    case "$1" in
        13) echo "$TOOLS_COMMON testssl.sh" ;;  # testssl 3.2 rates; bookworm's 3.0 does not
        *) echo "$TOOLS_COMMON" ;;
    esac
}

build_tools() {
    local version=$1 base tag packages recipe have started
    base="kbxy/test-debian:$version"
    tag="$base-tools"
    packages=$(tools_for "$version")
    # the base image's id is part of the recipe: a rebuilt base rebuilds the layer
    recipe=$(printf '%s|%s|1' "$(docker image inspect --format '{{.Id}}' "$base")" "$packages" | sha256sum | cut -c1-16)
    have=$(docker image inspect --format '{{ index .Config.Labels "org.kbxy.tools" }}' "$tag" 2>/dev/null || true)
    if [ "${KBXY_IMAGES_REBUILD:-0}" != 1 ] && [ "$have" = "$recipe" ]; then
        say "$tag present: cached"
        return 0
    fi
    started=$(date +%s)
    say "$tag: installing $packages"
    docker rm -f "kbxy-tools-build-$version" >/dev/null 2>&1 || true
    docker run --name "kbxy-tools-build-$version" "$base" /bin/sh -c "
        printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
            'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
            'path-include=/usr/share/locale/locale.alias' >/etc/dpkg/dpkg.cfg.d/01-kbxy-nodoc
        echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/02-kbxy-unsafe-io
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null \
            && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb" >&2 || {
        docker rm -f "kbxy-tools-build-$version" >/dev/null 2>&1
        say "$tag: installing $packages failed" >&2
        return 1
    }
    docker commit -c 'CMD ["/lib/systemd/systemd"]' -c "LABEL org.kbxy.tools=$recipe" \
        "kbxy-tools-build-$version" "$tag" >/dev/null
    docker rm -f "kbxy-tools-build-$version" >/dev/null
    say "$tag built in $(($(date +%s) - started)) s"
}

for version in "${VERSIONS[@]}"; do
    build_one "$version"
    build_tools "$version"
done
