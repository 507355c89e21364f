/*
 * fake-signer: a signer-protocol server for FAULT INJECTION in the remote
 * backend's tests. It is not keyhold-signd and not a product: it holds
 * software keys in a directory and misbehaves on request.
 *
 *   fake-signer --listen URL --keys DIR [--close-after N] [--tls-cert F --tls-key F]
 *
 * Keys: k1 (secp256k1), p256, p384, ed25519, rsa (RSA-2048), made on first
 * start and kept in DIR (so a restarted signer has the same keys). A key id
 * may carry a fault after '+': "p256+slow3000". public_key answers for the
 * base key (except pkbad); sign applies the fault:
 *
 *   slow<ms>    sleep ms, then answer correctly
 *   die         exit the whole process at once, the request unanswered
 *   close       close this connection without an answer
 *   garbage     answer a frame that is not JSON
 *   rawgarbage  answer unframed bytes ("HTTP/1.1 ..."), read as a 1.2 GB prefix
 *   huge        answer a 4 GiB - 1 length prefix, then nothing
 *   wrongkey    sign correctly, but with another key of the same type
 *   corrupt     flip a bit of the signature
 *   short       drop the signature's last byte
 *   badid       answer with another id
 *   noresult    answer {} (neither result nor error)
 *   der         ECDSA: answer signature_der (valid)
 *   dertrail, dernonmin  ECDSA: signature_der with a trailing byte / a non-minimal INTEGER
 *   highs       secp256k1 ECDSA: answer the high-S twin (valid); recoverable: v flipped too
 *   v27         recoverable: v + 27
 *   b64         answer signature_b64
 *   deny, unknown, unsupported, unavailable   answer that error code
 *   pkbad       public_key: a point that is not on the curve
 *
 * Also "stats" -> {"connections": N, "requests": M}. --close-after N closes
 * each connection after N answers (a pooled connection then dies). Threads:
 * one per connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "wire.h"

enum { K_K1, K_P256, K_P384, K_ED, K_RSA, K_N };

static const struct {
    const char *id, *type;
    kh_alg alg;
} kinds[K_N] = {
    [K_K1] = { "k1", "secp256k1", KH_ALG_SECP256K1 },
    [K_P256] = { "p256", "p256", KH_ALG_P256 },
    [K_P384] = { "p384", "p384", KH_ALG_P384 },
    [K_ED] = { "ed25519", "ed25519", KH_ALG_ED25519 },
    [K_RSA] = { "rsa", "rsa", KH_ALG_RSA },
};

static struct {
    kh_softkey *key, *other;
    kh_pubkey pub;
} keys[K_N];

static int close_after;
static atomic_uint nconns, nreqs;
static bool verbose;

static void die(const char *what, const char *arg)
{
    fprintf(stderr, "fake-signer: %s %s\n", what, arg);
    exit(2);
}

/* Load DIR/<id>.key, or make it. */
static void key_load(int k, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.key", dir, kinds[k].id);
    uint8_t buf[4096];
    uint8_t *secret = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        secret = buf;
    } else {
        if (kh_crypto_generate(&keys[k].pub, &secret, &len, kinds[k].alg, 2048) != CKR_OK)
            die("cannot generate", kinds[k].id);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || write(fd, secret, len) != (ssize_t)len || close(fd) != 0)
            die("cannot write", path);
        memcpy(buf, secret, len);
        kh_crypto_secret_free(secret, len);
        secret = buf;
    }
    if (kh_crypto_import(&keys[k].pub, NULL, NULL, kinds[k].alg, secret, len) != CKR_OK ||
        kh_softkey_load(&keys[k].key, kinds[k].alg, secret, len) != CKR_OK)
        die("cannot load", path);
    uint8_t *o;
    size_t ol;
    kh_pubkey op;
    if (kh_crypto_generate(&op, &o, &ol, kinds[k].alg, 2048) != CKR_OK ||
        kh_softkey_load(&keys[k].other, kinds[k].alg, o, ol) != CKR_OK)
        die("cannot make the other key of", kinds[k].id);
    kh_crypto_secret_free(o, ol);
}

