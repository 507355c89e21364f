#!/usr/bin/env bash
# GnuTLS reads the module: `p11tool --provider <module>` lists the token and
# (after login through GNUTLS_PIN) its public and private key objects, exports
# the public keys identically to pkcs11-tool, and signs with the keys
# (--test-sign: GnuTLS signs through the module and verifies itself).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=55443322
SO=99887766
TOKEN=gnutls

say "token init through pkcs11-tool"
p11_init_token "$TOKEN" "$SO" "$PIN"
ok "token '$TOKEN' initialised"
P=(--token-label "$TOKEN" --login --pin "$PIN")
run p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --id 21 --label gt-p256 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type rsa:2048 --id 22 --label gt-rsa --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:secp256k1 --id 23 --label gt-k1 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:edwards25519 --id 24 --label gt-ed --usage-sign
ok "4 key pairs generated"

pt() { with_module p11tool --provider "$KEYHOLD_MODULE" "$@" </dev/null; }

say "p11tool --list-tokens shows the token"
pt --list-tokens >"$KH_TMP/tokens" 2>&1 || { cat "$KH_TMP/tokens" >&2; fail "p11tool --list-tokens failed"; }
sed 's/^/     | /' "$KH_TMP/tokens"
grep -q "token=$TOKEN" "$KH_TMP/tokens" || fail "token '$TOKEN' is not in p11tool --list-tokens"
TURL="$(grep -o "URL: pkcs11:.*token=$TOKEN[^ ]*" "$KH_TMP/tokens" | head -n 1 | sed 's/^URL: //')"
[ -n "$TURL" ] || fail "no URL for token '$TOKEN'"
ok "token listed: $TURL"

say "without login only public objects are listed"
pt --list-all "$TURL" >"$KH_TMP/public" 2>&1 || { cat "$KH_TMP/public" >&2; fail "p11tool --list-all failed"; }
sed 's/^/     | /' "$KH_TMP/public"
npub="$(grep -c 'Type: Public key' "$KH_TMP/public" || true)"
npriv="$(grep -c 'Type: Private key' "$KH_TMP/public" || true)"
[ "$npub" -eq 4 ] || fail "expected 4 public keys without login, got $npub"
[ "$npriv" -eq 0 ] || fail "private keys are visible without login ($npriv)"
ok "4 public keys, no private keys before login"

say "GNUTLS_PIN login: --list-all shows the private keys too"
GNUTLS_PIN="$PIN" pt --login --list-all "$TURL" >"$KH_TMP/all" 2>&1 || { cat "$KH_TMP/all" >&2; fail "p11tool --login --list-all failed"; }
sed 's/^/     | /' "$KH_TMP/all"
npub="$(grep -c 'Type: Public key' "$KH_TMP/all" || true)"
npriv="$(grep -c 'Type: Private key' "$KH_TMP/all" || true)"
[ "$npub" -eq 4 ] || fail "expected 4 public keys after login, got $npub"
[ "$npriv" -eq 4 ] || fail "expected 4 private keys after login, got $npriv"
for l in gt-p256 gt-rsa gt-k1 gt-ed; do
    grep -q "object=$l;" "$KH_TMP/all" || fail "object $l is not listed"
done
ok "4 public + 4 private keys, every label listed"

say "p11tool --export-pubkey equals pkcs11-tool's export"
for l in gt-p256:21 gt-rsa:22; do
    label="${l%%:*}" id="${l##*:}"
    GNUTLS_PIN="$PIN" pt --login --export-pubkey "$TURL;object=$label;type=public" --outfile "$KH_TMP/$label.gnutls.pem" </dev/null >/dev/null 2>&1 ||
        fail "p11tool --export-pubkey $label failed"
    export_pubkey "$TOKEN" "$id" "$PIN" "$KH_TMP/$label.pem"
    a="$(openssl pkey -pubin -in "$KH_TMP/$label.gnutls.pem" -outform DER | sha256sum)"
    b="$(openssl pkey -pubin -in "$KH_TMP/$label.pem" -outform DER | sha256sum)"
    [ "$a" = "$b" ] || fail "$label: p11tool and pkcs11-tool export different public keys"
    ok "$label: same public key from GnuTLS and pkcs11-tool"
done

say "p11tool --test-sign: GnuTLS signs through the module and verifies"
for label in gt-p256 gt-rsa; do
    GNUTLS_PIN="$PIN" pt --login --test-sign "$TURL;object=$label;type=private" >"$KH_TMP/ts" 2>&1 || {
        cat "$KH_TMP/ts" >&2
        fail "p11tool --test-sign $label failed"
    }
    sed 's/^/     | /' "$KH_TMP/ts"
    grep -q '^Signing using .*\.\.\. ok' "$KH_TMP/ts" || fail "p11tool --test-sign $label: signing not reported ok"
    grep -q 'public key in the token\.\.\. ok' "$KH_TMP/ts" || fail "p11tool --test-sign $label: verification not reported ok"
    ok "$label: GnuTLS signature verified"
done
