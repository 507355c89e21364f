/*
 * signd-methods.c - keyhold-signd's request handling: one frame in, one
 * reply out. Parses {"method", "params"}, picks the key, applies its policy
 * and rate, runs the method through the worker's PKCS#11 session and builds
 * {"result": {...}} or {"error": {"code", "message"}}.
 *
 * Every signature is checked before it leaves: secp256k1 signatures must
 * recover to the key's public key (libsecp256k1), so a wrong key or a
 * corrupted answer from the module becomes signer_error, never a bad
 * signature handed to a client.
 */
#include "signd.h"

#include "keccak.h"
#include "signd-eth.h"

#include <json-c/json.h>
#include <openssl/rand.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest attestation nonce accepted (bytes). */
#define KH_SIGND_NONCE_MAX 64

/* ---- replies ----------------------------------------------------------- */

/* Returns: obj as compact JSON text (malloc'd), or NULL. Drops obj. */
static char *kh_reply_take(struct json_object *obj)
{
    const char *s;
    char *out = NULL;

    if (!obj)
        return NULL;
    s = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (s)
        out = strdup(s);
    json_object_put(obj);
    return out;
}

char *kh_signd_error_reply(const char *code, const char *message)
{
    struct json_object *root = json_object_new_object(), *e = json_object_new_object();

    if (!root || !e) {
        json_object_put(root);
        json_object_put(e);
        return NULL;
    }
    json_object_object_add(e, "code", json_object_new_string(code));
    json_object_object_add(e, "message", json_object_new_string(message));
    json_object_object_add(root, "error", e);
    return kh_reply_take(root);
}

/* A request's outcome while it is handled. */
struct kh_req {
    struct kh_signd_worker *w;
    struct kh_signd_logrec *log;
    struct json_object *params;
    struct json_object *result;    /* filled by a method on success */
    const char *code;              /* error code, NULL on success */
    char message[512];
};

static bool kh_req_fail(struct kh_req *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records an error. Returns: false, so methods can `return kh_req_fail(...)`. */
static bool kh_req_fail(struct kh_req *r, const char *code, const char *fmt, ...)
{
    va_list ap;

    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    return false;
}

static bool kh_req_set(struct kh_req *r, const char *name, struct json_object *v)
{
    if (!v)
        return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
    json_object_object_add(r->result, name, v);
    return true;
}

/* "0x" + hex of len bytes as a JSON string. */
static struct json_object *kh_json_hex(const uint8_t *p, size_t len)
{
    struct json_object *o;
    char *s = malloc(2 * len + 3);

    if (!s)
        return NULL;
    s[0] = '0';
    s[1] = 'x';
    kh_hex_encode(s + 2, 2 * len + 1, p, len);
    o = json_object_new_string(s);
    free(s);
    return o;
}

/* ---- parameters -------------------------------------------------------- */

/* A string member of params, or NULL when absent. Fails on another type. */
static bool kh_param_string(struct kh_req *r, const char *name, const char **out, bool required)
{
    struct json_object *v;

    *out = NULL;
    if (!json_object_object_get_ex(r->params, name, &v) || json_object_is_type(v, json_type_null)) {
        if (required)
            return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s is required", name);
        return true;
    }
    if (!json_object_is_type(v, json_type_string))
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s must be a string", name);
    *out = json_object_get_string(v);
    return true;
}

/* A "0x"-hex member of params of exactly want bytes (want 0: 1..max bytes). */
static bool kh_param_hex(struct kh_req *r, const char *name, uint8_t *out, size_t *len,
                         size_t want, size_t max, bool required)
{
    const char *s;
    uint8_t *b = NULL;
    size_t blen = 0;
    char why[128];

    *len = 0;
    if (!kh_param_string(r, name, &s, required))
        return false;
    if (!s)
        return true;
    if (!kh_eth_parse_hex_data(&b, &blen, want ? want : max, s, why, sizeof why))
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s: %s", name, why);
    if ((want && blen != want) || blen == 0) {
        free(b);
        if (want)
            return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s must be 0x + %zu hex digits",
                               name, 2 * want);
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s is empty", name);
    }
    memcpy(out, b, blen);
    *len = blen;
    free(b);
    return true;
}

