/*
 * signd-policy.c - keyhold-signd's configuration and per-key policy (see
 * signd-policy.h; the file format is in README, "keyhold-signd").
 */
#include "signd-policy.h"

#include <json-c/json.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KH_SIGND_CONFIG_MAX (1024 * 1024)

static const struct {
    const char *name;
    uint32_t bit;
} kh_signd_methods[] = {
    { "address", KH_SIGND_M_ADDRESS },
    { "sign_message_defunct", KH_SIGND_M_SIGN_MESSAGE_DEFUNCT },
    { "sign_transaction", KH_SIGND_M_SIGN_TRANSACTION },
    { "attestation", KH_SIGND_M_ATTESTATION },
    { "public_key", KH_SIGND_M_PUBLIC_KEY },
    { "sign", KH_SIGND_M_SIGN },
};

uint32_t kh_signd_method_bit(const char *name)
{
    for (size_t i = 0; i < sizeof kh_signd_methods / sizeof kh_signd_methods[0]; i++)
        if (strcmp(name, kh_signd_methods[i].name) == 0)
            return kh_signd_methods[i].bit;
    return 0;
}

static const char *const kh_signd_alg_names[KH_SIGND_ALG_COUNT] = {
    [KH_SIGND_ALG_ECDSA] = "ecdsa",
    [KH_SIGND_ALG_ECDSA_RECOVERABLE] = "ecdsa_recoverable",
    [KH_SIGND_ALG_BIP340] = "bip340",
    [KH_SIGND_ALG_EDDSA] = "eddsa",
    [KH_SIGND_ALG_RSA_PKCS1] = "rsa_pkcs1",
    [KH_SIGND_ALG_RSA_PSS] = "rsa_pss",
};

bool kh_signd_alg_parse(enum kh_signd_alg *alg, const char *name)
{
    for (int i = 0; i < KH_SIGND_ALG_COUNT; i++)
        if (strcmp(name, kh_signd_alg_names[i]) == 0) {
            *alg = (enum kh_signd_alg)i;
            return true;
        }
    return false;
}

const char *kh_signd_alg_name(enum kh_signd_alg alg)
{
    return (unsigned)alg < KH_SIGND_ALG_COUNT ? kh_signd_alg_names[alg] : "unknown";
}

/* ---- token bucket ------------------------------------------------------ */

void kh_bucket_init(struct kh_bucket *b, double rate, double burst, uint64_t now_ms)
{
    pthread_mutex_init(&b->lock, NULL);
    b->rate = rate;
    b->burst = burst < 1 ? 1 : burst;
    b->tokens = b->burst;
    b->last_ms = now_ms;
}

void kh_bucket_destroy(struct kh_bucket *b)
{
    pthread_mutex_destroy(&b->lock);
}

bool kh_bucket_take(struct kh_bucket *b, uint64_t now_ms)
{
    bool ok;

    if (b->rate <= 0)
        return true;
    pthread_mutex_lock(&b->lock);
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
    ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    pthread_mutex_unlock(&b->lock);
    return ok;
}

/* ---- configuration ----------------------------------------------------- */

void kh_signd_config_init(struct kh_signd_config *c, size_t frame_max)
{
    memset(c, 0, sizeof *c);
    c->max_connections = KH_SIGND_DEF_MAX_CONN;
    c->idle_timeout_ms = KH_SIGND_DEF_IDLE_MS;
    c->io_timeout_ms = KH_SIGND_DEF_IO_MS;
    c->max_frame = frame_max;
}

static void kh_signd_key_policy_clear(struct kh_signd_key_policy *p)
{
    free(p->label);
    free(p->chain_ids);
    free(p->to);
    free(p->selectors);
    memset(p, 0, sizeof *p);
}

void kh_signd_config_clear(struct kh_signd_config *c)
{
    for (size_t i = 0; i < c->nkeys; i++)
        kh_signd_key_policy_clear(&c->keys[i]);
    free(c->keys);
    free(c->default_key);
    free(c->tpm_tcti);
    free(c->tpm_pcrs);
    memset(c, 0, sizeof *c);
}

