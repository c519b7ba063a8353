#!/usr/bin/env bash
# Installs everything feedhandler needs on a fresh Debian/Ubuntu machine and builds it in place:
# liblz4 headers, kcat, openssl (certificates of the secured test broker), tshark (the
# independent SoupBinTCP/MoldUDP64 decoder of the conformance tests) and, when missing, a JDK 17+
# and Maven for the Kafka broker from apt; the Python build and test dependencies from PyPI.
# Idempotent: a second run only checks. Needs root (or sudo) for apt-get.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."

apt_packages=(liblz4-dev kcat tshark openssl)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Any JDK 17 or newer will do for the broker and its helper tools (scripts/kafka.sh runs Java
# source files, so a JDK, not only a runtime); only install one when there is
# none, so an operator's own JDK is left alone.
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1 || true)
need_java=false
[ "${java_major:-0}" -ge 17 ] || need_java=true
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ] || $need_java; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    if $need_java; then
        # Debian 12 and Ubuntu 22.04+ have 17; newer releases only a later default.
        if apt-cache show openjdk-17-jdk-headless >/dev/null 2>&1; then
            missing+=(openjdk-17-jdk-headless)
        else
            missing+=(default-jdk-headless)
        fi
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check "setuptools>=77" "Cython>=3.0" "numpy>=2.0"
# --no-build-isolation: build against the numpy just installed instead of a private copy.
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
