#!/usr/bin/env bash
# Install the OS packages the local stack and the tests need, when missing.
# As root: apt-get installs them. Otherwise: name them and stop.
set -euo pipefail
declare -A package_of=(
  [redis-server]=redis-server [nginx]=nginx [wrk]=wrk [docker]=docker.io
  [docker-compose]=docker-compose [debootstrap]=debootstrap [openssl]=openssl
  [promtool]=prometheus [iptables]=iptables [ip]=iproute2 [unshare]=util-linux
)
missing=()
for binary in "$@"; do
  if ! command -v "$binary" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$binary" ]; then
    missing+=("${package_of[$binary]:-$binary}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "productionlab needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Keep the packages from starting their services (a distribution dockerd would
# take a private range we must not use); ours run under our own supervisor or test.
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  added_policy=1
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
[ "${status:-0}" -eq 0 ] || exit "$status"
for service in redis-server nginx docker containerd prometheus; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
  service "$service" stop >/dev/null 2>&1 || true
done
