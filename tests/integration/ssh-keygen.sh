#!/usr/bin/env bash
# OpenSSH reads the module: `ssh-keygen -D` lists the P-256 and RSA public
# keys, and they equal both `keyhold pubkey --format ssh` and the OpenSSH
# conversion of the public keys pkcs11-tool exports. A token that also holds
# secp256k1 and Ed25519 keys must not break the listing (OpenSSH 9.2 skips
# those: README, known consumer limitations).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=4321987
SO=87654321
TOKEN=ssh

say "token init through pkcs11-tool"
p11_init_token "$TOKEN" "$SO" "$PIN"
ok "token '$TOKEN' initialised"
P=(--token-label "$TOKEN" --login --pin "$PIN")

say "key pairs: P-256 (ssh-p256), RSA-2048 (ssh-rsa), secp256k1 and Ed25519 as bystanders"
run p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --id 11 --label ssh-p256 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type rsa:2048 --id 12 --label ssh-rsa --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:secp256k1 --id 13 --label ssh-k1 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:edwards25519 --id 14 --label ssh-ed --usage-sign
ok "4 key pairs generated"

say "ssh-keygen -D lists the keys"
with_module ssh-keygen -D "$KEYHOLD_MODULE" >"$KH_TMP/ssh-D.out" 2>"$KH_TMP/ssh-D.err" || {
    cat "$KH_TMP/ssh-D.err" >&2
    fail "ssh-keygen -D failed"
}
sed 's/^/     | /' "$KH_TMP/ssh-D.out"
# Compare type + base64 blob only (the comment differs between tools). OpenSSH
# 9.2 shows the secp256k1 key as "ssh-unknown" and skips Ed25519: only the
# P-256 and RSA keys are usable through it.
grep -E '^(ecdsa-sha2-nistp256|ssh-rsa) ' "$KH_TMP/ssh-D.out" >"$KH_TMP/ssh-D.usable" || true
awk '{ print $1, $2 }' "$KH_TMP/ssh-D.usable" | sort >"$KH_TMP/ssh-D.keys"
[ "$(grep -c '^ecdsa-sha2-nistp256 ' "$KH_TMP/ssh-D.keys")" -eq 1 ] || fail "ssh-keygen -D: expected exactly one ecdsa-sha2-nistp256 key"
[ "$(grep -c '^ssh-rsa ' "$KH_TMP/ssh-D.keys")" -eq 1 ] || fail "ssh-keygen -D: expected exactly one ssh-rsa key"
ok "ssh-keygen -D lists one P-256 and one RSA key"

say "independent conversion: pkcs11-tool DER public key -> openssl PEM -> ssh-keygen -i"
for id in 11 12; do
    export_pubkey "$TOKEN" "$id" "$PIN" "$KH_TMP/$id.pem" >&2
    ssh-keygen -i -m PKCS8 -f "$KH_TMP/$id.pem" | awk '{ print $1, $2 }'
done | sort >"$KH_TMP/converted.keys"
sed 's/^/     | /' "$KH_TMP/converted.keys"
diff -u "$KH_TMP/converted.keys" "$KH_TMP/ssh-D.keys" || fail "ssh-keygen -D keys differ from the exported public keys"
ok "ssh-keygen -D keys equal the exported public keys"

say "keyhold pubkey --format ssh gives the same keys"
for label in ssh-p256 ssh-rsa; do
    kh pubkey --token "$TOKEN" --label "$label" --format ssh >"$KH_TMP/$label.ssh" 2>"$KH_TMP/$label.err" || {
        cat "$KH_TMP/$label.err" >&2
        fail "keyhold pubkey --format ssh $label failed"
    }
    sed 's/^/     | /' "$KH_TMP/$label.ssh" >&2
    awk '{ print $1, $2 }' "$KH_TMP/$label.ssh"
done | sort >"$KH_TMP/keyhold.keys"
diff -u "$KH_TMP/ssh-D.keys" "$KH_TMP/keyhold.keys" || fail "keyhold pubkey --format ssh differs from ssh-keygen -D"
ok "keyhold pubkey --format ssh equals ssh-keygen -D"

say "ssh-keygen -l fingerprints the listed keys (parses them as OpenSSH keys)"
run ssh-keygen -l -f "$KH_TMP/ssh-D.usable"
ok "fingerprints computed"