void kh_signd_policy_open(struct kh_signd_key_policy *p)
{
    memset(p, 0, sizeof *p);
    p->methods = KH_SIGND_M_ALL;
    p->algorithms = KH_SIGND_ALG_ALL;
    p->allow_empty_data = true;
}

const struct kh_signd_key_policy *kh_signd_config_key(const struct kh_signd_config *c,
                                                      const char *label)
{
    for (size_t i = 0; i < c->nkeys; i++)
        if (strcmp(c->keys[i].label, label) == 0)
            return &c->keys[i];
    return NULL;
}

/* A positive integer member within [min, max]. */
static bool kh_cfg_uint(unsigned *out, struct json_object *v, const char *name, unsigned min,
                        unsigned max, char *err, size_t errlen)
{
    int64_t i;

    if (!json_object_is_type(v, json_type_int)) {
        kh_signd_errf(err, errlen, "'%s' must be an integer", name);
        return false;
    }
    i = json_object_get_int64(v);
    if (i < (int64_t)min || i > (int64_t)max) {
        kh_signd_errf(err, errlen, "'%s' must be between %u and %u", name, min, max);
        return false;
    }
    *out = (unsigned)i;
    return true;
}

static bool kh_cfg_string(char **out, struct json_object *v, const char *name, char *err,
                          size_t errlen)
{
    if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0) {
        kh_signd_errf(err, errlen, "'%s' must be a non-empty string", name);
        return false;
    }
    free(*out);
    *out = strdup(json_object_get_string(v));
    if (!*out) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    return true;
}

/* An array member: checks the type and allocates n elements of size sz. */
static bool kh_cfg_array(void **out, size_t *n, struct json_object *v, size_t sz,
                         const char *where, char *err, size_t errlen)
{
    size_t len;

    if (!json_object_is_type(v, json_type_array)) {
        kh_signd_errf(err, errlen, "%s must be an array", where);
        return false;
    }
    len = json_object_array_length(v);
    *n = len;
    *out = calloc(len ? len : 1, sz);
    if (!*out) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    return true;
}