/* ---- keys -------------------------------------------------------------- */

/* The key a request names (params.key, a label) or the default key. */
static bool kh_req_key(struct kh_req *r, struct kh_signd_key **out)
{
    struct kh_signd *srv = r->w->srv;
    const char *label;

    *out = NULL;
    if (!kh_param_string(r, "key", &label, false))
        return false;
    if (!label) {
        if (!srv->default_key)
            return kh_req_fail(r, KH_SIGND_E_UNKNOWN_KEY,
                               "no default key: name one with params.key (see 'keys')");
        *out = srv->default_key;
    } else {
        for (size_t i = 0; i < srv->nkeys; i++)
            if (strcmp(srv->keys[i].label, label) == 0)
                *out = &srv->keys[i];
        if (!*out)
            return kh_req_fail(r, KH_SIGND_E_UNKNOWN_KEY, "no such key is served");
    }
    r->log->key = (*out)->label;
    return true;
}

/* Checks that key may be used with method (bit) and takes a rate token. */
static bool kh_req_allowed(struct kh_req *r, struct kh_signd_key *key, uint32_t bit,
                           const char *method)
{
    if (!(key->policy->methods & bit))
        return kh_req_fail(r, KH_SIGND_E_DENIED, "method %s is not allowed for key %s", method,
                           key->label);
    if (!kh_bucket_take(&key->bucket, kh_wire_now_ms()))
        return kh_req_fail(r, KH_SIGND_E_RATE_LIMITED, "key %s: more than %g requests per second",
                           key->label, key->policy->rate);
    return true;
}

static bool kh_req_secp256k1(struct kh_req *r, const struct kh_signd_key *key)
{
    if (!key->has_address)
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "key %s is not a secp256k1 key", key->label);
    return true;
}

/* ---- signing ----------------------------------------------------------- */

static secp256k1_context *kh_secp_ctx;
static pthread_once_t kh_secp_once = PTHREAD_ONCE_INIT;

static void kh_secp_init(void)
{
    uint8_t seed[32];

    kh_secp_ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    /* Randomisation only blinds signing, which never happens here; a
     * failure leaves a working context. */
    if (kh_secp_ctx && RAND_bytes(seed, sizeof seed) == 1 &&
        !secp256k1_context_randomize(kh_secp_ctx, seed))
        kh_signd_log("secp256k1_context_randomize failed");
}

/* Returns: true when r||s with recovery id recid over hash recovers to
 * point (65 bytes, uncompressed). */
static bool kh_recovers_to(const uint8_t rs[64], int recid, const uint8_t hash[32],
                           const uint8_t *point, size_t point_len)
{
    secp256k1_ecdsa_recoverable_signature sig;
    secp256k1_pubkey pk;
    uint8_t out[65];
    size_t outlen = sizeof out;

    if (point_len != 65 ||
        !secp256k1_ecdsa_recoverable_signature_parse_compact(kh_secp_ctx, &sig, rs, recid) ||
        !secp256k1_ecdsa_recover(kh_secp_ctx, &pk, &sig, hash) ||
        !secp256k1_ec_pubkey_serialize(kh_secp_ctx, out, &outlen, &pk, SECP256K1_EC_UNCOMPRESSED))
        return false;
    return outlen == 65 && memcmp(out, point, 65) == 0;
}

/* Runs C_SignInit + C_Sign into out (capacity *len). Ends an operation
 * left active by a failure. */
static CK_RV kh_p11_sign_once(struct kh_signd_worker *w, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
                              const uint8_t *in, size_t inlen, uint8_t *out, CK_ULONG *len)
{
    CK_FUNCTION_LIST *f = w->srv->p11.f;
    CK_RV rv = f->C_SignInit(w->session, mech, key);

    if (rv != CKR_OK)
        return rv;
    rv = f->C_Sign(w->session, (CK_BYTE_PTR)in, (CK_ULONG)inlen, out, len);
    if (rv == CKR_BUFFER_TOO_SMALL)
        (void)f->C_SignInit(w->session, NULL, key);   /* PKCS#11 3.0: terminates the operation */
    return rv;
}

