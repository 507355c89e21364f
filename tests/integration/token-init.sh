#!/usr/bin/env bash
# Token life cycle through pkcs11-tool and the keyhold CLI: the free slot,
# C_InitToken / C_InitPIN, a token made by `keyhold init`, wrong PINs, PIN
# change, login-only visibility of private objects, isolation between tokens,
# persistence across processes, re-initialisation destroying the objects,
# and the store's file permissions.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SO=10203040
PIN=556677
PIN2=998877

# slot_of <label>: slot id (0x...) of the token with that label.
slot_of() {
    p11 -L 2>/dev/null | awk -v l="$1" '
        /^Slot [0-9]+ \(0x[0-9a-fA-F]+\)/ { match($0, /\(0x[0-9a-fA-F]+\)/); slot = substr($0, RSTART + 1, RLENGTH - 2) }
        /token label *:/ { sub(/^ *token label *: */, ""); if ($0 == l) { print slot; exit } }'
}
# flags_of <label>: the "token flags" line of that token.
flags_of() {
    p11 -L 2>/dev/null | awk -v l="$1" '
        /^Slot / { lab = "" }
        /token label *:/ { sub(/^ *token label *: */, ""); lab = $0 }
        /token flags *:/ { if (lab == l) { print; exit } }'
}
count_uninit() { p11 -L 2>/dev/null | grep -c 'token state: *uninitialized' || true; }
# count_objects <label> [pkcs11-tool args...]: key objects listed on that
# token; a listing that fails (wrong PIN, no such token) fails the test
# rather than counting as none.
count_objects() {
    local out
    out="$(p11 --token-label "$1" "${@:2}" --list-objects 2>&1)" ||
        { printf '%s\n' "$out" >&2; fail "pkcs11-tool --list-objects on token $1 failed"; }
    printf '%s\n' "$out" | grep -cE '^(Private|Public) Key Object' || true
}

say "an empty store offers exactly one free (uninitialised) slot"
run p11 -L
[ "$(count_uninit)" -eq 1 ] || fail "expected one uninitialised slot, got $(count_uninit)"
ok "one free slot"

say "token alpha: pkcs11-tool --init-token, --init-pin"
p11_init_token alpha "$SO" "$PIN"
run p11 -L
[ -n "$(slot_of alpha)" ] || fail "token alpha is not listed"
flags="$(flags_of alpha)"
echo "     $flags"
for f in 'token initialized' 'PIN initialized' 'login required'; do
    echo "$flags" | has "$f" || fail "token alpha lacks flag '$f'"
done
[ "$(count_uninit)" -eq 1 ] || fail "after C_InitToken there must again be one free slot, got $(count_uninit)"
ok "alpha initialised, flags right, a new free slot appeared"

say "token beta: keyhold init"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label beta
[ -n "$(slot_of beta)" ] || fail "token beta (keyhold init) is not listed by pkcs11-tool"
echo "$(flags_of beta)" | has 'PIN initialized' || fail "keyhold init did not set the user PIN"
[ "$(count_uninit)" -eq 1 ] || fail "expected one free slot after keyhold init, got $(count_uninit)"
ok "beta initialised by the CLI, visible to pkcs11-tool"

say "keys on alpha; a new process sees them; beta does not"
run p11 --token-label alpha --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id a1 --label alpha-key
n="$(count_objects alpha --login --pin "$PIN")"
[ "$n" -eq 2 ] || fail "alpha: expected 2 key objects, got $n"
n="$(count_objects beta --login --pin "$PIN")"
[ "$n" -eq 0 ] || fail "beta sees $n of alpha's objects"
ok "objects persist across processes and stay in their token"

say "without login only the public key is visible"
run p11 --token-label alpha --list-objects
p11 --token-label alpha --list-objects 2>/dev/null | has '^Private Key Object' &&
    fail "a private key is visible without login"
p11 --token-label alpha --list-objects 2>/dev/null | has '^Public Key Object' ||
    fail "the public key is not visible without login"
ok "private objects need a login"

say "a wrong user PIN is refused"
must_fail p11 --token-label alpha --login --pin 000000 --list-objects
grep -q 'CKR_PIN_INCORRECT' "$KH_TMP/must_fail.out" || fail "wrong PIN: expected CKR_PIN_INCORRECT"
ok "CKR_PIN_INCORRECT"

say "C_SetPIN: change the user PIN; the old one stops working"
run p11 --token-label alpha --login --pin "$PIN" --change-pin --new-pin "$PIN2"
must_fail p11 --token-label alpha --login --pin "$PIN" --list-objects
n="$(count_objects alpha --login --pin "$PIN2")"
[ "$n" -eq 2 ] || fail "after the PIN change the keys are not usable with the new PIN ($n objects)"
ok "new PIN works, old PIN refused, keys intact"

say "the keys still sign after the PIN change (token key rewrapped, not replaced)"
head -c 32 /dev/urandom >"$KH_TMP/digest"
run p11 --token-label alpha --login --pin "$PIN2" --sign --id a1 -m ECDSA -i "$KH_TMP/digest" -o "$KH_TMP/sig"
run p11 --token-label alpha --login --pin "$PIN2" --verify --id a1 -m ECDSA -i "$KH_TMP/digest" --signature-file "$KH_TMP/sig"
ok "signature after PIN change verifies"

say "C_InitPIN with a wrong SO PIN is refused"
must_fail p11 --token-label alpha --init-pin --login --so-pin 11111111 --pin 123123
ok "wrong SO PIN refused"

say "re-initialising alpha needs the SO PIN and destroys its objects"
slot="$(slot_of alpha)"
must_fail p11 --slot "$slot" --init-token --label alpha --so-pin 11111111
n="$(count_objects alpha --login --pin "$PIN2")"
[ "$n" -eq 2 ] || fail "a refused re-initialisation changed the token ($n objects)"
run p11 --slot "$slot" --init-token --label alpha2 --so-pin "$SO"
run p11 --token-label alpha2 --init-pin --login --so-pin "$SO" --pin "$PIN"
n="$(count_objects alpha2 --login --pin "$PIN")"
[ "$n" -eq 0 ] || fail "re-initialised token still holds $n objects"
[ -z "$(slot_of alpha)" ] || fail "the old label is still listed"
ok "re-initialised: label alpha2, no objects"

say "the store's files are private to the owner"
ls -la "$KEYHOLD_STORE"
[ -n "$(find "$KEYHOLD_STORE" -type f)" ] || fail "the store directory holds no file"
bad="$(find "$KEYHOLD_STORE" -type f -perm /077)"
[ -z "$bad" ] || fail "store files readable by group/others: $bad"
bad="$(find "$KEYHOLD_STORE" -type d -perm /077)"
[ -z "$bad" ] || fail "store directories open to group/others: $bad"
ok "no store file or directory is open to group or others"
