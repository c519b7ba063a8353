#!/usr/bin/env bash
# Installs everything feedhandler needs on a fresh Debian/Ubuntu machine and builds it in place:
# liblz4 headers, kcat and openssl (certificates of the secured test broker) from apt, the
# Python build and test dependencies from PyPI.
# Idempotent: a second run only checks. Needs root (or sudo) for apt-get.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."

apt_packages=(liblz4-dev kcat openssl)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check "setuptools>=68" "Cython>=3.0" "numpy>=2.0"
# --no-build-isolation: build against the numpy just installed instead of a private copy.
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