static bool kh_cfg_key(struct kh_signd_key_policy *p, const char *label, struct json_object *o,
                       char *err, size_t errlen)
{
    struct json_object_iterator it, end;
    char where[160], why[160];
    bool have_rate = false, have_burst = false;

    kh_signd_policy_open(p);
    p->label = strdup(label);
    if (!p->label) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    if (!json_object_is_type(o, json_type_object)) {
        kh_signd_errf(err, errlen, "keys.%s must be an object", label);
        return false;
    }
    it = json_object_iter_begin(o);
    end = json_object_iter_end(o);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *name = json_object_iter_peek_name(&it);
        struct json_object *v = json_object_iter_peek_value(&it);
        void *arr;

        snprintf(where, sizeof where, "keys.%.64s.%.32s", label, name);
        if (strcmp(name, "methods") == 0) {
            size_t n;
            if (!json_object_is_type(v, json_type_array)) {
                kh_signd_errf(err, errlen, "%s must be an array", where);
                return false;
            }
            n = json_object_array_length(v);
            p->methods = 0;
            for (size_t i = 0; i < n; i++) {
                struct json_object *m = json_object_array_get_idx(v, i);
                uint32_t bit = json_object_is_type(m, json_type_string)
                                   ? kh_signd_method_bit(json_object_get_string(m)) : 0;
                if (!bit) {
                    kh_signd_errf(err, errlen,
                                  "%s: unknown method %.64s (address, sign_message_defunct, "
                                  "sign_transaction, attestation, public_key, sign)",
                                  where, json_object_to_json_string(m));
                    return false;
                }
                p->methods |= bit;
            }
        } else if (strcmp(name, "algorithms") == 0) {
            size_t n;
            if (!json_object_is_type(v, json_type_array)) {
                kh_signd_errf(err, errlen, "%s must be an array", where);
                return false;
            }
            n = json_object_array_length(v);
            p->algorithms = 0;
            for (size_t i = 0; i < n; i++) {
                struct json_object *a = json_object_array_get_idx(v, i);
                enum kh_signd_alg alg;
                if (!json_object_is_type(a, json_type_string) ||
                    !kh_signd_alg_parse(&alg, json_object_get_string(a))) {
                    kh_signd_errf(err, errlen,
                                  "%s: unknown algorithm %.64s (ecdsa, ecdsa_recoverable, bip340, "
                                  "eddsa, rsa_pkcs1, rsa_pss)", where, json_object_to_json_string(a));
                    return false;
                }
                p->algorithms |= 1u << alg;
            }
        } else if (strcmp(name, "chain_ids") == 0) {
            if (!kh_cfg_array(&arr, &p->nchain_ids, v, sizeof *p->chain_ids, where, err, errlen))
                return false;
            p->chain_ids = arr;
            p->has_chain_ids = true;
            for (size_t i = 0; i < p->nchain_ids; i++)
                if (!kh_u256_from_json(&p->chain_ids[i], json_object_array_get_idx(v, i), why,
                                       sizeof why)) {
                    kh_signd_errf(err, errlen, "%s[%zu]: %s", where, i, why);
                    return false;
                }
        } else if (strcmp(name, "to") == 0) {
            if (!kh_cfg_array(&arr, &p->nto, v, sizeof *p->to, where, err, errlen))
                return false;
            p->to = arr;
            p->has_to = true;
            for (size_t i = 0; i < p->nto; i++) {
                struct json_object *a = json_object_array_get_idx(v, i);
                if (!json_object_is_type(a, json_type_string) ||
                    !kh_eth_parse_address(p->to[i], json_object_get_string(a), why, sizeof why)) {
                    kh_signd_errf(err, errlen, "%s[%zu]: %s", where, i,
                                  json_object_is_type(a, json_type_string) ? why : "not a string");
                    return false;
                }
            }
        } else if (strcmp(name, "selectors") == 0) {
            if (!kh_cfg_array(&arr, &p->nselectors, v, sizeof *p->selectors, where, err, errlen))
                return false;
            p->selectors = arr;
            p->has_selectors = true;
            for (size_t i = 0; i < p->nselectors; i++) {
                struct json_object *s = json_object_array_get_idx(v, i);
                uint8_t *b = NULL;
                size_t blen = 0;
                bool ok = json_object_is_type(s, json_type_string) &&
                          kh_eth_parse_hex_data(&b, &blen, 4, json_object_get_string(s), why,
                                                sizeof why) && blen == 4;
                if (ok)
                    memcpy(p->selectors[i], b, 4);
                free(b);
                if (!ok) {
                    kh_signd_errf(err, errlen, "%s[%zu]: a selector is 0x + 8 hex digits", where, i);
                    return false;
                }
            }
        } else if (strcmp(name, "allow_empty_data") == 0) {
            if (!json_object_is_type(v, json_type_boolean)) {
                kh_signd_errf(err, errlen, "%s must be true or false", where);
                return false;
            }
            p->allow_empty_data = json_object_get_boolean(v);
        } else if (strcmp(name, "max_value") == 0) {
            if (!kh_u256_from_json(&p->max_value, v, why, sizeof why)) {
                kh_signd_errf(err, errlen, "%s: %s", where, why);
                return false;
            }
            p->has_max_value = true;
        } else if (strcmp(name, "rate_per_second") == 0 || strcmp(name, "burst") == 0) {
            double d;
            if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double)) {
                kh_signd_errf(err, errlen, "%s must be a number", where);
                return false;
            }
            d = json_object_get_double(v);
            if (!isfinite(d) || d < 0 || d > 1e6 || (name[0] == 'b' && d < 1)) {
                kh_signd_errf(err, errlen, "%s is out of range", where);
                return false;
            }
            if (name[0] == 'r') {
                p->rate = d;
                have_rate = true;
            } else {
                p->burst = d;
                have_burst = true;
            }
        } else {
            kh_signd_errf(err, errlen, "unknown member %s", where);
            return false;
        }
    }
    if (have_burst && !have_rate) {
        kh_signd_errf(err, errlen, "keys.%s: 'burst' needs 'rate_per_second'", label);
        return false;
    }
    if (have_rate && !have_burst)
        p->burst = p->rate < 1 ? 1 : ceil(p->rate);
    return true;
}

