/*
 * The built-in "signer" driver: the keyhold signer protocol (README, "The
 * signer protocol") over wire.c's transports.
 *
 * A key's reference is "<URL>#<key id>": the URL is everything before the
 * last '#', the key id (1..256 bytes, no '#', no control characters) after.
 *
 * Connections are pooled per URL: a call takes an idle connection (dropping
 * any that the peer has closed meanwhile), or connects; after a complete
 * exchange the connection goes back to the pool (at most pool_max idle per
 * URL). Any transport error or malformed reply closes it. When a connection
 * taken from the pool fails before a reply arrives (the signer restarted,
 * or closed it as idle), the request is sent once more on a new connection
 * within the same deadline; a fresh connection is never retried.
 *
 * Locking: the state's lock guards the pool lists only; connect, send and
 * receive run without it. It is a leaf lock (no other lock is taken under it).
 */
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "remote.h"
#include "wire.h"

#define SG_KEY_MAX 256
#define SG_POOL_HARD_MAX 64

typedef struct sg_pool {
    char url[KH_REMOTE_REF_MAX + 1];
    kh_wire_url u;
    kh_wire_conn *idle[SG_POOL_HARD_MAX];
    unsigned nidle;
    struct sg_pool *next;
} sg_pool;

typedef struct sg_state {
    kh_mutex *lock;
    sg_pool *pools;
    unsigned pool_max;
    kh_wire_tls tls;
    char ca[KH_REMOTE_PATH_MAX], cert[KH_REMOTE_PATH_MAX], key[KH_REMOTE_PATH_MAX];
    atomic_uint_fast64_t next_id;
} sg_state;

/* ---- state ---- */

static int sg_init(void **out, const char *name)
{
    (void)name;
    sg_state *st = calloc(1, sizeof *st);
    if (!st)
        return KH_DRV_E_NOMEM;
    if (kh_mutex_new(&st->lock) != CKR_OK) {
        free(st);
        return KH_DRV_E_NOMEM;
    }
    const kh_remote_config *rc = &kh_mod.cfg.remote;
    st->pool_max = rc->pool_max > SG_POOL_HARD_MAX ? SG_POOL_HARD_MAX : rc->pool_max;
    snprintf(st->ca, sizeof st->ca, "%s", rc->tls_ca);
    snprintf(st->cert, sizeof st->cert, "%s", rc->tls_cert);
    snprintf(st->key, sizeof st->key, "%s", rc->tls_key);
    st->tls.ca_file = st->ca[0] ? st->ca : NULL;
    st->tls.cert_file = st->cert[0] ? st->cert : NULL;
    st->tls.key_file = st->key[0] ? st->key : NULL;
    st->tls.libctx = kh_ossl_libctx();
    atomic_init(&st->next_id, 1);
    *out = st;
    return KH_DRV_OK;
}

static void sg_fini(void *state)
{
    sg_state *st = state;
    if (!st)
        return;
    for (sg_pool *p = st->pools, *next; p; p = next) {
        next = p->next;
        for (unsigned i = 0; i < p->nidle; i++)
            kh_wire_close(p->idle[i]);
        free(p);
    }
    kh_mutex_free(st->lock);
    free(st);
}

void kh_signer_forked(void *state)
{
    sg_state *st = state;
    if (!st)
        return;
    /* The parent's lock may be held by a thread that does not exist here. */
    if (kh_mutex_new(&st->lock) != CKR_OK)
        st->lock = NULL;
    for (sg_pool *p = st->pools; p; p = p->next) {
        for (unsigned i = 0; i < p->nidle; i++)
            kh_wire_abandon(p->idle[i]);
        p->nidle = 0;
    }
}

/* ---- the pool ---- */

/* The pool for url, created on first use. NULL: out of memory / no lock. */
static sg_pool *pool_get(sg_state *st, const char *url, const kh_wire_url *u)
{
    if (!st->lock)
        return NULL;
    kh_mutex_lock(st->lock);
    sg_pool *p;
    for (p = st->pools; p; p = p->next)
        if (!strcmp(p->url, url))
            break;
    if (!p) {
        p = calloc(1, sizeof *p);
        if (p) {
            snprintf(p->url, sizeof p->url, "%s", url);
            p->u = *u;
            p->next = st->pools;
            st->pools = p;
        }
    }
    kh_mutex_unlock(st->lock);
    return p;
}