/*
 * Signs a 32-byte hash with a secp256k1 key: r || s || recovery id, low-S.
 * Uses CKM_KH_ECDSA_RECOVERABLE where the module has it, else CKM_ECDSA and
 * finds the recovery id here. Either way the result must recover to the
 * key's public key.
 */
static bool kh_sign_recoverable(struct kh_req *r, const struct kh_signd_key *key,
                                const uint8_t hash[32], uint8_t sig[65])
{
    CK_MECHANISM mech = { key->recoverable_mech ? CKM_KH_ECDSA_RECOVERABLE : CKM_ECDSA, NULL, 0 };
    uint8_t buf[128];
    CK_ULONG len = sizeof buf;
    CK_RV rv;
    secp256k1_ecdsa_signature es;
    int recid = -1;

    pthread_once(&kh_secp_once, kh_secp_init);
    if (!kh_secp_ctx)
        return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
    rv = kh_p11_sign_once(r->w, &mech, key->priv, hash, 32, buf, &len);
    if (rv != CKR_OK)
        return kh_req_fail(r, KH_SIGND_E_SIGNER, "the token refused to sign: %s", kh_rv_name(rv));
    if (len != (key->recoverable_mech ? 65u : 64u))
        return kh_req_fail(r, KH_SIGND_E_SIGNER, "the token returned a %lu-byte signature",
                           (unsigned long)len);
    /* Low-S (the module's recoverable mechanism already is; a foreign
     * module's CKM_ECDSA may not be): s -> n - s flips the recovery id. */
    if (!secp256k1_ecdsa_signature_parse_compact(kh_secp_ctx, &es, buf))
        return kh_req_fail(r, KH_SIGND_E_SIGNER, "the token returned an invalid signature");
    if (secp256k1_ecdsa_signature_normalize(kh_secp_ctx, &es, &es) && key->recoverable_mech)
        return kh_req_fail(r, KH_SIGND_E_SIGNER, "the token returned a high-S signature");
    secp256k1_ecdsa_signature_serialize_compact(kh_secp_ctx, sig, &es);
    if (key->recoverable_mech) {
        if (buf[64] <= 1 && kh_recovers_to(sig, buf[64], hash, key->pub.point, key->pub.point_len))
            recid = buf[64];
    } else {
        for (int i = 0; i < 2 && recid < 0; i++)
            if (kh_recovers_to(sig, i, hash, key->pub.point, key->pub.point_len))
                recid = i;
    }
    if (recid < 0) {
        memset(sig, 0, 65);
        return kh_req_fail(r, KH_SIGND_E_SIGNER,
                           "the token's signature does not recover to key %s", key->label);
    }
    sig[64] = (uint8_t)recid;
    return true;
}

/* ---- methods ----------------------------------------------------------- */

static bool kh_m_address(struct kh_req *r)
{
    struct kh_signd_key *key;

    if (!kh_req_key(r, &key) || !kh_req_allowed(r, key, KH_SIGND_M_ADDRESS, "address") ||
        !kh_req_secp256k1(r, key))
        return false;
    return kh_req_set(r, "address", json_object_new_string(key->address));
}

static bool kh_m_sign_message_defunct(struct kh_req *r)
{
    struct kh_signd_key *key;
    uint8_t msg[32], h[32], sig[65];
    size_t len;

    if (!kh_req_key(r, &key) ||
        !kh_req_allowed(r, key, KH_SIGND_M_SIGN_MESSAGE_DEFUNCT, "sign_message_defunct") ||
        !kh_req_secp256k1(r, key) ||
        !kh_param_hex(r, "message_hash", msg, &len, 32, 32, true))
        return false;
    kh_eth_hash_defunct32(h, msg);
    if (!kh_sign_recoverable(r, key, h, sig))
        return false;
    sig[64] = (uint8_t)(27 + sig[64]);
    return kh_req_set(r, "signature", kh_json_hex(sig, 65));
}

