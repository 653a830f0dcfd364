#!/usr/bin/env bash
# Installs what building, running and testing Sprites needs on Debian 12, idempotently.
# Run as root. Rust comes from the machine's toolchain (rustup); it is not installed here.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (sprites need namespaces, cgroups and loop mounts)" >&2
    exit 1
fi

need=()
for pkg in debootstrap e2fsprogs xfsprogs util-linux mount iproute2 nftables curl ca-certificates python3 python3-venv python3-pip tmux qemu-system-x86 cpio redis-tools lxcfs chromium gnome-keyring dbus-daemon; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && export PATH="$d:$PATH" && break
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain (1.85 or newer)" >&2
    exit 1
fi

# The vhost-user vsock device microVM sprites talk to their agent through (`--backend
# microvm`); Debian 12 does not package it. Built once, a couple of minutes.
if ! command -v vhost-device-vsock >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/vhost-device-vsock" ]; then
    echo "installing vhost-device-vsock (for microVM sprites)"
    cargo install vhost-device-vsock@0.3.0 --locked --quiet
fi