/* An idle connection that still looks alive, or NULL. */
static kh_wire_conn *pool_take(sg_state *st, sg_pool *p)
{
    for (;;) {
        kh_mutex_lock(st->lock);
        kh_wire_conn *c = p->nidle ? p->idle[--p->nidle] : NULL;
        kh_mutex_unlock(st->lock);
        if (!c || kh_wire_conn_idle_ok(c))
            return c;
        kh_wire_close(c);   /* closed by the signer while idle */
    }
}

static void pool_put(sg_state *st, sg_pool *p, kh_wire_conn *c)
{
    kh_mutex_lock(st->lock);
    if (p->nidle < st->pool_max) {
        p->idle[p->nidle++] = c;
        c = NULL;
    }
    kh_mutex_unlock(st->lock);
    kh_wire_close(c);
}

static int wire_status(int rc, bool sending)
{
    switch (rc) {
    case KH_WIRE_OK: return KH_DRV_OK;
    case KH_WIRE_ETIMEDOUT: return KH_DRV_E_TIMEOUT;
    case KH_WIRE_ETOOBIG: return sending ? KH_DRV_E_TOOBIG : KH_DRV_E_PROTO;
    case KH_WIRE_ETLS: return KH_DRV_E_TLS;
    case KH_WIRE_ENOMEM: return KH_DRV_E_NOMEM;
    default: return KH_DRV_E_CONNECT;  /* EADDR, ECONNECT, ECLOSED, EIO */
    }
}

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
{
    if (!msg || !msglen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

/*
 * One exchange: send req, read the reply frame and parse it.
 * Out: *result: the reply's "result" object (json_object_put the *root).
 * Returns: KH_DRV_OK, the signer's error code, or a local failure.
 */
static int exchange(sg_state *st, json_object **root, json_object **result, char *msg,
                    size_t msglen, const char *url, const kh_wire_url *u, const char *text,
                    size_t len, uint64_t id, uint64_t deadline_ms)
{
    *root = *result = NULL;
    if (len > KH_WIRE_FRAME_MAX) {
        set_msg(msg, msglen, "request of %zu bytes exceeds the frame cap", len);
        return KH_DRV_E_TOOBIG;
    }
    sg_pool *p = pool_get(st, url, u);
    if (!p)
        return KH_DRV_E_NOMEM;

    char *buf = NULL;
    size_t blen = 0;
    kh_wire_conn *c = NULL;
    int rc;
    for (int attempt = 0;; attempt++) {
        c = pool_take(st, p);
        bool reused = c != NULL;
        if (!c) {
            rc = kh_wire_connect(&c, u, &st->tls, deadline_ms);
            if (rc != KH_WIRE_OK) {
                set_msg(msg, msglen, "connect: %s (%s)", kh_wire_strerror(rc), kh_wire_detail());
                return wire_status(rc, false);
            }
        }
        bool sending = true;
        rc = kh_wire_send(c, text, len, deadline_ms);
        if (rc == KH_WIRE_OK) {
            sending = false;
            rc = kh_wire_recv(c, &buf, &blen, KH_WIRE_FRAME_MAX, deadline_ms);
        }
        if (rc == KH_WIRE_OK)
            break;
        kh_wire_close(c);
        c = NULL;
        if (reused && attempt == 0 && (rc == KH_WIRE_ECLOSED || rc == KH_WIRE_EIO)) {
            kh_log(KH_LOG_DEBUG, "remote signer: pooled connection lost (%s), reconnecting",
                   kh_wire_strerror(rc));
            continue;
        }
        set_msg(msg, msglen, "%s: %s (%s)", sending ? "send" : "receive", kh_wire_strerror(rc),
                kh_wire_detail());
        return wire_status(rc, sending);
    }

    /* Parse strictly: one JSON object filling the whole frame. */
    int status = KH_DRV_E_PROTO;
    json_object *obj = NULL;
    json_tokener *tok = json_tokener_new();
    if (!tok) {
        status = KH_DRV_E_NOMEM;
        goto out_close;
    }
    obj = json_tokener_parse_ex(tok, buf, (int)blen);
    bool whole = obj && json_tokener_get_error(tok) == json_tokener_success &&
                 json_tokener_get_parse_end(tok) == blen;
    json_tokener_free(tok);
    if (!whole || !json_object_is_type(obj, json_type_object)) {
        set_msg(msg, msglen, "reply is not a JSON object");
        goto out_close;
    }
    json_object *jid, *jerr, *jres;
    if (json_object_object_get_ex(obj, "id", &jid) &&
        (!json_object_is_type(jid, json_type_int) || (uint64_t)json_object_get_int64(jid) != id)) {
        set_msg(msg, msglen, "reply id does not match the request");
        goto out_close;
    }
    if (json_object_object_get_ex(obj, "error", &jerr)) {
        json_object *jcode, *jmsg;
        if (!json_object_is_type(jerr, json_type_object) ||
            !json_object_object_get_ex(jerr, "code", &jcode) ||
            !json_object_is_type(jcode, json_type_int) || json_object_get_int(jcode) == 0) {
            set_msg(msg, msglen, "malformed error object");
            goto out_close;
        }
        status = json_object_get_int(jcode);
        const char *m = json_object_object_get_ex(jerr, "message", &jmsg) &&
                        json_object_is_type(jmsg, json_type_string) ? json_object_get_string(jmsg) : "";
        set_msg(msg, msglen, "%s", m);
        goto out_keep;      /* a well-formed error: the stream is in step */
    }
    if (!json_object_object_get_ex(obj, "result", &jres) ||
        !json_object_is_type(jres, json_type_object)) {
        set_msg(msg, msglen, "reply has neither result nor error");
        goto out_close;
    }
    *root = obj;
    *result = jres;
    obj = NULL;
    status = KH_DRV_OK;
out_keep:
    json_object_put(obj);
    pool_put(st, p, c);
    free(buf);
    return status;
out_close:
    json_object_put(obj);
    kh_wire_close(c);
    free(buf);
    return status;
}

/* ---- values ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool hex_decode(uint8_t *out, size_t max, size_t *len, const char *s, size_t n)
{
    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        n -= 2;
    }
    if (n % 2 || n / 2 > max)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return true;
}

static bool b64_decode(uint8_t *out, size_t max, size_t *len, const char *s, size_t n)
{
    if (n % 4 || n / 4 * 3 > max + 2)
        return false;
    if (n == 0) {
        *len = 0;
        return true;
    }
    size_t pad = (s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
    for (size_t i = 0; i < n - pad; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return false;
    }
    uint8_t *tmp = malloc(n / 4 * 3 + 1);
    if (!tmp)
        return false;
    int r = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)n);
    if (r < 0 || (size_t)r < pad || (size_t)r - pad > max) {
        free(tmp);
        return false;
    }
    *len = (size_t)r - pad;
    memcpy(out, tmp, *len);
    free(tmp);
    return true;
}

/*
 * The binary member name of obj, as hex ("name") or base64 ("name_b64").
 * Returns: 1 found and decoded, 0 absent, -1 malformed (both forms, not a
 * string, bad encoding, longer than max).
 */
static int get_bin(uint8_t *out, size_t max, size_t *len, json_object *obj, const char *name)
{
    char b64name[64];
    snprintf(b64name, sizeof b64name, "%s_b64", name);
    json_object *h = NULL, *b = NULL;
    bool has_h = json_object_object_get_ex(obj, name, &h);
    bool has_b = json_object_object_get_ex(obj, b64name, &b);
    if (!has_h && !has_b)
        return 0;
    if (has_h && has_b)
        return -1;
    json_object *v = has_h ? h : b;
    if (!json_object_is_type(v, json_type_string))
        return -1;
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    bool ok = has_h ? hex_decode(out, max, len, s, n) : b64_decode(out, max, len, s, n);
    return ok ? 1 : -1;
}

/* Add member name = val to obj; false when val is NULL (out of memory). */
static bool put(json_object *obj, const char *name, json_object *val)
{
    if (!val)
        return false;
    return json_object_object_add(obj, name, val) == 0;
}

/* Split "<URL>#<key>" and parse the URL. */
static int parse_ref(char *url, size_t urlmax, kh_wire_url *u, const char **key, char *msg,
                     size_t msglen, const char *ref)
{
    const char *hash = strrchr(ref, '#');
    if (!hash) {
        set_msg(msg, msglen, "reference has no '#<key id>'");
        return KH_DRV_E_REF;
    }
    size_t klen = strlen(hash + 1), ulen = (size_t)(hash - ref);
    if (klen == 0 || klen > SG_KEY_MAX) {
        set_msg(msg, msglen, "key id must be 1..%d bytes", SG_KEY_MAX);
        return KH_DRV_E_REF;
    }
    for (const char *k = hash + 1; *k; k++)
        if ((unsigned char)*k < 0x20 || *k == 0x7f) {
            set_msg(msg, msglen, "key id holds a control character");
            return KH_DRV_E_REF;
        }
    if (ulen >= urlmax) {
        set_msg(msg, msglen, "URL too long");
        return KH_DRV_E_REF;
    }
    memcpy(url, ref, ulen);
    url[ulen] = '\0';
    char err[128];
    if (kh_wire_url_parse(u, err, sizeof err, url) != KH_WIRE_OK) {
        set_msg(msg, msglen, "bad URL: %s", err);
        return KH_DRV_E_REF;
    }
    *key = hash + 1;
    return KH_DRV_OK;
}

/* A request {"method": m, "params": {"key": key}, "id": id}; params returned for more members. */
static json_object *request_new(json_object **params, const char *method, const char *key,
                                uint64_t id)
{
    json_object *req = json_object_new_object();
    *params = json_object_new_object();
    if (!req || !*params) {
        json_object_put(req);
        json_object_put(*params);
        return NULL;
    }
    if (!put(req, "method", json_object_new_string(method)) ||
        !put(*params, "key", json_object_new_string(key)) ||
        !put(req, "id", json_object_new_int64((int64_t)id))) {
        json_object_put(req);
        json_object_put(*params);
        return NULL;
    }
    json_object_object_add(req, "params", *params);   /* req owns params now */
    return req;
}

static const struct {
    const char *name;
    uint32_t type;
    size_t point_len;
} key_types[] = {
    { "secp256k1", KH_DRV_KEY_SECP256K1, 65 },
    { "p256", KH_DRV_KEY_P256, 65 },
    { "p384", KH_DRV_KEY_P384, 97 },
    { "ed25519", KH_DRV_KEY_ED25519, 32 },
    { "rsa", KH_DRV_KEY_RSA, 0 },
};

/* ---- the driver's calls ---- */

static int sg_public_key(void *state, kh_driver_pubkey *pub, char *msg, size_t msglen,
                         const char *ref, uint64_t deadline_ms)
{
    sg_state *st = state;
    char url[KH_REMOTE_REF_MAX + 1];
    kh_wire_url u;
    const char *key;
    int status = parse_ref(url, sizeof url, &u, &key, msg, msglen, ref);
    if (status != KH_DRV_OK)
        return status;
    uint64_t id = atomic_fetch_add(&st->next_id, 1);
    json_object *params, *root, *res;
    json_object *req = request_new(&params, "public_key", key, id);
    if (!req)
        return KH_DRV_E_NOMEM;
    size_t len;
    const char *text = json_object_to_json_string_length(req, JSON_C_TO_STRING_PLAIN, &len);
    status = text ? exchange(st, &root, &res, msg, msglen, url, &u, text, len, id, deadline_ms)
                  : KH_DRV_E_NOMEM;
    json_object_put(req);
    if (status != KH_DRV_OK)
        return status;

    memset(pub, 0, sizeof *pub);
    status = KH_DRV_E_PROTO;
    json_object *jt, *jk;
    if (json_object_object_get_ex(res, "key", &jk) &&
        (!json_object_is_type(jk, json_type_string) || strcmp(json_object_get_string(jk), key))) {
        set_msg(msg, msglen, "public_key answered for another key");
        goto out;
    }
    const char *type = json_object_object_get_ex(res, "type", &jt) &&
                       json_object_is_type(jt, json_type_string) ? json_object_get_string(jt) : "";
    size_t i;
    for (i = 0; i < sizeof key_types / sizeof key_types[0]; i++)
        if (!strcmp(type, key_types[i].name))
            break;
    if (i == sizeof key_types / sizeof key_types[0]) {
        set_msg(msg, msglen, "public_key: unknown key type");
        goto out;
    }
    pub->type = key_types[i].type;
    if (pub->type == KH_DRV_KEY_RSA) {
        if (get_bin(pub->n, sizeof pub->n, &pub->n_len, res, "n") != 1 ||
            get_bin(pub->e, sizeof pub->e, &pub->e_len, res, "e") != 1) {
            set_msg(msg, msglen, "public_key: missing or malformed n / e");
            goto out;
        }
    } else if (get_bin(pub->point, sizeof pub->point, &pub->point_len, res, "public_key") != 1 ||
               pub->point_len != key_types[i].point_len) {
        set_msg(msg, msglen, "public_key: missing or malformed public_key for %s", type);
        goto out;
    }
    status = KH_DRV_OK;
out:
    json_object_put(root);
    return status;
}

static const char *alg_name(uint32_t alg)
{
    switch (alg) {
    case KH_DRV_ALG_ECDSA: return "ecdsa";
    case KH_DRV_ALG_ECDSA_RECOVERABLE: return "ecdsa_recoverable";
    case KH_DRV_ALG_BIP340: return "bip340";
    case KH_DRV_ALG_EDDSA: return "eddsa";
    case KH_DRV_ALG_RSA_PKCS1: return "rsa_pkcs1";
    case KH_DRV_ALG_RSA_PSS: return "rsa_pss";
    default: return NULL;
    }
}

static const char *hash_name(uint32_t h)
{
    switch (h) {
    case KH_DRV_HASH_SHA1: return "sha1";
    case KH_DRV_HASH_SHA224: return "sha224";
    case KH_DRV_HASH_SHA256: return "sha256";
    case KH_DRV_HASH_SHA384: return "sha384";
    case KH_DRV_HASH_SHA512: return "sha512";
    default: return NULL;
    }
}

/*
 * A sign request's text, written directly (no JSON object tree): the
 * protocol's fixed members, the key id as a JSON string, the data in hex
 * (or base64 for eddsa). Returns: malloc'd text and *len, or NULL (an
 * unknown algorithm or hash, or out of memory).
 */
static char *sign_request_text(size_t *len, const char *key, const kh_driver_sign_req *req,
                               uint64_t id)
{
    static const char digits[] = "0123456789abcdef";
    const char *alg = alg_name(req->algorithm), *field = "digest";
    const char *h = NULL, *m = NULL;
    bool b64 = false;

    if (!alg)
        return NULL;
    switch (req->algorithm) {
    case KH_DRV_ALG_BIP340: field = "message"; break;
    case KH_DRV_ALG_EDDSA: field = "message_b64"; b64 = true; break;
    case KH_DRV_ALG_RSA_PKCS1: field = "data"; break;
    case KH_DRV_ALG_RSA_PSS:
        h = hash_name(req->pss_hash);
        m = hash_name(req->pss_mgf_hash);
        if (!h || !m)
            return NULL;
        break;
    default: break;
    }
    size_t klen = strlen(key);
    size_t dlen = b64 ? 4 * ((req->data_len + 2) / 3) : 2 * req->data_len;
    /* fixed text (at most ~190 bytes with rsa_pss and a 20-digit id), the
     * key id escaped (at most 6 bytes per byte), the data, aux, a NUL */
    size_t cap = 320 + 6 * klen + dlen + (req->aux ? 2 * req->aux_len + 16 : 0);
    char *t = malloc(cap), *p = t;
    if (!t)
        return NULL;
    p += sprintf(p, "{\"method\":\"sign\",\"params\":{\"key\":\"");
    for (const unsigned char *k = (const unsigned char *)key; *k; k++) {
        if (*k == '"' || *k == '\\') {
            *p++ = '\\';
            *p++ = (char)*k;
        } else if (*k < 0x20 || *k == 0x7f) {
            p += sprintf(p, "\\u%04x", *k);
        } else {
            *p++ = (char)*k;
        }
    }
    p += sprintf(p, "\",\"algorithm\":\"%s\",\"%s\":\"", alg, field);
    if (b64) {
        p += EVP_EncodeBlock((unsigned char *)p, req->data, (int)req->data_len);
    } else {
        for (size_t i = 0; i < req->data_len; i++) {
            *p++ = digits[req->data[i] >> 4];
            *p++ = digits[req->data[i] & 15];
        }
    }
    *p++ = '"';
    if (req->algorithm == KH_DRV_ALG_BIP340 && req->aux) {
        p += sprintf(p, ",\"aux\":\"");
        for (size_t i = 0; i < req->aux_len; i++) {
            *p++ = digits[req->aux[i] >> 4];
            *p++ = digits[req->aux[i] & 15];
        }
        *p++ = '"';
    }
    if (req->algorithm == KH_DRV_ALG_RSA_PSS)
        p += sprintf(p, ",\"hash\":\"%s\",\"mgf_hash\":\"%s\",\"salt_len\":%llu", h, m,
                     (unsigned long long)req->pss_salt_len);
    p += sprintf(p, "},\"id\":%llu}", (unsigned long long)id);
    *len = (size_t)(p - t);
    return t;
}

static int sg_sign(void *state, uint8_t *sig, size_t *sig_len, int *format, char *msg,
                   size_t msglen, const char *ref, const kh_driver_sign_req *req,
                   uint64_t deadline_ms)
{
    sg_state *st = state;
    char url[KH_REMOTE_REF_MAX + 1];
    kh_wire_url u;
    const char *key;
    int status = parse_ref(url, sizeof url, &u, &key, msg, msglen, ref);
    if (status != KH_DRV_OK)
        return status;
    /* An EdDSA message the frame cannot carry (base64: 4/3 of it). */
    if (req->data_len > (size_t)KH_WIRE_FRAME_MAX / 4 * 3) {
        set_msg(msg, msglen, "data of %zu bytes does not fit a frame", req->data_len);
        return KH_DRV_E_TOOBIG;
    }
    uint64_t id = atomic_fetch_add(&st->next_id, 1);
    json_object *root, *res;
    size_t len;
    char *text = sign_request_text(&len, key, req, id);
    if (!text)
        return KH_DRV_E_NOMEM;
    status = exchange(st, &root, &res, msg, msglen, url, &u, text, len, id, deadline_ms);
    free(text);
    if (status != KH_DRV_OK)
        return status;
    int raw = get_bin(sig, KH_DRIVER_SIG_MAX, sig_len, res, "signature");
    int der = raw == 0 ? get_bin(sig, KH_DRIVER_SIG_MAX, sig_len, res, "signature_der") : 0;
    if (raw == 1 && !json_object_object_get_ex(res, "signature_der", NULL) &&
        !json_object_object_get_ex(res, "signature_der_b64", NULL)) {
        *format = KH_DRV_SIG_RAW;
    } else if (raw == 0 && der == 1 && req->algorithm == KH_DRV_ALG_ECDSA) {
        *format = KH_DRV_SIG_DER;
    } else {
        set_msg(msg, msglen, "sign: no well-formed signature in the reply");
        status = KH_DRV_E_PROTO;
    }
    json_object_put(root);
    return status;
}

const kh_driver_v1 kh_driver_signer = {
    .abi_version = KH_DRIVER_ABI_VERSION,
    .struct_size = sizeof(kh_driver_v1),
    .name = "signer",
    .init = sg_init,
    .fini = sg_fini,
    .public_key = sg_public_key,
    .sign = sg_sign,
};