static bool kh_m_sign_transaction(struct kh_req *r)
{
    struct kh_signd_key *key;
    struct json_object *txj;
    struct kh_eth_tx tx;
    uint8_t h[32], sig[65], txhash[32], *raw = NULL;
    size_t rawlen = 0;
    char why[256];
    bool ok = false;

    if (!kh_req_key(r, &key) ||
        !kh_req_allowed(r, key, KH_SIGND_M_SIGN_TRANSACTION, "sign_transaction") ||
        !kh_req_secp256k1(r, key))
        return false;
    if (!json_object_object_get_ex(r->params, "tx", &txj))
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.tx is required");
    if (!kh_eth_tx_from_json(&tx, txj, why, sizeof why)) {
        kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.tx: %s", why);
        goto out;
    }
    if (tx.has_from) {
        char from[43];
        kh_eth_checksum_address(from, tx.from);
        if (strcmp(from, key->address) != 0) {
            kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.tx.from is not the address of key %s",
                        key->label);
            goto out;
        }
    }
    if (!kh_signd_policy_check_tx(key->policy, &tx, why, sizeof why)) {
        kh_req_fail(r, KH_SIGND_E_DENIED, "%s", why);
        goto out;
    }
    if (!kh_eth_tx_signing_hash(h, &tx)) {
        kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.tx is too large to encode");
        goto out;
    }
    if (!kh_sign_recoverable(r, key, h, sig))
        goto out;
    raw = kh_eth_tx_encode_signed(&tx, sig, &rawlen);
    if (!raw) {
        kh_req_fail(r, KH_SIGND_E_INTERNAL, "cannot encode the signed transaction");
        goto out;
    }
    kh_keccak256(txhash, raw, rawlen);
    ok = kh_req_set(r, "raw_tx", kh_json_hex(raw, rawlen)) &&
         kh_req_set(r, "tx_hash", kh_json_hex(txhash, 32));
out:
    free(raw);
    kh_eth_tx_clear(&tx);
    return ok;
}

static bool kh_m_attestation(struct kh_req *r)
{
    struct kh_signd *srv = r->w->srv;
    struct kh_signd_key *key;
    uint8_t nonce[KH_SIGND_NONCE_MAX];
    size_t nonce_len;
    char *doc = NULL, *b64, why[256];

    if (!kh_req_key(r, &key) || !kh_req_allowed(r, key, KH_SIGND_M_ATTESTATION, "attestation") ||
        !kh_param_hex(r, "nonce", nonce, &nonce_len, 0, KH_SIGND_NONCE_MAX, false))
        return false;
    if (!srv->attest)
        return kh_req_fail(r, KH_SIGND_E_UNAVAILABLE,
                           "attestation unavailable: keyhold-signd runs without a TPM "
                           "(see --tpm / \"attestation\" in the configuration)");
    if (nonce_len == 0) {
        nonce_len = 32;
        if (RAND_bytes(nonce, (int)nonce_len) != 1)
            return kh_req_fail(r, KH_SIGND_E_INTERNAL, "no randomness for a nonce");
    }
    if (!kh_signd_attest_quote(srv->attest, key, nonce, nonce_len, &doc, why, sizeof why))
        return kh_req_fail(r, KH_SIGND_E_UNAVAILABLE, "attestation failed: %s", why);
    b64 = kh_base64_encode((const uint8_t *)doc, strlen(doc));
    free(doc);
    if (!b64)
        return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
    if (!kh_req_set(r, "document_b64", json_object_new_string(b64))) {
        free(b64);
        return false;
    }
    free(b64);
    return true;
}

/* The mode status reports: where the default key lives. */
static const char *kh_signd_mode(const struct kh_signd *srv)
{
    const struct kh_signd_key *k = srv->default_key;
    const char *name;

    if (!k)
        return "none";
    if (!k->desc.has_backend)
        return "pkcs11";
    name = kh_p11_backend_name(k->desc.backend);
    return name ? name : "pkcs11";
}

