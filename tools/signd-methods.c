/*
 * signd-methods.c - keyhold-signd's request handling: one frame in, one
 * reply out. Parses {"method", "params", "id"}, picks the key, applies its
 * policy and rate, runs the method through the worker's PKCS#11 session and
 * builds {"result": {...}} or {"error": {"code", "message"}}, with the
 * request's "id" copied (README: "The signer protocol").
 *
 * Methods: keys, public_key, sign (for keyhold's remote backend), and
 * address, sign_message_defunct, sign_transaction, attestation, status (the
 * enclave-signer protocol). Signatures are checked before they leave
 * (signd-sign.c).
 */
#include "signd.h"

#include "keccak.h"
#include "signd-eth.h"

#include <json-c/json.h>
#include <openssl/rand.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest attestation nonce accepted (bytes). */
#define KH_SIGND_NONCE_MAX 64

/* ---- replies ----------------------------------------------------------- */

const char *kh_signd_err_name(int code)
{
    switch (code) {
    case KH_SIGND_E_PARSE_ERROR: return "parse_error";
    case KH_SIGND_E_INVALID_REQUEST: return "invalid_request";
    case KH_SIGND_E_METHOD_NOT_FOUND: return "method_not_found";
    case KH_SIGND_E_INVALID_PARAMS: return "invalid_params";
    case KH_SIGND_E_UNKNOWN_KEY: return "unknown_key";
    case KH_SIGND_E_DENIED: return "denied";
    case KH_SIGND_E_RATE_LIMITED: return "rate_limited";
    case KH_SIGND_E_UNSUPPORTED: return "unsupported";
    case KH_SIGND_E_UNAVAILABLE: return "unavailable";
    case KH_SIGND_E_INTERNAL: return "internal";
    default: return "error";
    }
}

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

/* {"error": {...}} with the request's id (a new reference is taken). */
static struct json_object *kh_error_obj(int code, const char *detail, struct json_object *id)
{
    struct json_object *root = json_object_new_object(), *e = json_object_new_object();
    char msg[640];

    if (!root || !e) {
        json_object_put(root);
        json_object_put(e);
        return NULL;
    }
    snprintf(msg, sizeof msg, "%s: %s", kh_signd_err_name(code), detail);
    json_object_object_add(e, "code", json_object_new_int(code));
    json_object_object_add(e, "message", json_object_new_string(msg));
    json_object_object_add(root, "error", e);
    if (id)
        json_object_object_add(root, "id", json_object_get(id));
    return root;
}

char *kh_signd_error_reply(int code, const char *detail)
{
    return kh_reply_take(kh_error_obj(code, detail, NULL));
}

/* A request while it is handled. */
struct kh_req {
    struct kh_signd_worker *w;
    struct kh_signd_logrec *log;
    struct json_object *params;
    struct json_object *result;    /* filled by a method on success */
    int code;                      /* error code; 0 on success */
    char message[512];
};

