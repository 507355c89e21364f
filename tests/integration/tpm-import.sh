#!/usr/bin/env bash
# The classic TPM workflow becomes token objects: a primary persisted at
# 0x81000001 with tpm2-tools, keys made with tpm2_create (ECC, RSA, one with
# an auth value), then `keyhold import --tpm-pub --tpm-priv` (C_CreateObject
# with CKA_KH_TPM_PUBLIC/PRIVATE); pkcs11-tool signs, and both
# tpm2_verifysignature and openssl verify, with the public key the TPM
# reports (not keyhold's). A key made under another persistent key
# (--tpm-parent) signs in later processes too. Bad or mismatched blobs and a wrong auth value are
# refused precisely and store nothing. (That the private blob and auth value
# are never readable is checked in C by tpm-load.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

PIN=246810
SO=13579135
T="$KH_TMP"

swtpm_start

say "the classic workflow: createprimary, evictcontrol 0x81000001, tpm2_create"
run tpm2_createprimary -Q -C o -G ecc -c "$T/primary.ctx"
run tpm2_evictcontrol -Q -C o -c "$T/primary.ctx" 0x81000001
# Without a resource manager each tool leaves its transient objects loaded;
# the TPM holds three: clean up between steps as the tools' docs advise.
run tpm2_flushcontext -t
run tpm2_create -Q -C 0x81000001 -G ecc -u "$T/key1.pub" -r "$T/key1.priv"
run tpm2_create -Q -C 0x81000001 -G rsa2048 -u "$T/key2.pub" -r "$T/key2.priv"
printf 'key3-secret\n' >"$T/key3.auth"
run tpm2_create -Q -C 0x81000001 -G ecc -p key3-secret -u "$T/key3.pub" -r "$T/key3.priv"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label imp
# Two leftovers of tools fill two of the TPM's three slots: the module must
# cope (it flushes one of them when it needs the room).
run tpm2_createprimary -Q -C o -G ecc -c "$T/left1.ctx"
run tpm2_createprimary -Q -C o -G rsa -c "$T/left2.ctx"
[ "$(tpm2_getcap handles-transient | grep -c 0x80)" -eq 2 ] || fail "expected two leftover transient objects"
ok "three keys under 0x81000001 (one with an auth value); two leftovers loaded"
count_objects() { p11 --token-label imp --login --pin "$PIN" --list-objects 2>/dev/null | grep -cE '^(Private|Public) Key Object' || true; }
id_of() {
    KEYHOLD_PIN="$PIN" kh list --token imp --json |
        jq -r --arg l "$1" '.[] | select(.label == $l and .class == "private") | .id'
}

say "keyhold import --tpm-pub key1.pub --tpm-priv key1.priv"
KEYHOLD_LOG=warn KEYHOLD_PIN="$PIN" kh import --token imp --label key1 --tpm-pub "$T/key1.pub" \
    --tpm-priv "$T/key1.priv" >"$T/import.out" 2>&1 || { cat "$T/import.out"; fail "import of key1 failed"; }
sed 's/^/     | /' "$T/import.out"
has 'flushing transient object' "$T/import.out" || fail "the module did not make room by flushing a leftover"
id1="$(id_of key1)"
[ -n "$id1" ] || fail "key1 is not listed"
b="$(KEYHOLD_PIN="$PIN" kh list --token imp --json | jq -r '.[] | select(.label == "key1" and .class == "private") | .backend')"
[ "$b" = tpm ] || fail "key1 backend is '$b', want tpm"
ok "key1 is a tpm key pair (id $id1); the module flushed a tool leftover to make room"

# tt <tpm2 tool...>: run it, then flush what it left loaded (no resource
# manager: every tool leaves its objects in the TPM's three slots).
tt() {
    local rc=0
    run "$@" || rc=$?
    tpm2_flushcontext -t
    return "$rc"
}
# The TPM's own view of the public key: tpm2_loadexternal of the .pub file.
tpm_pub() {
    tpm2_flushcontext -t
    tt tpm2_loadexternal -Q -C n -u "$T/$1.pub" -c "$T/$1.ext.ctx"
    tt tpm2_readpublic -Q -c "$T/$1.ext.ctx" -f pem -o "$T/$1.tpm.pem"
}

head -c 700 /dev/urandom >"$T/msg"
say "pkcs11-tool signs with key1; tpm2_verifysignature and openssl verify"
run p11 --token-label imp --login --pin "$PIN" --sign --id "$id1" -m ECDSA-SHA256 -i "$T/msg" \
    -o "$T/key1.sig" --signature-format openssl
tpm_pub key1
tt tpm2_verifysignature -c "$T/key1.ext.ctx" -g sha256 -m "$T/msg" -f ecdsa -s "$T/key1.sig"
run openssl dgst -sha256 -verify "$T/key1.tpm.pem" -signature "$T/key1.sig" "$T/msg"
flip_byte "$T/msg" "$T/msg.bad" 3
out="$(tpm2_verifysignature -c "$T/key1.ext.ctx" -g sha256 -m "$T/msg.bad" -f ecdsa -s "$T/key1.sig" 2>&1 || true)"
tpm2_flushcontext -t
echo "$out" | sed 's/^/     | /'
echo "$out" | has -i 'signature' || fail "tpm2_verifysignature did not reject the modified message as a bad signature"
KEYHOLD_PIN="$PIN" kh pubkey --token imp --label key1 --format pem >"$T/key1.kh.pem"
cmp "$T/key1.kh.pem" "$T/key1.tpm.pem" || fail "keyhold's public key of key1 differs from the TPM's"
run tpm2_flushcontext -t
ok "TPM and OpenSSL verify; keyhold reports the TPM's public key; a modified message fails"

