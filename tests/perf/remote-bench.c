/*
 * remote-bench: signatures per second through the remote chain beside
 * direct vault signing of the same keys, in one run. Printed, never
 * asserted. Run by tests/integration/remote-chain.sh after its checks, with
 * the stores and signers it set up:
 *
 *   remote-bench SIGNER_STORE CLIENT_STORE UNIX_URL TCP_URL [UNCHECKED_URL]
 *
 * For each key type (P-256 ECDSA, secp256k1 ECDSA, Ed25519 EdDSA over 32
 * bytes), one thread, one session, for KH_BENCH_SECONDS (default 1) each:
 *   vault sign    C_Sign on the vault key k-<type> in the signer's store
 *   verify        the primitive that checks one signature, with the library
 *                 and key form the module's remote backend and keyhold-signd
 *                 use (OpenSSL EC_KEY, libsecp256k1, libsodium), key parsed
 *                 once: what each check adds to a remote signature
 *   signd raw     the protocol's sign straight to keyhold-signd over the
 *                 unix socket (no client module): server + transport cost
 *   chain unix    C_Sign on the remote key u-<type> (client store, unix)
 *   chain tcp     C_Sign on the remote key t-<type> (client store, TCP)
 *   unchecked     C_Sign on n-<type>: unix, through a keyhold-signd with
 *                 "verify_signatures": false (only with UNCHECKED_URL)
 * and the ceilings those primitive costs allow a remote signature at one
 * thread with nothing else to pay (no transport, no encoding): vault sign /
 * (vault sign + 2 verify) with keyhold-signd's check, and vault sign /
 * (vault sign + verify) without it.
 * Env: KEYHOLD_MODULE, KEYHOLD_PIN (both tokens' user PIN).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define OPENSSL_SUPPRESS_DEPRECATED
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <secp256k1.h>
#include <sodium.h>

#include "p11load.h"
#include "wire.h"

enum { T_P256, T_K1, T_ED, T_N };
static const char *tnames[T_N] = { "p256", "secp256k1", "ed25519" };
static const char *talgs[T_N] = { "ecdsa", "ecdsa", "eddsa" };

static double seconds = 1.0;
static CK_FUNCTION_LIST_PTR fl;

/* Signatures (or verifications) per second on key with mech over 32 bytes. */
static double rate(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech, bool verify,
                   const uint8_t *sig_in, CK_ULONG sig_in_len, CK_RV *err)
{
    uint8_t data[32] = { 1, 2, 3 }, sig[128];
    CK_MECHANISM m = { mech, NULL, 0 };
    double t0 = p11l_now_us(), end = t0 + seconds * 1e6, now;
    unsigned long n = 0;
    *err = CKR_OK;
    do {
        CK_ULONG sl = sizeof sig;
        CK_RV rv = verify ? fl->C_VerifyInit(s, &m, key) : fl->C_SignInit(s, &m, key);
        if (rv == CKR_OK)
            rv = verify ? fl->C_Verify(s, data, 32, (CK_BYTE_PTR)sig_in, sig_in_len)
                        : fl->C_Sign(s, data, 32, sig, &sl);
        if (rv != CKR_OK) {
            *err = rv;
            return 0;
        }
        n++;
        now = p11l_now_us();
    } while (now < end);
    return n / ((now - t0) / 1e6);
}