static bool kh_req_fail(struct kh_req *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records an error. Returns: false, so methods can `return kh_req_fail(...)`. */
static bool kh_req_fail(struct kh_req *r, int code, const char *fmt, ...)
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

/* Hex of len bytes as a JSON string, with a "0x" prefix when prefix. */
static struct json_object *kh_json_hex(const uint8_t *p, size_t len, bool prefix)
{
    struct json_object *o;
    char *s = malloc(2 * len + 3);
    size_t off = prefix ? 2 : 0;

    if (!s)
        return NULL;
    s[0] = '0';
    s[1] = 'x';
    kh_hex_encode(s + off, 2 * len + 1, p, len);
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

/*
 * A binary member of params: name as hex (either case, optional 0x) or
 * name_b64 as base64, not both; between min and max bytes.
 * Out: out: malloc'd (NULL when absent; free()); len.
 */
static bool kh_param_bin(struct kh_req *r, const char *name, uint8_t **out, size_t *len,
                         size_t min, size_t max, bool required)
{
    char b64name[64];
    const char *hex, *b64;
    size_t n;

    *out = NULL;
    *len = 0;
    snprintf(b64name, sizeof b64name, "%s_b64", name);
    if (!kh_param_string(r, name, &hex, false) || !kh_param_string(r, b64name, &b64, false))
        return false;
    if (hex && b64)
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "give params.%s or params.%s, not both",
                           name, b64name);
    if (!hex && !b64) {
        if (required)
            return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s is required", name);
        return true;
    }
    if (hex) {
        if (hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X'))
            hex += 2;
        n = strlen(hex);
        if (n % 2 || n / 2 > max)
            goto bad_len;
        *out = malloc(n / 2 + 1);
        if (!*out)
            return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
        if (!kh_hex_decode(*out, len, n / 2, hex, n)) {
            free(*out);
            *out = NULL;
            return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s is not hex", name);
        }
    } else {
        *out = kh_base64_decode(b64, strlen(b64), len);
        if (!*out)
            return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s is not base64", b64name);
    }
    if (*len >= min && *len <= max)
        return true;
    free(*out);
    *out = NULL;
    *len = 0;
bad_len:
    if (min == max)
        return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s must be %zu bytes", name, min);
    return kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.%s must be %zu to %zu bytes", name,
                       min, max);
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
        *out = kh_signd_key_find(srv, label);
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
        return kh_req_fail(r, KH_SIGND_E_UNSUPPORTED, "key %s is not a secp256k1 key", key->label);
    return true;
}

/* Signs through signd-sign.c; records the error on failure. */
static bool kh_req_sign(struct kh_req *r, const struct kh_signd_key *key,
                        const struct kh_signd_sign_in *in, uint8_t *sig, size_t *siglen)
{
    char why[256];
    int code = kh_signd_sign(r->w, key, in, sig, siglen, why, sizeof why);

    if (code != 0)
        return kh_req_fail(r, code, "%s", why);
    return true;
}

/* Signs a 32-byte hash with a secp256k1 key: r || s || recovery id. */
static bool kh_req_sign_recoverable(struct kh_req *r, const struct kh_signd_key *key,
                                    const uint8_t hash[32], uint8_t sig[KH_SIGND_SIG_MAX])
{
    struct kh_signd_sign_in in = { .alg = KH_SIGND_ALG_ECDSA_RECOVERABLE, .input = hash,
                                   .input_len = 32 };
    size_t len;

    return kh_req_sign(r, key, &in, sig, &len);
}

/* ---- methods the module calls ------------------------------------------ */

static const char *kh_key_type(const struct kh_signd_key *key)
{
    return key->desc.kind == KH_KEY_UNKNOWN ? "unknown" : kh_keykind_name(key->desc.kind);
}

static bool kh_m_keys(struct kh_req *r)
{
    struct kh_signd *srv = r->w->srv;
    struct json_object *arr = json_object_new_array();

    if (!kh_req_set(r, "keys", arr))
        return false;
    for (size_t i = 0; i < srv->nkeys; i++) {
        const struct kh_signd_key *k = &srv->keys[i];
        struct json_object *e;

        if (!(k->policy->methods & (KH_SIGND_M_PUBLIC_KEY | KH_SIGND_M_SIGN)))
            continue;
        e = json_object_new_object();
        if (!e)
            return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
        json_object_object_add(e, "key", json_object_new_string(k->label));
        json_object_object_add(e, "type", json_object_new_string(kh_key_type(k)));
        json_object_array_add(arr, e);
    }
    return true;
}

static bool kh_m_public_key(struct kh_req *r)
{
    struct kh_signd_key *key;

    if (!kh_req_key(r, &key) || !kh_req_allowed(r, key, KH_SIGND_M_PUBLIC_KEY, "public_key"))
        return false;
    if (!kh_req_set(r, "key", json_object_new_string(key->label)) ||
        !kh_req_set(r, "type", json_object_new_string(kh_key_type(key))))
        return false;
    if (key->desc.kind == KH_KEY_RSA)
        return kh_req_set(r, "n", kh_json_hex(key->pub.n, key->pub.n_len, false)) &&
               kh_req_set(r, "e", kh_json_hex(key->pub.e, key->pub.e_len, false));
    return kh_req_set(r, "public_key", kh_json_hex(key->pub.point, key->pub.point_len, false));
}

/* rsa_pss parameters by name. */
static bool kh_pss_hash(const char *name, CK_MECHANISM_TYPE *hash, CK_RSA_PKCS_MGF_TYPE *mgf)
{
    static const struct {
        const char *name;
        CK_MECHANISM_TYPE hash;
        CK_RSA_PKCS_MGF_TYPE mgf;
    } t[] = {
        { "sha1", CKM_SHA_1, CKG_MGF1_SHA1 },
        { "sha224", CKM_SHA224, CKG_MGF1_SHA224 },
        { "sha256", CKM_SHA256, CKG_MGF1_SHA256 },
        { "sha384", CKM_SHA384, CKG_MGF1_SHA384 },
        { "sha512", CKM_SHA512, CKG_MGF1_SHA512 },
    };

    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(name, t[i].name) == 0) {
            if (hash)
                *hash = t[i].hash;
            if (mgf)
                *mgf = t[i].mgf;
            return true;
        }
    return false;
}

