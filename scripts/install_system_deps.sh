#!/usr/bin/env bash
# Installs the Debian packages that the tests and the make targets call, and nothing else.
#
# The one list of system packages (`make setup` and the CI both run this script):
#   dataset-fashion-mnist    the in-distribution data (/usr/share/datasets/fashion-mnist)
#   prometheus               prometheus + promtool: alert-rule tests, make deploy-check
#   prometheus-alertmanager  amtool: make deploy-check, the Alertmanager config test
#   docker-compose           offline validation of docker-compose.yml (no engine needed)
#   procps                   pgrep: the tests check that no TorchServe java process is left
#   openjdk-17-jre-headless  TorchServe's frontend, only when no java is on PATH
#
# Idempotent: asks dpkg-query first and returns at once (no apt-get update) when everything is
# installed.  Installs with apt-get as root, through sudo otherwise; without either it prints
# the commands to run and exits 1.  Usage: scripts/install_system_deps.sh [--check]
#   --check   only report what is missing (exit 1 if anything is)
set -euo pipefail

packages=(dataset-fashion-mnist prometheus prometheus-alertmanager docker-compose procps)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install_system_deps: not a Debian/Ubuntu system (no dpkg-query)." >&2
    echo "Install the equivalents of these Debian packages by hand: ${packages[*]}" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

commands=("apt-get update -qq" "apt-get install -y -qq --no-install-recommends ${missing[*]}")
if [ "${1:-}" = "--check" ]; then
    echo "install_system_deps: missing Debian packages: ${missing[*]}" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    runner=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    runner=(sudo)
else
    echo "install_system_deps: missing Debian packages: ${missing[*]}" >&2
    echo "Not root and no password-less sudo; run these as root, then rerun make setup:" >&2
    for command in "${commands[@]}"; do echo "    sudo $command" >&2; done
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
for command in "${commands[@]}"; do
    # shellcheck disable=SC2086  # each command is a plain word list
    "${runner[@]}" env DEBIAN_FRONTEND=noninteractive $command >/dev/null
done
