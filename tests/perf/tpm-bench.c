/*
 * tpm-bench: P-256 key generation and warm-key signing throughput of any
 * PKCS#11 module whose token makes keys in a TPM (keyhold with
 * default_backend = tpm, tpm2-pkcs11), through the standard API only, so
 * both run the same calls. Timings are printed, never asserted.
 *
 * Usage: kh-tpm-bench MODULE TOKEN-LABEL USER-PIN [SIGNS [KEYGENS]]
 *
 * One R/W session, one login. Keygen: KEYGENS token key pairs with
 * CKM_EC_KEY_PAIR_GEN (P-256). Sign: one of those keys, CKM_ECDSA over a
 * 32-byte digest, SIGNS times after 10 warm-up signatures; the first
 * signature is checked with OpenSSL. Output: one line per figure.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11load.h"

static int bench_fail(const char *what, CK_RV rv)
{
    fprintf(stderr, "tpm-bench: %s: %s\n", what, p11l_rv_str(rv));
    return 1;
}

int main(int argc, char **argv)
{
    void *dl = NULL;
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    CK_RV rv;

    if (argc < 4) {
        fprintf(stderr, "usage: %s MODULE TOKEN-LABEL USER-PIN [SIGNS [KEYGENS]]\n", argv[0]);
        return 2;
    }
    long nsign = argc > 4 ? atol(argv[4]) : 2000;
    long ngen = argc > 5 ? atol(argv[5]) : 20;
    bool destroy = getenv("KH_BENCH_DESTROY") && atoi(getenv("KH_BENCH_DESTROY"));
    if (nsign < 1 || ngen < 1) {
        fprintf(stderr, "tpm-bench: SIGNS and KEYGENS must be positive\n");
        return 2;
    }
    rv = p11l_load(&dl, &fl, argv[1]);
    if (rv != CKR_OK)
        return bench_fail("load", rv);
    CK_C_INITIALIZE_ARGS ia = { .flags = CKF_OS_LOCKING_OK };
    rv = fl->C_Initialize(&ia);
    if (rv != CKR_OK)
        return bench_fail("C_Initialize", rv);
    rv = p11l_find_slot(fl, &slot, argv[2]);
    if (rv != CKR_OK)
        return bench_fail("find token", rv);
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        return bench_fail("C_OpenSession", rv);
    rv = p11l_login(fl, s, argv[3]);
    if (rv != CKR_OK)
        return bench_fail("C_Login", rv);

    double t0 = p11l_now_us();
    for (long i = 0; i < ngen; i++) {
        char label[64];
        uint8_t id[8];
        snprintf(label, sizeof label, "bench-%ld-%ld", (long)p11l_now_us(), i);
        for (int j = 0; j < 8; j++)
            id[j] = (uint8_t)(i >> (8 * j));
        rv = p11l_gen_keypair(fl, &pub, &priv, s, P11L_P256, label, id, sizeof id);
        if (rv != CKR_OK)
            return bench_fail("C_GenerateKeyPair", rv);
        if (i + 1 < ngen && destroy) {
            /* tpm2-pkcs11 keeps every new key loaded in the TPM: without a
             * resource manager the TPM is full after two keys. */
            fl->C_DestroyObject(s, priv);
            fl->C_DestroyObject(s, pub);
        }
    }
    double t1 = p11l_now_us();
    printf("keygen P-256: %ld keys in %.2f s = %.1f keys/s\n", ngen, (t1 - t0) / 1e6,
           ngen / ((t1 - t0) / 1e6));

    uint8_t digest[32], sig[128];
    CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
    uint8_t *point = NULL;
    size_t point_len = 0;
    rv = p11l_get_attr(fl, &point, &point_len, s, pub, CKA_EC_POINT);
    if (rv != CKR_OK)
        return bench_fail("CKA_EC_POINT", rv);
    for (long i = -10; i < nsign; i++) {
        if (i == 0)
            t0 = p11l_now_us();
        memset(digest, 0, sizeof digest);
        memcpy(digest, &i, sizeof i);
        CK_ULONG sl = sizeof sig;
        rv = fl->C_SignInit(s, &m, priv);
        if (rv == CKR_OK)
            rv = fl->C_Sign(s, digest, sizeof digest, sig, &sl);
        if (rv != CKR_OK)
            return bench_fail("C_Sign", rv);
        if (i == -10 && !p11l_ossl_verify(P11L_P256, point, point_len, digest, sizeof digest, sig, sl)) {
            fprintf(stderr, "tpm-bench: the signature does not verify with OpenSSL\n");
            return 1;
        }
    }
    t1 = p11l_now_us();
    printf("sign P-256 warm key (CKM_ECDSA): %ld signatures in %.2f s = %.1f ops/s\n", nsign,
           (t1 - t0) / 1e6, nsign / ((t1 - t0) / 1e6));
    free(point);
    fl->C_Logout(s);
    fl->C_CloseSession(s);
    fl->C_Finalize(NULL);
    p11l_unload(dl);
    return 0;
}
