#!/usr/bin/env bash
# keyhold quickstart: install the dependencies, build, and run the main job on
# the default store (KEYHOLD_STORE, else ~/.local/share/keyhold): create a
# token, generate a P-256 key in it, sign a message through the module with
# pkcs11-tool, and verify the signature with the module and with OpenSSL.
#
# Environment: KEYHOLD_PIN (default 123456), KEYHOLD_SO_PIN (default
# 12345678), KEYHOLD_DEMO_TOKEN (default "demo"). Running it again reuses the
# token and adds a new key.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies (apt-get)"
tools/install-deps.sh

step "building into build/"
[ -f build/build.ninja ] || meson setup build
ninja -C build

module="$root/build/module/keyhold-pkcs11.so"
keyhold="$root/build/tools/keyhold"
[ -f "$module" ] || { echo "quickstart: $module was not built" >&2; exit 1; }
[ -x "$keyhold" ] || { echo "quickstart: $keyhold was not built" >&2; exit 1; }
export KEYHOLD_MODULE="$module"
export KEYHOLD_PIN="${KEYHOLD_PIN:-123456}"
export KEYHOLD_SO_PIN="${KEYHOLD_SO_PIN:-12345678}"
token="${KEYHOLD_DEMO_TOKEN:-demo}"
p11=(pkcs11-tool --module "$module" --token-label "$token" --login --pin "$KEYHOLD_PIN")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "token '$token' in the default store (${KEYHOLD_STORE:-${XDG_DATA_HOME:-$HOME/.local/share}/keyhold})"
if pkcs11-tool --module "$module" -L 2>/dev/null | grep "token label *: $token\$" >/dev/null; then
    echo "token '$token' exists; reusing it"
else
    "$keyhold" init --label "$token"
fi

key="demo-$(date +%Y%m%d-%H%M%S)"
step "generating a P-256 key '$key'"
"$keyhold" keygen --token "$token" --type p256 --label "$key"
"$keyhold" list --token "$token"

# pkcs11-tool selects keys by CKA_ID (not by label): look the id up.
id="$("${p11[@]}" --list-objects --type privkey 2>/dev/null | awk -v l="$key" '
    /^Private Key Object/ { lab = "" }
    /^ *label:/ { sub(/^ *label: */, ""); lab = $0 }
    /^ *ID:/ { if (lab == l) { print $2; exit } }')"
[ -n "$id" ] || { echo "quickstart: key '$key' has no CKA_ID visible to pkcs11-tool" >&2; exit 1; }

step "signing a message through the module (pkcs11-tool, CKM_ECDSA_SHA256, key id $id)"
printf 'hello from keyhold, %s\n' "$(date -u)" >"$work/message.txt"
"${p11[@]}" --sign -m ECDSA-SHA256 --id "$id" \
    -i "$work/message.txt" -o "$work/message.sig"
"${p11[@]}" --sign -m ECDSA-SHA256 --id "$id" --signature-format openssl \
    -i "$work/message.txt" -o "$work/message.der"
echo "signature (r||s): $(xxd -p -c 64 "$work/message.sig")"

step "verifying with the module (C_Verify)"
# pkcs11-tool 0.23 may exit 0 on "Invalid signature": check what it says.
"${p11[@]}" --verify -m ECDSA-SHA256 --id "$id" \
    -i "$work/message.txt" --signature-file "$work/message.sig" | tee "$work/verify.out"
grep '^Signature is valid' "$work/verify.out" >/dev/null ||
    { echo "quickstart: the module did not verify the signature" >&2; exit 1; }

step "verifying with OpenSSL against the public key from 'keyhold pubkey --format pem'"
"$keyhold" pubkey --token "$token" --label "$key" --format pem >"$work/key.pem"
cat "$work/key.pem"
openssl dgst -sha256 -verify "$work/key.pem" -signature "$work/message.der" "$work/message.txt"

step "done: token '$token', key '$key', signature verified twice"
echo "next: '$keyhold --help', or tests/run-all.sh to run every test"
