/* Readers for the shared test vector files: see vectors.h. */
#include "vectors.h"

#include <stdlib.h>
#include <string.h>

#include "testutil.h"

const char *kh_vec_jstr(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

json_object *kh_vec_jobj(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? v : NULL;
}

size_t kh_vec_unhex_to(uint8_t *out, size_t cap, const char *hex)
{
    size_t len;
    uint8_t *b = hex ? kh_test_unhex(hex, &len) : NULL;
    if (!b || len > cap) {
        kh_test_fail(__FILE__, __LINE__, "bad hex in test: %s", hex ? hex : "(null)");
        free(b);
        return 0;
    }
    memcpy(out, b, len);
    free(b);
    return len;
}

/* ---- Wycheproof ---- */

/* A group whose key was refused: every one of its cases must be invalid. */
static void group_refused(const char *file, size_t gi, json_object *tests, struct kh_vec_count *c)
{
    size_t n = tests ? json_object_array_length(tests) : 0;
    bool all_invalid = true;

    for (size_t ti = 0; ti < n; ti++) {
        json_object *t = json_object_array_get_idx(tests, ti);
        const char *result = kh_vec_jstr(t, "result");
        if (!result || strcmp(result, "invalid") != 0) {
            all_invalid = false;
            kh_test_fail(__FILE__, __LINE__, "%s group %zu: key refused, but tc %d is %s", file, gi,
                         json_object_get_int(kh_vec_jobj(t, "tcId")), result ? result : "(none)");
        }
    }
    if (!all_invalid)
        return;
    c->keys_refused++;
    c->total += (unsigned)n;
    c->invalid += (unsigned)n;
    c->invalid_rej += (unsigned)n;
}

static const struct kh_vec_wp_file kh_vec_wp_files[] = {
    { "ecdsa-secp256k1", "wycheproof_ecdsa_secp256k1_sha256_p1363_test.json", KH_OP_ECDSA, KH_ALG_SECP256K1 },
    { "ecdsa-p256", "wycheproof_ecdsa_secp256r1_sha256_p1363_test.json", KH_OP_ECDSA, KH_ALG_P256 },
    { "ecdsa-p384", "wycheproof_ecdsa_secp384r1_sha384_p1363_test.json", KH_OP_ECDSA, KH_ALG_P384 },
    { "ed25519", "wycheproof_ed25519_test.json", KH_OP_EDDSA, KH_ALG_ED25519 },
    { "rsa-pkcs1", "wycheproof_rsa_signature_2048_sha256_test.json", KH_OP_RSA_PKCS, KH_ALG_RSA },
    { "rsa-pss", "wycheproof_rsa_pss_2048_sha256_mgf1_32_test.json", KH_OP_RSA_PSS, KH_ALG_RSA },
};

void kh_vec_wp_register(const char *prefix, void (*fn)(const void *file))
{
    for (size_t i = 0; i < sizeof kh_vec_wp_files / sizeof kh_vec_wp_files[0]; i++) {
        char *name = NULL;
        if (asprintf(&name, "%s/%s", prefix, kh_vec_wp_files[i].name) < 0) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        kh_test_register_arg(name, fn, &kh_vec_wp_files[i]);   /* name lives as long as the run */
    }
}

void kh_vec_wycheproof(const char *file, const struct kh_vec_wp_ops *ops, void *ctx,
                       struct kh_vec_count *out)
{
    json_object *root = json_object_from_file(kh_test_vector_path(file));
    json_object *groups;
    struct kh_vec_count c = { 0 };
    int expect_total;

    if (!root) {
        kh_test_fail(__FILE__, __LINE__, "%s: cannot read %s", file, kh_test_vector_path(file));
        return;
    }
    expect_total = json_object_get_int(kh_vec_jobj(root, "numberOfTests"));
    groups = kh_vec_jobj(root, "testGroups");
    KH_CHECK(groups && json_object_is_type(groups, json_type_array));
    for (size_t gi = 0; groups && gi < json_object_array_length(groups); gi++) {
        json_object *g = json_object_array_get_idx(groups, gi);
        json_object *tests = kh_vec_jobj(g, "tests");

        switch (ops->group(ctx, g)) {
        case KH_VEC_GROUP_OK:
            break;
        case KH_VEC_GROUP_KEY_REFUSED:
            group_refused(file, gi, tests, &c);
            continue;
        default:
            kh_test_fail(__FILE__, __LINE__, "%s: group %zu not understood", file, gi);
            continue;
        }
        for (size_t ti = 0; tests && ti < json_object_array_length(tests); ti++) {
            json_object *t = json_object_array_get_idx(tests, ti);
            const char *result = kh_vec_jstr(t, "result");
            const char *msg_hex = kh_vec_jstr(t, "msg"), *sig_hex = kh_vec_jstr(t, "sig");
            int tc = json_object_get_int(kh_vec_jobj(t, "tcId"));
            size_t msg_len = 0, sig_len = 0;
            uint8_t *msg = msg_hex ? kh_test_unhex(msg_hex, &msg_len) : NULL;
            uint8_t *sig = sig_hex ? kh_test_unhex(sig_hex, &sig_len) : NULL;
            CK_RV rv;

            if (!msg || !sig || !result) {
                kh_test_fail(__FILE__, __LINE__, "%s tc %d: bad test", file, tc);
                free(msg);
                free(sig);
                continue;
            }
            rv = ops->verify(ctx, tc, msg, msg_len, sig, sig_len);
            c.total++;
            if (!strcmp(result, "valid")) {
                c.valid++;
                if (rv == CKR_OK)
                    c.valid_ok++;
                else
                    kh_test_fail(__FILE__, __LINE__, "%s tc %d (%s): valid, got 0x%lx", file, tc,
                                 kh_vec_jstr(t, "comment"), (unsigned long)rv);
            } else if (!strcmp(result, "invalid")) {
                c.invalid++;
                /* a clean rejection, not an internal error */
                if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
                    c.invalid_rej++;
                else
                    kh_test_fail(__FILE__, __LINE__, "%s tc %d (%s): invalid, got 0x%lx", file, tc,
                                 kh_vec_jstr(t, "comment"), (unsigned long)rv);
            } else {
                c.acceptable++;
                if (rv == CKR_OK)
                    c.acceptable_ok++;
                else if (rv != CKR_SIGNATURE_INVALID && rv != CKR_SIGNATURE_LEN_RANGE)
                    kh_test_fail(__FILE__, __LINE__, "%s tc %d (%s): acceptable, got 0x%lx", file, tc,
                                 kh_vec_jstr(t, "comment"), (unsigned long)rv);
            }
            free(msg);
            free(sig);
        }
        if (ops->group_end)
            ops->group_end(ctx);
    }
    KH_CHECK(c.total > 0 && (int)c.total == expect_total);
    printf("# %s: %u cases: valid %u/%u accepted, invalid %u/%u rejected, acceptable %u (%u accepted)",
           file, c.total, c.valid_ok, c.valid, c.invalid_rej, c.invalid, c.acceptable, c.acceptable_ok);
    if (c.keys_refused)
        printf(", %u groups' keys refused", c.keys_refused);
    printf("\n");
    if (out)
        *out = c;
    json_object_put(root);
}

static kh_hash hash_by_name(const char *s)
{
    static const struct { const char *name; kh_hash h; } t[] = {
        { "SHA-1", KH_HASH_SHA1 }, { "SHA-224", KH_HASH_SHA224 }, { "SHA-256", KH_HASH_SHA256 },
        { "SHA-384", KH_HASH_SHA384 }, { "SHA-512", KH_HASH_SHA512 },
    };

    for (size_t i = 0; s && i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name))
            return t[i].h;
    return KH_HASH_NONE;
}