static bool kh_m_status(struct kh_req *r)
{
    struct kh_signd *srv = r->w->srv;
    const struct kh_signd_key *k = srv->default_key;

    /* No default secp256k1 key: "address" is null. */
    json_object_object_add(r->result, "address",
                           k && k->has_address ? json_object_new_string(k->address) : NULL);
    return kh_req_set(r, "mode", json_object_new_string(kh_signd_mode(srv))) &&
           kh_req_set(r, "attestation_available", json_object_new_boolean(srv->attest != NULL)) &&
           kh_req_set(r, "token", json_object_new_string(srv->tok.label)) &&
           kh_req_set(r, "keys", json_object_new_int64((int64_t)srv->nkeys));
}

/* ---- dispatch ---------------------------------------------------------- */

static const struct {
    const char *name;
    bool (*fn)(struct kh_req *r);
} kh_signd_methods[] = {
    { "address", kh_m_address },
    { "sign_message_defunct", kh_m_sign_message_defunct },
    { "sign_transaction", kh_m_sign_transaction },
    { "attestation", kh_m_attestation },
    { "status", kh_m_status },
};

char *kh_signd_handle(struct kh_signd_worker *w, const char *json, size_t len,
                      struct kh_signd_logrec *log)
{
    struct json_tokener *tok = NULL;
    struct json_object *root = NULL, *m, *reply = NULL;
    struct kh_req r;
    const char *method;
    size_t i;
    bool ok = false;

    memset(&r, 0, sizeof r);
    r.w = w;
    r.log = log;
    log->method = "-";
    log->key = "-";
    log->outcome = "ok";

    tok = json_tokener_new();
    if (!tok) {
        kh_req_fail(&r, KH_SIGND_E_INTERNAL, "out of memory");
        goto out;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    if (len > (size_t)INT32_MAX) {
        kh_req_fail(&r, KH_SIGND_E_BAD_REQUEST, "frame too large");
        goto out;
    }
    root = json_tokener_parse_ex(tok, json, (int)len);
    if (!root || json_tokener_get_parse_end(tok) != len) {
        kh_req_fail(&r, KH_SIGND_E_BAD_REQUEST, "the frame is not one JSON object (%s)",
                    root ? "trailing data" : json_tokener_error_desc(json_tokener_get_error(tok)));
        goto out;
    }
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "method", &m) || !json_object_is_type(m, json_type_string)) {
        kh_req_fail(&r, KH_SIGND_E_BAD_REQUEST, "a request is {\"method\": M, \"params\": {...}}");
        goto out;
    }
    method = json_object_get_string(m);
    for (i = 0; i < sizeof kh_signd_methods / sizeof kh_signd_methods[0]; i++)
        if (strcmp(method, kh_signd_methods[i].name) == 0)
            break;
    if (i == sizeof kh_signd_methods / sizeof kh_signd_methods[0]) {
        log->method = "(unknown)";
        kh_req_fail(&r, KH_SIGND_E_UNKNOWN_METHOD, "unknown method");
        goto out;
    }
    log->method = kh_signd_methods[i].name;
    if (!json_object_object_get_ex(root, "params", &r.params) ||
        json_object_is_type(r.params, json_type_null)) {
        r.params = json_object_new_object();
        if (!r.params) {
            kh_req_fail(&r, KH_SIGND_E_INTERNAL, "out of memory");
            goto out;
        }
        json_object_object_add(root, "params", r.params);
    }
    if (!json_object_is_type(r.params, json_type_object)) {
        kh_req_fail(&r, KH_SIGND_E_INVALID_PARAMS, "params must be an object");
        goto out;
    }
    r.result = json_object_new_object();
    if (!r.result) {
        kh_req_fail(&r, KH_SIGND_E_INTERNAL, "out of memory");
        goto out;
    }
    ok = kh_signd_methods[i].fn(&r);
out:
    if (ok) {
        reply = json_object_new_object();
        if (reply) {
            json_object_object_add(reply, "result", r.result);
            r.result = NULL;
        }
    }
    json_object_put(r.result);
    json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    if (reply)
        return kh_reply_take(reply);
    if (!r.code)
        kh_req_fail(&r, KH_SIGND_E_INTERNAL, "out of memory");
    log->outcome = r.code;
    return kh_signd_error_reply(r.code, r.message);
}