/* Verifications per second of one signature over 32 bytes, as the checks do it. */
static double verify_rate(int t)
{
    uint8_t msg[32] = { 1, 2, 3 }, sig[64], pk[32], sk[32] = { 7, 7, 7 };
    double t0, end, now;
    unsigned long n = 0;
    bool ok = true;
    EC_KEY *ec = NULL;
    ECDSA_SIG *es = NULL;
    secp256k1_context *ctx = NULL;
    secp256k1_pubkey k1;
    secp256k1_ecdsa_signature ks;

    switch (t) {
    case T_P256:
        ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
        if (!ec || !EC_KEY_generate_key(ec) || !(es = ECDSA_do_sign(msg, 32, ec)))
            ok = false;
        break;
    case T_K1:
        ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
        if (!ctx || !secp256k1_ec_pubkey_create(ctx, &k1, sk) ||
            !secp256k1_ecdsa_sign(ctx, &ks, msg, sk, NULL, NULL))
            ok = false;
        break;
    default: {
        uint8_t ssk[64];
        if (sodium_init() < 0 || crypto_sign_ed25519_keypair(pk, ssk) != 0 ||
            crypto_sign_ed25519_detached(sig, NULL, msg, 32, ssk) != 0)
            ok = false;
        sodium_memzero(ssk, sizeof ssk);
        break;
    }
    }
    t0 = p11l_now_us();
    end = t0 + seconds * 1e6;
    do {
        switch (t) {
        case T_P256: ok = ok && ECDSA_do_verify(msg, 32, es, ec) == 1; break;
        case T_K1: ok = ok && secp256k1_ecdsa_verify(ctx, &ks, msg, &k1); break;
        default: ok = ok && crypto_sign_ed25519_verify_detached(sig, msg, 32, pk) == 0; break;
        }
        n++;
        now = p11l_now_us();
    } while (ok && now < end);
    ECDSA_SIG_free(es);
    EC_KEY_free(ec);
    if (ctx)
        secp256k1_context_destroy(ctx);
    return ok ? n / ((now - t0) / 1e6) : 0;
}

static CK_MECHANISM_TYPE mech_of(int t)
{
    return t == T_ED ? CKM_EDDSA : CKM_ECDSA;
}

static CK_SESSION_HANDLE open_token(const char *store, const char *label, const char *pin)
{
    setenv("KEYHOLD_STORE", store, 1);
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = fl->C_Initialize(&args);
    if (rv == CKR_OK)
        rv = p11l_find_slot(fl, &slot, label);
    if (rv == CKR_OK)
        rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv == CKR_OK)
        rv = p11l_login(fl, s, pin);
    if (rv != CKR_OK) {
        fprintf(stderr, "remote-bench: token %s in %s: %s\n", label, store, p11l_rv_str(rv));
        exit(1);
    }
    return s;
}

/* The protocol's sign sent straight to the signer, one connection. */
static double raw_rate(const char *url_s, const char *key, const char *alg)
{
    kh_wire_url u;
    kh_wire_conn *c;
    if (kh_wire_url_parse(&u, NULL, 0, url_s) != KH_WIRE_OK ||
        kh_wire_connect(&c, &u, NULL, kh_wire_now_ms() + 5000) != KH_WIRE_OK)
        return 0;
    char req[512];
    int len = snprintf(req, sizeof req,
                       "{\"method\":\"sign\",\"params\":{\"key\":\"%s\",\"algorithm\":\"%s\",\"%s\":"
                       "\"0102030000000000000000000000000000000000000000000000000000000000\"},\"id\":1}",
                       key, alg, strcmp(alg, "eddsa") ? "digest" : "message");
    double t0 = p11l_now_us(), end = t0 + seconds * 1e6, now;
    unsigned long n = 0;
    do {
        char *buf = NULL;
        size_t bl;
        if (kh_wire_send(c, req, (size_t)len, kh_wire_now_ms() + 5000) != KH_WIRE_OK ||
            kh_wire_recv(c, &buf, &bl, KH_WIRE_FRAME_MAX, kh_wire_now_ms() + 5000) != KH_WIRE_OK ||
            !strstr(buf, "\"result\"")) {
            free(buf);
            kh_wire_close(c);
            return 0;
        }
        free(buf);
        n++;
        now = p11l_now_us();
    } while (now < end);
    kh_wire_close(c);
    return n / ((now - t0) / 1e6);
}

