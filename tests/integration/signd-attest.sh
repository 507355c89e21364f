#!/usr/bin/env bash
# keyhold-signd's attestation with a real TPM simulator (swtpm, started here
# on a free port pair and stopped at the end):
#  - status says attestation is available;
#  - the document's quote, signature and PCR file pass tpm2_checkquote
#    (tpm2-tools) with the attestation key's PEM and the qualifying data
#    recomputed here: SHA-256("keyhold-signd attestation v1" || nonce ||
#    public key), the public key being the one `keyhold pubkey` shows;
#  - another nonce, a flipped quote byte or an altered PCR value fail it;
#  - without a nonce the server picks one; a nonce over 64 bytes is refused;
#  - after a restart (and a PCR extended in between) the attestation key is
#    the same and the quote shows the new PCR value.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/signd-lib.sh"

export KEYHOLD_SO_PIN=24682468 KEYHOLD_PIN=13571357
TOKEN=attest
LABEL="keyhold-signd attestation v1"

command -v swtpm >/dev/null || fail "swtpm is not installed (tools/install-deps.sh)"
command -v tpm2_checkquote >/dev/null || fail "tpm2-tools is not installed (tools/install-deps.sh)"

# listening <port>: true when something listens on 127.0.0.1:<port> (or any address).
listening() {
    local hex
    hex="$(printf ':%04X ' "$1")"
    grep -q "$hex.* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

say "JS client installed (npm ci)"
js_setup
ok "node $(node --version)"

say "swtpm on a free port pair"
mkdir -p "$KH_TMP/tpm"
SWTPM_PORT=""
for try in $(seq 1 20); do
    port=$(( (RANDOM % 15000) * 2 + 20000 ))
    listening "$port" || listening "$((port + 1))" && continue
    swtpm socket --tpmstate dir="$KH_TMP/tpm" --tpm2 \
        --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port="$((port + 1))",bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear >"$KH_TMP/swtpm.log" 2>&1 &
    SIGND_PID[swtpm]=$!
    for i in $(seq 1 50); do
        listening "$port" && break
        kill -0 "${SIGND_PID[swtpm]}" 2>/dev/null || break
        sleep 0.1
    done
    if listening "$port" && kill -0 "${SIGND_PID[swtpm]}" 2>/dev/null; then
        SWTPM_PORT="$port"
        break
    fi
    kill -9 "${SIGND_PID[swtpm]}" 2>/dev/null || true
    unset "SIGND_PID[swtpm]"
done
[ -n "$SWTPM_PORT" ] || { cat "$KH_TMP/swtpm.log" >&2; fail "swtpm did not start on any port"; }
TCTI="swtpm:host=127.0.0.1,port=$SWTPM_PORT"
ok "swtpm listening on $SWTPM_PORT (TCTI $TCTI)"

say "a token with a secp256k1 key"
run kh init --label "$TOKEN"
run kh keygen --token "$TOKEN" --type secp256k1 --label signer
pub="$(kh pubkey --token "$TOKEN" --label signer --format hex)"
addr="$(kh pubkey --token "$TOKEN" --label signer --format eth)"
ok "key $addr"

say "keyhold-signd with the TPM"
signd_start tpm --listen "unix:$KH_TMP/signd.sock" --token "$TOKEN" --tpm "$TCTI" --pcrs sha256:0,1,2,3,7,10
URL="${SIGND_URL[tpm]}"
out="$(sjs call "$URL" '[{"method":"status"}]')"
echo "     $out"
[ "$(printf '%s' "$out" | jq -r .result.attestation_available)" = true ] || fail "status: attestation not available"
ok "attestation_available: true"

# attest <nonce-hex or ""> <dir>: asks for a document and unpacks it into dir.
attest() {
    local nonce="$1" dir="$2" req
    mkdir -p "$dir"
    if [ -n "$nonce" ]; then
        req="[{\"method\":\"attestation\",\"params\":{\"nonce\":\"$nonce\"}}]"
    else
        req='[{"method":"attestation"}]'
    fi
    sjs call "$URL" "$req" >"$dir/reply.json"
    jq -er .result.document_b64 "$dir/reply.json" >/dev/null || { cat "$dir/reply.json" >&2; fail "no document"; }
    jq -r .result.document_b64 "$dir/reply.json" | base64 -d >"$dir/doc.json"
    jq -r .quote_b64 "$dir/doc.json" | base64 -d >"$dir/quote.bin"
    jq -r .signature_b64 "$dir/doc.json" | base64 -d >"$dir/sig.bin"
    jq -r .pcrs_b64 "$dir/doc.json" | base64 -d >"$dir/pcrs.bin"
    jq -r .ak_public_pem "$dir/doc.json" >"$dir/ak.pem"
}

# qualification <nonce-hex>: the qualifying data, computed here.
qualification() {
    { printf '%s' "$LABEL"; printf '%s' "$1" | fromhex; printf '%s' "$pub" | fromhex; } | sha256sum | cut -c1-64
}

say "an attestation document checks out with tpm2_checkquote"
nonce="$(head -c 24 /dev/urandom | xxd -p -c 64)"
attest "$nonce" "$KH_TMP/a1"
jq '{format, key, key_type, address, pcr_bank, pcrs, nonce, qualifying_data}' "$KH_TMP/a1/doc.json" | sed 's/^/     | /'
[ "$(jq -r .public_key "$KH_TMP/a1/doc.json")" = "$pub" ] || fail "the document's public key is not the key's"
[ "$(jq -r .address "$KH_TMP/a1/doc.json")" = "$addr" ] || fail "the document's address is not the key's"
[ "$(jq -r .nonce "$KH_TMP/a1/doc.json")" = "$nonce" ] || fail "the document's nonce is not ours"
q="$(qualification "$nonce")"
[ "$(jq -r .qualifying_data "$KH_TMP/a1/doc.json")" = "$q" ] || fail "qualifying_data differs from SHA-256(label || nonce || public key)"
run tpm2_checkquote -u "$KH_TMP/a1/ak.pem" -m "$KH_TMP/a1/quote.bin" -s "$KH_TMP/a1/sig.bin" \
    -f "$KH_TMP/a1/pcrs.bin" -g sha256 -q "$q"
ok "tpm2_checkquote: signature, nonce binding and PCR digest verified"

say "tampering fails tpm2_checkquote"
must_fail tpm2_checkquote -u "$KH_TMP/a1/ak.pem" -m "$KH_TMP/a1/quote.bin" -s "$KH_TMP/a1/sig.bin" \
    -f "$KH_TMP/a1/pcrs.bin" -g sha256 -q "$(qualification "00$nonce")"
flip_byte "$KH_TMP/a1/quote.bin" "$KH_TMP/a1/quote.bad" 40
must_fail tpm2_checkquote -u "$KH_TMP/a1/ak.pem" -m "$KH_TMP/a1/quote.bad" -s "$KH_TMP/a1/sig.bin" \
    -f "$KH_TMP/a1/pcrs.bin" -g sha256 -q "$q"
# The PCR file is TPML_PCR_SELECTION (132 bytes), a UINT32 count, then
# TPML_DIGEST {UINT32 count; {UINT16 size; BYTE buffer[64]} digests[8]}:
# the first PCR value starts at 132 + 4 + 4 + 2 = 142.
flip_byte "$KH_TMP/a1/pcrs.bin" "$KH_TMP/a1/pcrs.bad" 147
must_fail tpm2_checkquote -u "$KH_TMP/a1/ak.pem" -m "$KH_TMP/a1/quote.bin" -s "$KH_TMP/a1/sig.bin" \
    -f "$KH_TMP/a1/pcrs.bad" -g sha256 -q "$q"
ok "another nonce, a flipped quote byte and an altered PCR value are all rejected"

say "no nonce: the server picks 32 bytes; a nonce over 64 bytes is refused"
attest "" "$KH_TMP/a2"
n2="$(jq -r .nonce "$KH_TMP/a2/doc.json")"
[ "${#n2}" -eq 64 ] || fail "server nonce is not 32 bytes: $n2"
run tpm2_checkquote -u "$KH_TMP/a2/ak.pem" -m "$KH_TMP/a2/quote.bin" -s "$KH_TMP/a2/sig.bin" \
    -f "$KH_TMP/a2/pcrs.bin" -g sha256 -q "$(qualification "$n2")"
out="$(sjs call "$URL" "[{\"method\":\"attestation\",\"params\":{\"nonce\":\"$(printf '00%.0s' {1..65})\"}}]")"
[ "$(printf '%s' "$out" | jq -r .error.code)" = -32602 ] || fail "a 65-byte nonce: $out"
ok "server nonce verified; long nonce refused"

say "restart with PCR 10 extended in between: same attestation key, new PCR value"
signd_stop tpm
TPM2TOOLS_TCTI="$TCTI" run tpm2_pcrextend 10:sha256=$(printf 'keyhold' | sha256sum | cut -c1-64)
signd_start tpm --listen "unix:$KH_TMP/signd.sock" --token "$TOKEN" --tpm "$TCTI" --pcrs sha256:0,1,2,3,7,10
URL="${SIGND_URL[tpm]}"
nonce="$(head -c 16 /dev/urandom | xxd -p -c 64)"
attest "$nonce" "$KH_TMP/a3"
cmp -s "$KH_TMP/a1/ak.pem" "$KH_TMP/a3/ak.pem" || fail "the attestation key changed across a restart"
pcr10="$(jq -r '.pcrs["10"]' "$KH_TMP/a3/doc.json")"
[ "$pcr10" != "$(jq -r '.pcrs["10"]' "$KH_TMP/a1/doc.json")" ] || fail "PCR 10 did not change in the quote"
run tpm2_checkquote -u "$KH_TMP/a3/ak.pem" -m "$KH_TMP/a3/quote.bin" -s "$KH_TMP/a3/sig.bin" \
    -f "$KH_TMP/a3/pcrs.bin" -g sha256 -q "$(qualification "$nonce")"
signd_stop tpm
ok "AK stable, PCR 10 = $pcr10, quote verified"

say "a TPM that is not there: start fails with a clear message"
kill "${SIGND_PID[swtpm]}"
wait "${SIGND_PID[swtpm]}" 2>/dev/null || true
unset "SIGND_PID[swtpm]"
must_fail timeout 60 "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/x.sock" --token "$TOKEN" --tpm "$TCTI"
ok "refused"