/* ---- values ---- */

static json_object *hexs(const uint8_t *p, size_t n)
{
    char *s = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(s + 2 * i, "%02x", p[i]);
    json_object *o = json_object_new_string_len(s, (int)(2 * n));
    free(s);
    return o;
}

static json_object *b64s(const uint8_t *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    json_object *o = json_object_new_string_len(s, len);
    free(s);
    return o;
}

/* Binary member name (hex) or name_b64. Returns malloc'd bytes, or NULL if absent/bad. */
static uint8_t *getbin(json_object *obj, const char *name, size_t *len)
{
    char bn[64];
    json_object *v;
    snprintf(bn, sizeof bn, "%s_b64", name);
    if (json_object_object_get_ex(obj, name, &v) && json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        size_t n = strlen(s);
        if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
            s += 2;
            n -= 2;
        }
        if (n % 2)
            return NULL;
        uint8_t *out = malloc(n / 2 + 1);
        for (size_t i = 0; i < n / 2; i++) {
            unsigned b;
            if (sscanf(s + 2 * i, "%2x", &b) != 1) {
                free(out);
                return NULL;
            }
            out[i] = (uint8_t)b;
        }
        *len = n / 2;
        return out;
    }
    if (json_object_object_get_ex(obj, bn, &v) && json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        size_t n = strlen(s);
        uint8_t *out = malloc(n + 1);
        int r = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
        if (r < 0) {
            free(out);
            return NULL;
        }
        size_t pad = n && s[n - 1] == '=' ? (n > 1 && s[n - 2] == '=' ? 2 : 1) : 0;
        *len = (size_t)r - pad;
        return out;
    }
    return NULL;
}