bool kh_signd_config_parse(struct kh_signd_config *c, const char *json, size_t len, char *err,
                           size_t errlen)
{
    struct json_tokener *tok;
    struct json_object *root, *v;
    struct json_object_iterator it, end;
    bool ok = false;

    tok = json_tokener_new();
    if (!tok) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    root = json_tokener_parse_ex(tok, json, (int)len);
    if (!root || json_tokener_get_parse_end(tok) != len) {
        kh_signd_errf(err, errlen, "not valid JSON (%s at byte %zu)",
                      root ? "trailing data" :
                      json_tokener_get_error(tok) == json_tokener_continue ? "incomplete JSON" :
                      json_tokener_error_desc(json_tokener_get_error(tok)),
                      json_tokener_get_parse_end(tok));
        goto out;
    }
    if (!json_object_is_type(root, json_type_object)) {
        kh_signd_errf(err, errlen, "the configuration must be a JSON object");
        goto out;
    }
    it = json_object_iter_begin(root);
    end = json_object_iter_end(root);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *name = json_object_iter_peek_name(&it);
        unsigned u;

        v = json_object_iter_peek_value(&it);
        if (strcmp(name, "default_key") == 0) {
            if (!kh_cfg_string(&c->default_key, v, name, err, errlen))
                goto out;
        } else if (strcmp(name, "max_connections") == 0) {
            if (!kh_cfg_uint(&c->max_connections, v, name, 1, 4096, err, errlen))
                goto out;
        } else if (strcmp(name, "idle_timeout_ms") == 0) {
            if (!kh_cfg_uint(&c->idle_timeout_ms, v, name, 10, 86400000, err, errlen))
                goto out;
        } else if (strcmp(name, "io_timeout_ms") == 0) {
            if (!kh_cfg_uint(&c->io_timeout_ms, v, name, 10, 600000, err, errlen))
                goto out;
        } else if (strcmp(name, "verify_signatures") == 0) {
            if (!json_object_is_type(v, json_type_boolean)) {
                kh_signd_errf(err, errlen, "'verify_signatures' must be true or false");
                goto out;
            }
            c->skip_verify = !json_object_get_boolean(v);
        } else if (strcmp(name, "max_frame") == 0) {
            if (!kh_cfg_uint(&u, v, name, 64, (unsigned)c->max_frame, err, errlen))
                goto out;
            c->max_frame = u;
        } else if (strcmp(name, "attestation") == 0) {
            struct json_object_iterator ai, ae;
            if (!json_object_is_type(v, json_type_object)) {
                kh_signd_errf(err, errlen, "'attestation' must be an object");
                goto out;
            }
            ai = json_object_iter_begin(v);
            ae = json_object_iter_end(v);
            for (; !json_object_iter_equal(&ai, &ae); json_object_iter_next(&ai)) {
                const char *an = json_object_iter_peek_name(&ai);
                struct json_object *av = json_object_iter_peek_value(&ai);
                if (strcmp(an, "tcti") == 0) {
                    if (!kh_cfg_string(&c->tpm_tcti, av, "attestation.tcti", err, errlen))
                        goto out;
                } else if (strcmp(an, "pcrs") == 0) {
                    if (!kh_cfg_string(&c->tpm_pcrs, av, "attestation.pcrs", err, errlen))
                        goto out;
                } else {
                    kh_signd_errf(err, errlen, "unknown member attestation.%.64s", an);
                    goto out;
                }
            }
        } else if (strcmp(name, "keys") == 0) {
            struct json_object_iterator ki, ke;
            size_t n;
            if (!json_object_is_type(v, json_type_object)) {
                kh_signd_errf(err, errlen, "'keys' must be an object: {\"<label>\": {policy}}");
                goto out;
            }
            if (c->has_keys) {
                kh_signd_errf(err, errlen, "'keys' given twice");
                goto out;
            }
            n = (size_t)json_object_object_length(v);
            c->keys = calloc(n ? n : 1, sizeof *c->keys);
            if (!c->keys) {
                kh_signd_errf(err, errlen, "out of memory");
                goto out;
            }
            c->has_keys = true;
            ki = json_object_iter_begin(v);
            ke = json_object_iter_end(v);
            for (; !json_object_iter_equal(&ki, &ke); json_object_iter_next(&ki)) {
                const char *label = json_object_iter_peek_name(&ki);
                if (label[0] == '\0') {
                    kh_signd_errf(err, errlen, "keys: a key label is empty");
                    goto out;
                }
                c->nkeys++;
                if (!kh_cfg_key(&c->keys[c->nkeys - 1], label, json_object_iter_peek_value(&ki),
                                err, errlen))
                    goto out;
            }
        } else {
            kh_signd_errf(err, errlen, "unknown member '%.64s'", name);
            goto out;
        }
    }
    if (c->default_key && c->has_keys && !kh_signd_config_key(c, c->default_key)) {
        kh_signd_errf(err, errlen, "default_key '%s' is not in 'keys'", c->default_key);
        goto out;
    }
    ok = true;
