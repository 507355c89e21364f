#!/usr/bin/env bash
# `keyhold tpm setup` and `keyhold doctor` on a real swtpm: a fresh TPM has
# no persistent primary (keys go under the SRK-template primary made on
# demand), setup persists exactly that key (so keys made before still load),
# runs twice harmlessly, takes the owner auth from a file, leaves a foreign
# key alone; doctor reports reachability and the primary, and fails when the
# configured TPM is unreachable.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

PIN=246810
SO=13579135
T="$KH_TMP"

swtpm_start
head -c 300 /dev/urandom >"$T/msg"

say "doctor on a fresh TPM: reachable, no primary yet"
run kh doctor
kh doctor >"$T/doc" 2>&1 || true
has -E '^ok +TPM: .*answers' "$T/doc" || fail "doctor does not report the TPM reachable"
has -E '^warn +TPM primary: nothing at 0x81000001' "$T/doc" || fail "doctor does not report the missing primary"
ok "doctor: TPM reachable, primary missing (warning)"

say "a TPM key made before setup (under the SRK-template primary made on demand)"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label t
KEYHOLD_PIN="$PIN" run kh keygen --token t --type p256 --label before --backend tpm --id 01
KEYHOLD_PIN="$PIN" kh pubkey --token t --label before --format pem >"$T/before.pem"
run p11 --token-label t --login --pin "$PIN" --sign --id 01 -m ECDSA-SHA256 -i "$T/msg" -o "$T/b1.sig" --signature-format openssl
run openssl dgst -sha256 -verify "$T/before.pem" -signature "$T/b1.sig" "$T/msg"
ok "key 'before' signs"

say "keyhold tpm setup persists the SRK-template primary at 0x81000001"
run kh tpm setup
tpm2_getcap handles-persistent | has 0x81000001 || fail "nothing persisted at 0x81000001"
attrs="$(tpm2_readpublic -c 0x81000001 | awk '/^attributes:/ { getline; print $2 }')"
echo "     attributes: $attrs"
for a in fixedtpm fixedparent sensitivedataorigin userwithauth noda restricted decrypt; do
    echo "$attrs" | tr '|' '\n' | has -x "$a" || fail "persisted primary lacks '$a'"
done
tpm2_readpublic -c 0x81000001 | has 'NIST p256' || fail "persisted primary is not ECC P-256"
ok "0x81000001: an ECC P-256 storage key with the SRK template's attributes"

say "setup again changes nothing; the key made before still signs (same primary)"
run kh tpm setup
kh tpm setup | has 'already holds the SRK-template primary' || fail "second setup did not recognise its own key"
run p11 --token-label t --login --pin "$PIN" --sign --id 01 -m ECDSA-SHA256 -i "$T/msg" -o "$T/b2.sig" --signature-format openssl
run openssl dgst -sha256 -verify "$T/before.pem" -signature "$T/b2.sig" "$T/msg"
kh doctor >"$T/doc" 2>&1 || true
has -E '^ok +TPM primary: 0x81000001 holds the SRK-template key' "$T/doc" || { cat "$T/doc"; fail "doctor does not see the persisted primary"; }
ok "idempotent; the earlier key loads under the persisted primary; doctor sees it"

say "a foreign key at the handle is left alone"
run tpm2_createprimary -Q -C o -G rsa -c "$T/rsa.ctx"
run tpm2_evictcontrol -Q -C o -c "$T/rsa.ctx" 0x81000003
tpm2_flushcontext -t
if kh tpm setup --handle 0x81000003 >"$T/out" 2>&1; then cat "$T/out"; fail "setup over a foreign key succeeded"; fi
sed 's/^/     | /' "$T/out"
has 'already holds another key' "$T/out" || fail "setup did not explain the foreign key"
ok "foreign key at 0x81000003 kept, exit 1 with a reason"

say "an owner hierarchy with an auth value: refused without it, done with --owner-auth-file"
run tpm2_changeauth -c o ownerpass
printf 'wrong\n' >"$T/bad.auth"
printf 'ownerpass\n' >"$T/owner.auth"
if kh tpm setup --handle 0x81000002 </dev/null >"$T/out" 2>&1; then cat "$T/out"; fail "setup without the owner auth succeeded"; fi
sed 's/^/     | /' "$T/out"
has 'owner-auth-file' "$T/out" || fail "setup did not ask for --owner-auth-file"
if kh tpm setup --handle 0x81000002 --owner-auth-file "$T/bad.auth" >"$T/out" 2>&1; then fail "a wrong owner auth was accepted"; fi
has 'auth value is wrong' "$T/out" || { cat "$T/out"; fail "no clear message for a wrong owner auth"; }
run kh tpm setup --handle 0x81000002 --owner-auth-file "$T/owner.auth"
tpm2_getcap handles-persistent | has 0x81000002 || fail "nothing persisted at 0x81000002"
ok "owner auth from a file; a wrong one is named as such"

say "usage errors"
if kh keygen --token t --type p256 --label x --pcr sha256:7 >"$T/out" 2>&1; then fail "--pcr without --backend tpm accepted"; fi
rc=0; kh keygen --token t --type p256 --label x --pcr sha256:7 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "--pcr without --backend tpm: exit $rc, want 2"
rc=0; kh tpm setup --handle 0x80000001 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "setup --handle 0x80000001: exit $rc, want 2"
rc=0; kh tpm frobnicate >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "keyhold tpm frobnicate: exit $rc, want 2"
ok "bad options exit 2"

say "doctor fails when the configured TPM is unreachable"
rc=0; KEYHOLD_TCTI="swtpm:path=$T/nothing.sock" kh doctor >"$T/doc" 2>&1 || rc=$?
sed 's/^/     | /' "$T/doc" | tail -3
[ "$rc" -eq 1 ] || fail "doctor exit $rc with an unreachable configured TPM, want 1"
has -E '^FAIL +TPM: .*not reachable' "$T/doc" || fail "doctor does not name the unreachable TPM"
ok "doctor: FAIL, exit 1"