say "RSA: key2 signs SHA256-RSA-PKCS and RSA-PKCS-PSS"
KEYHOLD_PIN="$PIN" run kh import --token imp --label key2 --tpm-pub "$T/key2.pub" --tpm-priv "$T/key2.priv" --id 02
run p11 --token-label imp --login --pin "$PIN" --sign --id 02 -m SHA256-RSA-PKCS -i "$T/msg" -o "$T/key2.sig"
run p11 --token-label imp --login --pin "$PIN" --sign --id 02 -m SHA256-RSA-PKCS-PSS --mgf MGF1-SHA256 \
    -i "$T/msg" -o "$T/key2.pss"
tpm_pub key2
tt tpm2_verifysignature -c "$T/key2.ext.ctx" -g sha256 -m "$T/msg" -f rsassa -s "$T/key2.sig"
tt tpm2_verifysignature -c "$T/key2.ext.ctx" -g sha256 -m "$T/msg" -f rsapss -s "$T/key2.pss"
run openssl dgst -sha256 -verify "$T/key2.tpm.pem" -signature "$T/key2.sig" "$T/msg"
run openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -verify "$T/key2.tpm.pem" \
    -signature "$T/key2.pss" "$T/msg"
run tpm2_flushcontext -t
ok "RSA PKCS#1 v1.5 and PSS signatures verify with tpm2_verifysignature and openssl"

say "a key with an auth value: refused without it, adopted with --tpm-auth-file"
before="$(count_objects)"
out="$(KEYHOLD_PIN="$PIN" kh import --token imp --label key3 --tpm-pub "$T/key3.pub" --tpm-priv "$T/key3.priv" 2>&1 || true)"
echo "$out" | sed 's/^/     | /'
echo "$out" | has CKR_ATTRIBUTE_VALUE_INVALID || fail "key3 without its auth: expected CKR_ATTRIBUTE_VALUE_INVALID"
[ "$(count_objects)" -eq "$before" ] || fail "a refused import stored objects"
run tpm2_dictionarylockout -Q -c  # the wrong attempt counted against the TPM's lockout: reset it
KEYHOLD_PIN="$PIN" run kh import --token imp --label key3 --tpm-pub "$T/key3.pub" --tpm-priv "$T/key3.priv" \
    --tpm-auth-file "$T/key3.auth" --id 03
run p11 --token-label imp --login --pin "$PIN" --sign --id 03 -m ECDSA-SHA256 -i "$T/msg" -o "$T/key3.sig" \
    --signature-format openssl
tpm_pub key3
run openssl dgst -sha256 -verify "$T/key3.tpm.pem" -signature "$T/key3.sig" "$T/msg"
run tpm2_flushcontext -t
ok "key3 refused without its auth (nothing stored), signs once adopted with it"

say "bad blobs are refused and store nothing"
before="$(count_objects)"
head -c 40 "$T/key1.pub" >"$T/short.pub"
must_fail kh import --token imp --label bad1 --tpm-pub "$T/short.pub" --tpm-priv "$T/key1.priv" --pin-file <(echo "$PIN")
out="$(KEYHOLD_PIN="$PIN" kh import --token imp --label bad2 --tpm-pub "$T/key1.pub" --tpm-priv "$T/key3.priv" 2>&1 || true)"
echo "$out" | sed 's/^/     | /'
echo "$out" | has CKR_ATTRIBUTE_VALUE_INVALID || fail "swapped private blob: expected CKR_ATTRIBUTE_VALUE_INVALID"
out="$(KEYHOLD_PIN="$PIN" kh import --token imp --label bad3 --tpm-pub "$T/key1.pub" --tpm-priv "$T/key1.priv" --tpm-parent 0x81000002 2>&1 || true)"
echo "$out" | has CKR_ATTRIBUTE_VALUE_INVALID || fail "no parent at 0x81000002: expected CKR_ATTRIBUTE_VALUE_INVALID"
[ "$(count_objects)" -eq "$before" ] || fail "bad imports stored objects"
ok "truncated public blob, mismatched private blob, missing parent: refused, nothing stored"

say "a key under a persistent parent other than tpm_primary (--tpm-parent) signs in a later process"
run tpm2_createprimary -Q -C o -G rsa -c "$T/p3.ctx"
run tpm2_evictcontrol -Q -C o -c "$T/p3.ctx" 0x81000003
run tpm2_flushcontext -t
run tpm2_create -Q -C 0x81000003 -G ecc -u "$T/key4.pub" -r "$T/key4.priv"
run tpm2_flushcontext -t
KEYHOLD_PIN="$PIN" run kh import --token imp --label key4 --tpm-pub "$T/key4.pub" --tpm-priv "$T/key4.priv" \
    --tpm-parent 0x81000003 --id 04
run p11 --token-label imp --login --pin "$PIN" --sign --id 04 -m ECDSA-SHA256 -i "$T/msg" -o "$T/key4.sig" \
    --signature-format openssl
tpm_pub key4
run openssl dgst -sha256 -verify "$T/key4.tpm.pem" -signature "$T/key4.sig" "$T/msg"
run tpm2_flushcontext -t
ok "key4 (parent 0x81000003) signs in a new process, which finds its parent by Name"

say "the module flushed what it loaded; one tool leftover may remain"
n="$(tpm2_getcap handles-transient | grep -c 0x80 || true)"
[ "$n" -le 2 ] || fail "$n transient objects loaded"
ok "$n transient objects loaded"