static const char *getstr(json_object *obj, const char *name)
{
    json_object *v;
    if (json_object_object_get_ex(obj, name, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return NULL;
}

static kh_hash hash_by_name(const char *s)
{
    if (!s) return KH_HASH_NONE;
    if (!strcmp(s, "sha1")) return KH_HASH_SHA1;
    if (!strcmp(s, "sha224")) return KH_HASH_SHA224;
    if (!strcmp(s, "sha256")) return KH_HASH_SHA256;
    if (!strcmp(s, "sha384")) return KH_HASH_SHA384;
    if (!strcmp(s, "sha512")) return KH_HASH_SHA512;
    return KH_HASH_NONE;
}

static const uint8_t secp_n[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
};

static void negate_s(uint8_t s[32])
{
    int borrow = 0;
    for (int i = 31; i >= 0; i--) {
        int d = secp_n[i] - s[i] - borrow;
        borrow = d < 0;
        s[i] = (uint8_t)(d + (borrow ? 256 : 0));
    }
}

/* r||s -> DER ECDSA-Sig-Value. */
static size_t to_der(uint8_t *out, const uint8_t *rs, size_t flen)
{
    uint8_t body[2 * 70];
    size_t bl = 0;
    for (int k = 0; k < 2; k++) {
        const uint8_t *v = rs + k * flen;
        size_t n = flen;
        while (n > 1 && *v == 0) {
            v++;
            n--;
        }
        body[bl++] = 0x02;
        body[bl++] = (uint8_t)(n + (*v & 0x80 ? 1 : 0));
        if (*v & 0x80)
            body[bl++] = 0;
        memcpy(body + bl, v, n);
        bl += n;
    }
    size_t o = 0;
    out[o++] = 0x30;
    if (bl >= 0x80)
        out[o++] = 0x81;
    out[o++] = (uint8_t)bl;
    memcpy(out + o, body, bl);
    return o + bl;
}

/* ---- requests ---- */

static json_object *error_reply(int code, const char *msg)
{
    json_object *r = json_object_new_object(), *e = json_object_new_object();
    json_object_object_add(e, "code", json_object_new_int(code));
    json_object_object_add(e, "message", json_object_new_string(msg));
    json_object_object_add(r, "error", e);
    return r;
}

static json_object *result_reply(json_object *res)
{
    json_object *r = json_object_new_object();
    json_object_object_add(r, "result", res);
    return r;
}

enum action { ACT_REPLY, ACT_CLOSE, ACT_RAW };

/*
 * Handle one request. Out: *reply (a JSON reply) or *raw and *raw_len (bytes to
 * write as they are). Returns what to do.
 */
static enum action handle(json_object *req, json_object **reply, const uint8_t **raw,
                          size_t *raw_len)
{
    static const uint8_t http[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff };
    const char *method = getstr(req, "method");
    json_object *params = NULL;
    json_object_object_get_ex(req, "params", &params);
    atomic_fetch_add(&nreqs, 1);
    if (!method) {
        *reply = error_reply(-32600, "no method");
        return ACT_REPLY;
    }
    if (!strcmp(method, "stats")) {
        json_object *res = json_object_new_object();
        json_object_object_add(res, "connections", json_object_new_int((int)atomic_load(&nconns)));
        json_object_object_add(res, "requests", json_object_new_int((int)atomic_load(&nreqs)));
        *reply = result_reply(res);
        return ACT_REPLY;
    }
    if (!strcmp(method, "keys")) {
        json_object *arr = json_object_new_array(), *res = json_object_new_object();
        for (int k = 0; k < K_N; k++) {
            json_object *e = json_object_new_object();
            json_object_object_add(e, "key", json_object_new_string(kinds[k].id));
            json_object_object_add(e, "type", json_object_new_string(kinds[k].type));
            json_object_array_add(arr, e);
        }
        json_object_object_add(res, "keys", arr);
        *reply = result_reply(res);
        return ACT_REPLY;
    }
    const char *keyid = params ? getstr(params, "key") : NULL;
    if (!keyid) {
        *reply = error_reply(-32602, "no key");
        return ACT_REPLY;
    }
    char base[64];
    const char *plus = strchr(keyid, '+');
    const char *fault = plus ? plus + 1 : "";
    snprintf(base, sizeof base, "%.*s", plus ? (int)(plus - keyid) : (int)strlen(keyid), keyid);
    int k;
    for (k = 0; k < K_N; k++)
        if (!strcmp(base, kinds[k].id))
            break;
    if (k == K_N || !strcmp(fault, "unknown")) {
        *reply = error_reply(1, "unknown key");
        return ACT_REPLY;
    }
    const kh_pubkey *pub = &keys[k].pub;

    if (!strcmp(method, "public_key")) {
        json_object *res = json_object_new_object();
        json_object_object_add(res, "key", json_object_new_string(keyid));
        json_object_object_add(res, "type", json_object_new_string(kinds[k].type));
        if (pub->alg == KH_ALG_RSA) {
            json_object_object_add(res, "n", hexs(pub->n, pub->n_len));
            json_object_object_add(res, "e", hexs(pub->e, pub->e_len));
        } else {
            uint8_t pt[97];
            memcpy(pt, pub->point, pub->point_len);
            if (!strcmp(fault, "pkbad"))
                pt[pub->point_len - 1] ^= 1;   /* off the curve (EC); another key (Ed25519) */
            json_object_object_add(res, "public_key", hexs(pt, pub->point_len));
        }
        *reply = result_reply(res);
        return ACT_REPLY;
    }
    if (strcmp(method, "sign") != 0) {
        *reply = error_reply(-32601, "method not found");
        return ACT_REPLY;
    }

    /* faults before signing */
    if (!strncmp(fault, "slow", 4))
        usleep((useconds_t)atoi(fault + 4) * 1000u);
    if (!strcmp(fault, "die"))
        _exit(3);
    if (!strcmp(fault, "close"))
        return ACT_CLOSE;
    if (!strcmp(fault, "rawgarbage")) {
        *raw = http;
        *raw_len = sizeof http - 1;
        return ACT_RAW;
    }
    if (!strcmp(fault, "huge")) {
        *raw = huge;
        *raw_len = sizeof huge;
        return ACT_RAW;
    }
    if (!strcmp(fault, "deny") || !strcmp(fault, "unsupported") || !strcmp(fault, "unavailable")) {
        int code = fault[0] == 'd' ? 2 : fault[2] == 's' ? 4 : 5;
        *reply = error_reply(code, fault);
        return ACT_REPLY;
    }

    const char *alg = getstr(params, "algorithm");
    kh_sigop op;
    const char *field = "digest";
    kh_sigparams sp = { 0 };
    if (!alg) {
        *reply = error_reply(-32602, "no algorithm");
        return ACT_REPLY;
    } else if (!strcmp(alg, "ecdsa")) {
        op = KH_OP_ECDSA;
    } else if (!strcmp(alg, "ecdsa_recoverable")) {
        op = KH_OP_ECDSA_RECOVER;
    } else if (!strcmp(alg, "bip340")) {
        op = KH_OP_BIP340;
        field = "message";
    } else if (!strcmp(alg, "eddsa")) {
        op = KH_OP_EDDSA;
        field = "message";
    } else if (!strcmp(alg, "rsa_pkcs1")) {
        op = KH_OP_RSA_PKCS;
        field = "data";
    } else if (!strcmp(alg, "rsa_pss")) {
        op = KH_OP_RSA_PSS;
        json_object *sl;
        sp.pss_hash = hash_by_name(getstr(params, "hash"));
        sp.pss_mgf_hash = hash_by_name(getstr(params, "mgf_hash"));
        if (json_object_object_get_ex(params, "salt_len", &sl))
            sp.pss_salt_len = (size_t)json_object_get_int64(sl);
    } else {
        *reply = error_reply(4, "unknown algorithm");
        return ACT_REPLY;
    }
    size_t dlen = 0, alen = 0;
    uint8_t *data = getbin(params, field, &dlen);
    uint8_t *aux = getbin(params, "aux", &alen);
    if (!data || (aux && alen != 32)) {
        free(data);
        free(aux);
        *reply = error_reply(-32602, "bad input");
        return ACT_REPLY;
    }
    sp.aux = aux;
    uint8_t sig[512];
    size_t siglen = sizeof sig;
    const kh_softkey *sk = !strcmp(fault, "wrongkey") ? keys[k].other : keys[k].key;
    CK_RV rv = kh_softkey_sign(sk, op, &sp, data, dlen, sig, &siglen);
    free(data);
    free(aux);
    if (rv != CKR_OK) {
        *reply = error_reply(rv == CKR_KEY_TYPE_INCONSISTENT ? 4 : -32602, "cannot sign");
        return ACT_REPLY;
    }
    if (!strcmp(fault, "highs") && pub->alg == KH_ALG_SECP256K1) {
        negate_s(sig + 32);
        if (op == KH_OP_ECDSA_RECOVER)
            sig[64] ^= 1;
    }
    if (!strcmp(fault, "v27") && op == KH_OP_ECDSA_RECOVER)
        sig[64] += 27;
    if (!strcmp(fault, "corrupt"))
        sig[siglen / 2] ^= 0x10;
    if (!strcmp(fault, "short"))
        siglen--;
    json_object *res = json_object_new_object();
    if (!strncmp(fault, "der", 3) && op == KH_OP_ECDSA) {
        uint8_t der[2 * 70 + 8];
        size_t n = to_der(der, sig, siglen / 2);
        if (!strcmp(fault, "dertrail")) {
            der[n++] = 0;                       /* a byte after the SEQUENCE */
        } else if (!strcmp(fault, "dernonmin")) {
            /* r with a needless leading zero: 30 L 02 l r... -> 30 L+1 02 l+1 00 r... */
            memmove(der + 5, der + 4, n - 4);
            der[4] = 0;
            der[3]++;
            der[1]++;
            n++;
        }
        json_object_object_add(res, "signature_der", hexs(der, n));
    } else if (!strcmp(fault, "b64")) {
        json_object_object_add(res, "signature_b64", b64s(sig, siglen));
    } else {
        json_object_object_add(res, "signature", hexs(sig, siglen));
    }
    if (!strcmp(fault, "garbage")) {
        json_object_put(res);
        static const uint8_t junk[] = { 0, 0, 0, 10, 'n', 'o', 't', ' ', 'j', 's', 'o', 'n', ' ', '{' };
        *raw = junk;
        *raw_len = sizeof junk;
        return ACT_RAW;
    }
    if (!strcmp(fault, "noresult")) {
        json_object_put(res);
        *reply = json_object_new_object();
        return ACT_REPLY;
    }
    *reply = result_reply(res);
    if (!strcmp(fault, "badid"))
        json_object_object_add(*reply, "id", json_object_new_int(-5));
    return ACT_REPLY;
}

static void *conn_main(void *arg)
{
    kh_wire_conn *c = arg;
    int answered = 0;
    for (;;) {
        char *buf;
        size_t len;
        if (kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, kh_wire_now_ms() + 3600000) != KH_WIRE_OK)
            break;
        json_object *req = json_tokener_parse(buf);
        free(buf);
        json_object *reply = NULL;
        const uint8_t *raw = NULL;
        size_t raw_len = 0;
        enum action a = ACT_REPLY;
        if (!req || !json_object_is_type(req, json_type_object))
            reply = error_reply(-32700, "not a JSON object");
        else
            a = handle(req, &reply, &raw, &raw_len);
        if (verbose)
            fprintf(stderr, "fake-signer: %s\n", req ? json_object_to_json_string(req) : "?");
        json_object *id;
        if (reply && req && json_object_object_get_ex(req, "id", &id) &&
            !json_object_object_get_ex(reply, "id", NULL))
            json_object_object_add(reply, "id", json_object_get(id));
        json_object_put(req);
        if (a == ACT_CLOSE) {
            json_object_put(reply);
            break;
        }
        if (a == ACT_RAW) {
            (void)!write(kh_wire_conn_fd(c), raw, raw_len);
            sleep(30);   /* hold the connection: the client must give up on its own */
            break;
        }
        size_t n;
        const char *text = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, &n);
        int rc = kh_wire_send(c, text, n, kh_wire_now_ms() + 10000);
        json_object_put(reply);
        if (rc != KH_WIRE_OK)
            break;
        if (close_after && ++answered >= close_after)
            break;
    }
    kh_wire_close(c);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *listen_s = NULL, *dir = NULL, *cert = NULL, *key = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_s = argv[++i];
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--close-after") && i + 1 < argc)
            close_after = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
            cert = argv[++i];
        else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
            key = argv[++i];
        else if (!strcmp(argv[i], "-v"))
            verbose = true;
        else
            die("usage: fake-signer --listen URL --keys DIR [--close-after N] [-v]", "");
    }
    if (!listen_s || !dir)
        die("usage: fake-signer --listen URL --keys DIR [--close-after N] [-v]", "");
    signal(SIGPIPE, SIG_IGN);
    if (kh_crypto_init() != CKR_OK)
        die("crypto init failed", "");
    mkdir(dir, 0700);
    for (int k = 0; k < K_N; k++)
        key_load(k, dir);
    kh_wire_url u;
    char err[256];
    if (kh_wire_url_parse(&u, err, sizeof err, listen_s) != KH_WIRE_OK)
        die("bad URL:", err);
    kh_wire_tls tls = { .cert_file = cert, .key_file = key };
    kh_wire_listener *l;
    if (kh_wire_listen(&l, err, sizeof err, &u, cert ? &tls : NULL) != KH_WIRE_OK)
        die("listen:", err);
    fprintf(stderr, "fake-signer: listening on %s\n", listen_s);
    for (;;) {
        kh_wire_conn *c;
        int rc = kh_wire_accept(l, &c, kh_wire_now_ms() + 3600000);
        if (rc != KH_WIRE_OK)
            continue;
        atomic_fetch_add(&nconns, 1);
        pthread_t th;
        if (pthread_create(&th, NULL, conn_main, c) != 0) {
            kh_wire_close(c);
            continue;
        }
        pthread_detach(th);
    }
}