static bool kh_m_sign(struct kh_req *r)
{
    struct kh_signd_key *key;
    struct kh_signd_sign_in in;
    const char *alg_name, *hash, *mgf_hash;
    uint8_t *input = NULL, *aux = NULL, sig[KH_SIGND_SIG_MAX];
    size_t input_len = 0, aux_len = 0, siglen = 0;
    bool ok = false;

    memset(&in, 0, sizeof in);
    if (!kh_req_key(r, &key) || !kh_req_allowed(r, key, KH_SIGND_M_SIGN, "sign") ||
        !kh_param_string(r, "algorithm", &alg_name, true))
        return false;
    if (!kh_signd_alg_parse(&in.alg, alg_name))
        return kh_req_fail(r, KH_SIGND_E_UNSUPPORTED, "unknown algorithm '%.32s'", alg_name);
    if (!(key->policy->algorithms & (1u << in.alg)))
        return kh_req_fail(r, KH_SIGND_E_DENIED, "algorithm %s is not allowed for key %s",
                           kh_signd_alg_name(in.alg), key->label);

    switch (in.alg) {
    case KH_SIGND_ALG_ECDSA:
        if (key->desc.kind == KH_KEY_SECP256K1)
            ok = kh_param_bin(r, "digest", &input, &input_len, 32, 32, true);
        else
            ok = kh_param_bin(r, "digest", &input, &input_len, 1, 64, true);
        break;
    case KH_SIGND_ALG_ECDSA_RECOVERABLE:
        ok = kh_param_bin(r, "digest", &input, &input_len, 32, 32, true);
        break;
    case KH_SIGND_ALG_BIP340:
        ok = kh_param_bin(r, "message", &input, &input_len, 32, 32, true) &&
             kh_param_bin(r, "aux", &aux, &aux_len, 32, 32, false);
        in.aux = aux;
        break;
    case KH_SIGND_ALG_EDDSA:
        ok = kh_param_bin(r, "message", &input, &input_len, 0, KH_WIRE_FRAME_MAX, true);
        break;
    case KH_SIGND_ALG_RSA_PKCS1:
        ok = kh_param_bin(r, "data", &input, &input_len, 1, 512, true);
        break;
    case KH_SIGND_ALG_RSA_PSS: {
        struct json_object *sl;
        int64_t salt;
        ok = kh_param_bin(r, "digest", &input, &input_len, 1, 64, true) &&
             kh_param_string(r, "hash", &hash, true) && kh_param_string(r, "mgf_hash", &mgf_hash, true);
        if (!ok)
            break;
        ok = false;
        if (!kh_pss_hash(hash, &in.pss_hash, NULL) || !kh_pss_hash(mgf_hash, NULL, &in.pss_mgf)) {
            kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS,
                        "params.hash and params.mgf_hash: sha1, sha224, sha256, sha384 or sha512");
            break;
        }
        if (!json_object_object_get_ex(r->params, "salt_len", &sl) ||
            !json_object_is_type(sl, json_type_int) || (salt = json_object_get_int64(sl)) < 0 ||
            salt > 1024) {
            kh_req_fail(r, KH_SIGND_E_INVALID_PARAMS, "params.salt_len must be an integer 0..1024");
            break;
        }
        in.pss_salt_len = (CK_ULONG)salt;
        ok = true;
        break;
    }
    default:
        break;
    }
    if (!ok)
        goto out;
    in.input = input;
    in.input_len = input_len;
    ok = kh_req_sign(r, key, &in, sig, &siglen) &&
         kh_req_set(r, "signature", kh_json_hex(sig, siglen, false));
out:
    free(input);
    free(aux);
    return ok;
}

/* ---- the enclave-signer methods ---------------------------------------- */

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
    uint8_t *msg = NULL, h[32], sig[KH_SIGND_SIG_MAX];
    size_t len;
    bool ok;

    if (!kh_req_key(r, &key) ||
        !kh_req_allowed(r, key, KH_SIGND_M_SIGN_MESSAGE_DEFUNCT, "sign_message_defunct") ||
        !kh_req_secp256k1(r, key) ||
        !kh_param_bin(r, "message_hash", &msg, &len, 32, 32, true))
        return false;
    kh_eth_hash_defunct32(h, msg);
    free(msg);
    ok = kh_req_sign_recoverable(r, key, h, sig);
    if (!ok)
        return false;
    sig[64] = (uint8_t)(27 + sig[64]);
    return kh_req_set(r, "signature", kh_json_hex(sig, 65, true));
}

