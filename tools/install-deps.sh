#!/usr/bin/env bash
# Install every Debian 12 package keyhold needs to build, test and demo.
# Runs apt-get update first; uses sudo when not root. Non-interactive.
set -euo pipefail

packages=(
    # build
    meson ninja-build pkg-config gcc clang libclang-rt-14-dev
    libssl-dev libsecp256k1-dev libsqlite3-dev libp11-kit-dev libtss2-dev libjson-c-dev
    libsodium-dev
    # consumers driven by the integration tests
    opensc gnutls-bin libengine-pkcs11-openssl openssh-client openssl p11-kit
    # TPM simulator and tools; a resource manager (tpm-rm test) on a private D-Bus bus
    swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus-daemon
    # other PKCS#11 modules compared against (keyhold-bench, tests/perf/tpm-compare.sh;
    # tpm2_ptool sets up tpm2-pkcs11)
    softhsm2 libtpm2-pkcs11-1 libtpm2-pkcs11-tools
    # independent verifiers and helpers
    xxd jq ca-certificates
)
# Node.js runs the independent JS verifiers. Debian ships npm as its own
# package; a nodesource nodejs bundles npm and conflicts with Debian's, so
# only ask for what is missing.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-deps: not root and no sudo; cannot install packages" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update"
"${sudo[@]}" apt-get update -q
echo "install-deps: installing ${#packages[@]} packages"
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" </dev/null
echo "install-deps: done"