out:
    json_object_put(root);
    json_tokener_free(tok);
    return ok;
}

bool kh_signd_config_load(struct kh_signd_config *c, const char *path, char *err, size_t errlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    bool ok = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        kh_signd_errf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return false;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > KH_SIGND_CONFIG_MAX) {
        kh_signd_errf(err, errlen, "%s is not a regular file of at most %d bytes", path,
                      KH_SIGND_CONFIG_MAX);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        kh_signd_errf(err, errlen, "out of memory");
        goto out;
    }
    while (len < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            kh_signd_errf(err, errlen, "cannot read %s: %s", path, r ? strerror(errno) : "short file");
            goto out;
        }
        len += (size_t)r;
    }
    buf[len] = '\0';
    if (!kh_signd_config_parse(c, buf, len, err, errlen)) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        kh_signd_errf(err, errlen, "%s: %s", path, why);
        goto out;
    }
    ok = true;
out:
    free(buf);
    close(fd);
    return ok;
}

/* ---- transaction checks ------------------------------------------------ */

bool kh_signd_policy_check_tx(const struct kh_signd_key_policy *p, const struct kh_eth_tx *tx,
                              char *why, size_t whylen)
{
    if (p->has_chain_ids) {
        size_t i;
        for (i = 0; i < p->nchain_ids; i++)
            if (kh_u256_cmp(&p->chain_ids[i], &tx->chain_id) == 0)
                break;
        if (i == p->nchain_ids) {
            char dec[80];
            kh_u256_to_dec(dec, sizeof dec, &tx->chain_id);
            kh_signd_errf(why, whylen, "chain id %s is not allowed for this key", dec);
            return false;
        }
    }
    if (p->has_to) {
        size_t i;
        if (!tx->has_to) {
            kh_signd_errf(why, whylen, "contract creation is not allowed for this key");
            return false;
        }
        for (i = 0; i < p->nto; i++)
            if (memcmp(p->to[i], tx->to, KH_ETH_ADDR_LEN) == 0)
                break;
        if (i == p->nto) {
            char a[43];
            kh_eth_checksum_address(a, tx->to);
            kh_signd_errf(why, whylen, "recipient %s is not allowed for this key", a);
            return false;
        }
    }
    if (p->has_selectors) {
        if (tx->data_len == 0) {
            if (!p->allow_empty_data) {
                kh_signd_errf(why, whylen,
                              "a transaction without call data is not allowed for this key");
                return false;
            }
        } else {
            size_t i;
            if (tx->data_len < 4) {
                kh_signd_errf(why, whylen, "call data shorter than a 4-byte selector");
                return false;
            }
            for (i = 0; i < p->nselectors; i++)
                if (memcmp(p->selectors[i], tx->data, 4) == 0)
                    break;
            if (i == p->nselectors) {
                kh_signd_errf(why, whylen, "selector 0x%02x%02x%02x%02x is not allowed for this key",
                              tx->data[0], tx->data[1], tx->data[2], tx->data[3]);
                return false;
            }
        }
    }
    if (p->has_max_value && kh_u256_cmp(&tx->value, &p->max_value) > 0) {
        kh_signd_errf(why, whylen, "value exceeds this key's max_value");
        return false;
    }
    return true;
}