static bool kh_m_sign_transaction(struct kh_req *r)
{
    struct kh_signd_key *key;
    struct json_object *txj;
    struct kh_eth_tx tx;
    uint8_t h[32], sig[KH_SIGND_SIG_MAX], txhash[32], *raw = NULL;
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
    if (!kh_req_sign_recoverable(r, key, h, sig))
        goto out;
    raw = kh_eth_tx_encode_signed(&tx, sig, &rawlen);
    if (!raw) {
        kh_req_fail(r, KH_SIGND_E_INTERNAL, "cannot encode the signed transaction");
        goto out;
    }
    kh_keccak256(txhash, raw, rawlen);
    ok = kh_req_set(r, "raw_tx", kh_json_hex(raw, rawlen, true)) &&
         kh_req_set(r, "tx_hash", kh_json_hex(txhash, 32, true));
out:
    free(raw);
    kh_eth_tx_clear(&tx);
    return ok;
}

static bool kh_m_attestation(struct kh_req *r)
{
    struct kh_signd *srv = r->w->srv;
    struct kh_signd_key *key;
    uint8_t *nonce = NULL, fresh[32];
    size_t nonce_len;
    char *doc = NULL, *b64, why[256];
    bool ok;

    if (!kh_req_key(r, &key) || !kh_req_allowed(r, key, KH_SIGND_M_ATTESTATION, "attestation") ||
        !kh_param_bin(r, "nonce", &nonce, &nonce_len, 1, KH_SIGND_NONCE_MAX, false))
        return false;
    if (!srv->attest) {
        free(nonce);
        return kh_req_fail(r, KH_SIGND_E_UNAVAILABLE,
                           "no TPM: keyhold-signd runs without attestation "
                           "(--tpm or \"attestation\" in its configuration)");
    }
    if (!nonce) {
        if (RAND_bytes(fresh, sizeof fresh) != 1)
            return kh_req_fail(r, KH_SIGND_E_INTERNAL, "no randomness for a nonce");
    }
    ok = kh_signd_attest_quote(srv->attest, key, nonce ? nonce : fresh,
                               nonce ? nonce_len : sizeof fresh, &doc, why, sizeof why);
    free(nonce);
    if (!ok)
        return kh_req_fail(r, KH_SIGND_E_UNAVAILABLE, "attestation failed: %s", why);
    b64 = kh_base64_encode((const uint8_t *)doc, strlen(doc));
    free(doc);
    if (!b64)
        return kh_req_fail(r, KH_SIGND_E_INTERNAL, "out of memory");
    ok = kh_req_set(r, "document_b64", json_object_new_string(b64));
    free(b64);
    return ok;
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

/* Why json-c did not return an object ("continue" means the text ended early). */
static const char *kh_json_why(struct json_tokener *tok)
{
    enum json_tokener_error e = json_tokener_get_error(tok);

    return e == json_tokener_continue ? "incomplete JSON" : json_tokener_error_desc(e);
}

static const struct {
    const char *name;
    bool (*fn)(struct kh_req *r);
} kh_signd_methods[] = {
    { "keys", kh_m_keys },
    { "public_key", kh_m_public_key },
    { "sign", kh_m_sign },
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
    struct json_object *root = NULL, *m, *id = NULL, *reply = NULL;
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
    if (len > KH_WIRE_FRAME_MAX) {
        kh_req_fail(&r, KH_SIGND_E_PARSE_ERROR, "frame too large");
        goto out;
    }
    root = json_tokener_parse_ex(tok, json, (int)len);
    if (!root || json_tokener_get_parse_end(tok) != len ||
        !json_object_is_type(root, json_type_object)) {
        kh_req_fail(&r, KH_SIGND_E_PARSE_ERROR, "the frame is not one JSON object (%s)",
                    !root ? kh_json_why(tok) :
                    json_tokener_get_parse_end(tok) != len ? "trailing data" : "not an object");
        goto out;
    }
    json_object_object_get_ex(root, "id", &id);
    if (!json_object_object_get_ex(root, "method", &m) || !json_object_is_type(m, json_type_string)) {
        kh_req_fail(&r, KH_SIGND_E_INVALID_REQUEST, "a request is {\"method\": M, \"params\": {...}}");
        goto out;
    }
    method = json_object_get_string(m);
    for (i = 0; i < sizeof kh_signd_methods / sizeof kh_signd_methods[0]; i++)
        if (strcmp(method, kh_signd_methods[i].name) == 0)
            break;
    if (i == sizeof kh_signd_methods / sizeof kh_signd_methods[0]) {
        log->method = "(unknown)";
        kh_req_fail(&r, KH_SIGND_E_METHOD_NOT_FOUND, "unknown method");
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
            if (id)
                json_object_object_add(reply, "id", json_object_get(id));
        }
    } else {
        if (!r.code)
            kh_req_fail(&r, KH_SIGND_E_INTERNAL, "out of memory");
        log->outcome = kh_signd_err_name(r.code);
        reply = kh_error_obj(r.code, r.message, id);
    }
    json_object_put(r.result);
    json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    return kh_reply_take(reply);
}