/* n or e of a Wycheproof RSA key (hex, maybe with leading zero bytes). */
static bool rsa_int(uint8_t *out, size_t cap, size_t *len, const char *hex)
{
    size_t n = 0, off = 0;
    uint8_t *b = hex ? kh_test_unhex(hex, &n) : NULL;

    if (!b)
        return false;
    while (off < n && b[off] == 0)
        off++;
    if (n - off > cap) {
        free(b);
        return false;
    }
    memcpy(out, b + off, n - off);
    *len = n - off;
    free(b);
    return true;
}

bool kh_vec_wp_key(struct kh_vec_wp_key *k, json_object *g, kh_sigop op, kh_alg alg)
{
    json_object *pk = kh_vec_jobj(g, "publicKey");
    const char *s;

    memset(k, 0, sizeof *k);
    k->op = op;
    k->pub.alg = alg;
    k->hash = hash_by_name(kh_vec_jstr(g, "sha"));
    if (!pk)
        return false;
    switch (op) {
    case KH_OP_ECDSA:
    case KH_OP_EDDSA:
        s = kh_vec_jstr(pk, op == KH_OP_ECDSA ? "uncompressed" : "pk");
        if (!s || (op == KH_OP_ECDSA && k->hash == KH_HASH_NONE))
            return false;
        k->pub.point_len = kh_vec_unhex_to(k->pub.point, sizeof k->pub.point, s);
        return true;
    case KH_OP_RSA_PKCS:
    case KH_OP_RSA_PSS:
        if (k->hash == KH_HASH_NONE ||
            !rsa_int(k->pub.n, sizeof k->pub.n, &k->pub.n_len, kh_vec_jstr(pk, "modulus")) ||
            !rsa_int(k->pub.e, sizeof k->pub.e, &k->pub.e_len, kh_vec_jstr(pk, "publicExponent")))
            return false;
        if (op == KH_OP_RSA_PSS) {
            s = kh_vec_jstr(g, "mgf");
            if (!s || strcmp(s, "MGF1") != 0)
                return false;
            k->pss.pss_hash = k->hash;
            k->pss.pss_mgf_hash = hash_by_name(kh_vec_jstr(g, "mgfSha"));
            k->pss.pss_salt_len = (size_t)json_object_get_int(kh_vec_jobj(g, "sLen"));
        }
        return true;
    default:
        return false;
    }
}