static double us(double rate)
{
    return rate > 0 ? 1e6 / rate : 0;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: remote-bench SIGNER_STORE CLIENT_STORE UNIX_URL TCP_URL [UNCHECKED_URL]\n");
        return 2;
    }
    const char *pin = getenv("KEYHOLD_PIN"), *secs = getenv("KH_BENCH_SECONDS");
    const char *mod = p11l_module_path();
    bool unchecked = argc == 6;
    if (!pin || !mod)
        return 2;
    if (secs)
        seconds = atof(secs);
    void *dl;
    if (p11l_load(&dl, &fl, mod) != CKR_OK)
        return 1;
    double vs[T_N], vv[T_N], raw[T_N], cu[T_N], ct[T_N], cn[T_N];
    CK_RV err;

    /* the signer's store: direct vault signing */
    CK_SESSION_HANDLE s = open_token(argv[1], "vault", pin);
    for (int t = 0; t < T_N; t++) {
        char label[64];
        snprintf(label, sizeof label, "k-%s", tnames[t]);
        CK_OBJECT_HANDLE priv;
        if (p11l_find_one(fl, &priv, s, CKO_PRIVATE_KEY, label) != CKR_OK)
            return 1;
        vs[t] = rate(s, priv, mech_of(t), false, NULL, 0, &err);
        vv[t] = verify_rate(t);
    }
    fl->C_Finalize(NULL);

    for (int t = 0; t < T_N; t++) {
        char key[64];
        snprintf(key, sizeof key, "k-%s", tnames[t]);
        raw[t] = raw_rate(argv[3], key, talgs[t]);
    }

    /* the client's store: the same keys as remote keys */
    s = open_token(argv[2], "client", pin);
    for (int t = 0; t < T_N; t++) {
        static const char *const prefix[3] = { "u", "t", "n" };
        double *out[3] = { &cu[t], &ct[t], &cn[t] };
        for (int c = 0; c < 3; c++) {
            char label[64];
            CK_OBJECT_HANDLE k;
            *out[c] = 0;
            if (c == 2 && !unchecked)
                continue;
            snprintf(label, sizeof label, "%s-%s", prefix[c], tnames[t]);
            if (p11l_find_one(fl, &k, s, CKO_PRIVATE_KEY, label) != CKR_OK)
                return 1;
            *out[c] = rate(s, k, mech_of(t), false, NULL, 0, &err);
            if (err != CKR_OK)
                fprintf(stderr, "%s: %s\n", label, p11l_rv_str(err));
        }
    }
    fl->C_Finalize(NULL);
    p11l_unload(dl);

    printf("remote-bench: signatures/s, 1 thread, %.1f s per cell\n", seconds);
    printf("%-10s %10s %10s %10s %10s %10s %10s | %10s %10s | %9s %9s\n", "key", "vault sign",
           "verify", "signd raw", "chain unix", "chain tcp", "unchecked", "unix/vault",
           "unchk/vault", "ceil(2v)", "ceil(1v)");
    for (int t = 0; t < T_N; t++) {
        double S = us(vs[t]), V = us(vv[t]);
        printf("%-10s %10.0f %10.0f %10.0f %10.0f %10.0f %10.0f | %10.2f %10.2f | %9.2f %9.2f\n",
               tnames[t], vs[t], vv[t], raw[t], cu[t], ct[t], cn[t],
               vs[t] > 0 ? cu[t] / vs[t] : 0, vs[t] > 0 ? cn[t] / vs[t] : 0,
               S + 2 * V > 0 ? S / (S + 2 * V) : 0, S + V > 0 ? S / (S + V) : 0);
    }
    printf("per signature (us):\n");
    for (int t = 0; t < T_N; t++)
        printf("  %-10s vault %.1f, verify %.1f, signd raw %.1f, chain unix %.1f, tcp %.1f, "
               "unchecked %.1f\n", tnames[t], us(vs[t]), us(vv[t]), us(raw[t]), us(cu[t]),
               us(ct[t]), us(cn[t]));
    return 0;
}