const kh_sigparams *kh_vec_wp_params(const struct kh_vec_wp_key *k)
{
    return k->op == KH_OP_RSA_PSS ? &k->pss : NULL;
}

const uint8_t *kh_vec_wp_data(const struct kh_vec_wp_key *k, uint8_t buf[KH_VEC_WP_DATA_MAX],
                              const uint8_t *msg, size_t msg_len, size_t *len)
{
    size_t plen = 0;
    const uint8_t *pfx;

    if (k->op == KH_OP_EDDSA) {
        *len = msg_len;
        return msg;
    }
    if (k->op == KH_OP_RSA_PKCS) {
        pfx = kh_hash_digestinfo_prefix(k->hash, &plen);
        memcpy(buf, pfx, plen);
    }
    KH_CHECK_RV(kh_hash_oneshot(buf + plen, k->hash, msg, msg_len), CKR_OK);
    *len = plen + kh_hash_len(k->hash);
    return buf;
}

/* ---- BIP-340 ---- */

bool kh_vec_bip340_next(FILE *f, struct kh_vec_bip340_row *row)
{
    while (fgets(row->line, sizeof row->line, f)) {
        char *fld[8] = { NULL }, *p = row->line;
        int n = 0;

        row->line[strcspn(row->line, "\r\n")] = 0;
        if (!strncmp(row->line, "index,", 6) || !row->line[0])
            continue;
        while (n < 8 && p)
            fld[n++] = strsep(&p, ",");
        if (n < 7) {
            kh_test_fail(__FILE__, __LINE__, "bip340: short row: %s", fld[0]);
            continue;
        }
        row->index = fld[0];
        row->comment = fld[7] ? fld[7] : "";
        row->sk_len = kh_vec_unhex_to(row->sk, sizeof row->sk, fld[1]);
        kh_vec_unhex_to(row->pk, sizeof row->pk, fld[2]);
        memset(row->aux, 0, sizeof row->aux);
        kh_vec_unhex_to(row->aux, sizeof row->aux, fld[3]);
        row->msg_len = kh_vec_unhex_to(row->msg, sizeof row->msg, fld[4]);
        kh_vec_unhex_to(row->sig, sizeof row->sig, fld[5]);
        row->expect = !strcmp(fld[6], "TRUE");
        return true;
    }
    return false;
}
