/*
 * tpm-restart: TPM keys across TPM restarts, driven by tpm-restart.sh, which
 * stops, kills, freezes and restarts the swtpm.
 *
 *   kh-tpm-restart make     make token "restart" with TPM keys (P-256 x 3,
 *                           P-384, RSA-2048), sign with each, exit
 *   kh-tpm-restart sign     sign with every key once (a new process); exit 0
 *                           only if all verify
 *   kh-tpm-restart serve    one process for the whole script: reads commands
 *                           on stdin, answers one line on stdout each:
 *       sign                sign with every key once:
 *                           "result ok=N device_error=N other=N"
 *       burst               a thread signs in a loop until "stop" arrives;
 *                           meanwhile the script takes the TPM away and
 *                           brings it back, then sends "up" and "stop":
 *                           "result ok=N device_error=N other=N after_up_fail=N"
 *                           where after_up_fail counts failures of calls that
 *                           started after "up" (must be 0: the module
 *                           reconnects and reloads by itself)
 *       vaultgen            generate a vault P-256 key pair (session objects):
 *                           "result rv=CKR_..." (on this TPM-bound token the
 *                           TPM's random bytes go into it: no TPM, no key)
 *       quit                C_Finalize and exit
 *
 * Every signature is checked with OpenSSL (a signature that does not verify
 * counts as "other"). The longest call is printed, never asserted; a call
 * that never returns trips alarm() and fails the test.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "p11load.h"

#define RS_TOKEN "restart"
#define RS_SO_PIN "87654321"
#define RS_PIN "12345678"
#define RS_NKEYS 5
#define RS_ALARM_S 600

static CK_FUNCTION_LIST_PTR fl;
static CK_SESSION_HANDLE sess;
static CK_OBJECT_HANDLE privs[RS_NKEYS], pubs[RS_NKEYS];

static const struct {
    const char *label;
    int kind; /* 0 P-256, 1 P-384, 2 RSA-2048 */
} rs_keys[RS_NKEYS] = {
    { "r-p256-a", 0 }, { "r-p256-b", 0 }, { "r-p256-c", 0 }, { "r-p384", 1 }, { "r-rsa", 2 },
};

static CK_RV rs_gen(int i)
{
    static const uint8_t p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
    static const uint8_t p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
    static CK_BYTE f4[] = { 1, 0, 1 };
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG backend = CKV_KH_BACKEND_TPM, bits = 2048;
    CK_MECHANISM mech = { rs_keys[i].kind == 2 ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    const char *l = rs_keys[i].label;
    CK_ATTRIBUTE pt[5] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_VERIFY, &yes, sizeof yes },
        { CKA_LABEL, (void *)l, strlen(l) },
    };
    CK_ULONG np = 3;
    if (rs_keys[i].kind == 2) {
        pt[np++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof bits };
        pt[np++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, f4, sizeof f4 };
    } else if (rs_keys[i].kind == 1) {
        pt[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)p384, sizeof p384 };
    } else {
        pt[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)p256, sizeof p256 };
    }
    CK_ATTRIBUTE vt[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_PRIVATE, &yes, sizeof yes },
        { CKA_SIGN, &yes, sizeof yes },
        { CKA_LABEL, (void *)l, strlen(l) },
        { CKA_KH_BACKEND, &backend, sizeof backend },
    };
    return fl->C_GenerateKeyPair(sess, &mech, pt, np, vt, 5, &pubs[i], &privs[i]);
}

/* C_Verify in the module and, for EC keys, OpenSSL on the public point. */
static bool rs_verified(CK_SESSION_HANDLE s, int i, CK_MECHANISM *m, const uint8_t *d, size_t dl,
                        const uint8_t *sig, CK_ULONG sl)
{
    if (rs_keys[i].kind == 0) {
        uint8_t *pt = NULL;
        size_t pl = 0;
        bool ok = p11l_get_attr(fl, &pt, &pl, s, pubs[i], CKA_EC_POINT) == CKR_OK &&
                  p11l_ossl_verify(P11L_P256, pt, pl, d, dl, sig, sl);
        free(pt);
        return ok;
    }
    CK_RV rv = fl->C_VerifyInit(s, m, pubs[i]);
    if (rv == CKR_OK)
        rv = fl->C_Verify(s, (CK_BYTE_PTR)d, dl, (CK_BYTE_PTR)sig, sl);
    return rv == CKR_OK;
}

/* Sign a random digest with key i. Out: *verified. */
static CK_RV rs_sign(CK_SESSION_HANDLE s, int i, bool *verified, double *us)
{
    uint8_t d[32], sig[512];
    CK_ULONG sl = sizeof sig;
    CK_MECHANISM m = { rs_keys[i].kind == 2 ? CKM_SHA256_RSA_PKCS : CKM_ECDSA, NULL, 0 };
    *verified = false;
    if (getrandom(d, sizeof d, 0) != sizeof d)
        return CKR_FUNCTION_FAILED;
    double t0 = p11l_now_us();
    CK_RV rv = fl->C_SignInit(s, &m, privs[i]);
    if (rv == CKR_OK)
        rv = fl->C_Sign(s, d, sizeof d, sig, &sl);
    *us = p11l_now_us() - t0;
    if (rv == CKR_OK)
        *verified = rs_verified(s, i, &m, d, sizeof d, sig, sl);
    return rv;
}

struct tally {
    long ok, device_error, other, after_up_fail;
    double max_us;
};

static void tally_add(struct tally *t, CK_RV rv, bool verified, double us, bool after_up)
{
    if (us > t->max_us)
        t->max_us = us;
    if (rv == CKR_OK && verified) {
        t->ok++;
        return;
    }
    if (rv == CKR_DEVICE_ERROR)
        t->device_error++;
    else {
        t->other++;
        fprintf(stderr, "unexpected: %s (verified %d)\n", p11l_rv_str(rv), verified);
    }
    if (after_up)
        t->after_up_fail++;
}

static void rs_sign_all(struct tally *t)
{
    for (int i = 0; i < RS_NKEYS; i++) {
        bool v;
        double us;
        CK_RV rv = rs_sign(sess, i, &v, &us);
        tally_add(t, rv, v, us, false);
    }
}

static CK_RV rs_open(bool make)
{
    CK_SLOT_ID slot;
    CK_C_INITIALIZE_ARGS ia = { .flags = CKF_OS_LOCKING_OK };
    CK_RV rv = fl->C_Initialize(&ia);
    if (rv == CKR_OK && make)
        rv = p11l_make_token(fl, &slot, RS_TOKEN, RS_SO_PIN, RS_PIN);
    if (rv == CKR_OK)
        rv = p11l_find_slot(fl, &slot, RS_TOKEN);
    if (rv == CKR_OK)
        rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sess);
    if (rv == CKR_OK)
        rv = p11l_login(fl, sess, RS_PIN);
    for (int i = 0; i < RS_NKEYS && rv == CKR_OK && !make; i++) {
        rv = p11l_find_one(fl, &privs[i], sess, CKO_PRIVATE_KEY, rs_keys[i].label);
        if (rv == CKR_OK)
            rv = p11l_find_one(fl, &pubs[i], sess, CKO_PUBLIC_KEY, rs_keys[i].label);
    }
    return rv;
}

/* ---- serve: burst ---- */

static atomic_bool burst_stop, burst_up;
static struct tally burst_tally;

static void *burst_run(void *arg)
{
    CK_SESSION_HANDLE s = *(CK_SESSION_HANDLE *)arg;
    for (int n = 0; !atomic_load(&burst_stop); n++) {
        bool v, up = atomic_load(&burst_up);
        double us;
        CK_RV rv = rs_sign(s, n % RS_NKEYS, &v, &us);
        tally_add(&burst_tally, rv, v, us, up);
        if (rv != CKR_OK)
            usleep(20000); /* while the TPM is away: do not spin */
    }
    return NULL;
}

static void print_tally(const char *what, const struct tally *t)
{
    printf("result ok=%ld device_error=%ld other=%ld after_up_fail=%ld max_call_ms=%.0f (%s)\n", t->ok,
           t->device_error, t->other, t->after_up_fail, t->max_us / 1e3, what);
    fflush(stdout);
}

static int serve(void)
{
    char line[64];
    CK_RV rv = rs_open(false);
    if (rv != CKR_OK) {
        fprintf(stderr, "serve: open: %s\n", p11l_rv_str(rv));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        if (strcmp(line, "sign") == 0) {
            struct tally t = { 0 };
            rs_sign_all(&t);
            print_tally("sign", &t);
        } else if (strcmp(line, "burst") == 0) {
            pthread_t tid;
            CK_SESSION_HANDLE bs;
            CK_SLOT_ID slot;
            memset(&burst_tally, 0, sizeof burst_tally);
            atomic_store(&burst_stop, false);
            atomic_store(&burst_up, false);
            rv = p11l_find_slot(fl, &slot, RS_TOKEN);
            if (rv == CKR_OK)
                rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &bs);
            if (rv != CKR_OK || pthread_create(&tid, NULL, burst_run, &bs) != 0) {
                printf("result error %s\n", p11l_rv_str(rv));
                fflush(stdout);
                continue;
            }
            printf("started\n");
            fflush(stdout);
            while (fgets(line, sizeof line, stdin)) {
                line[strcspn(line, "\n")] = '\0';
                if (strcmp(line, "up") == 0) {
                    atomic_store(&burst_up, true);
                    printf("noted\n");
                    fflush(stdout);
                } else if (strcmp(line, "stop") == 0) {
                    break;
                }
            }
            atomic_store(&burst_stop, true);
            pthread_join(tid, NULL);
            fl->C_CloseSession(bs);
            print_tally("burst", &burst_tally);
        } else if (strcmp(line, "vaultgen") == 0) {
            static const uint8_t p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
            CK_BBOOL yes = CK_TRUE;
            CK_ULONG vault = CKV_KH_BACKEND_VAULT;
            CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
            CK_ATTRIBUTE pt[] = { { CKA_EC_PARAMS, (void *)p256, sizeof p256 } };
            CK_ATTRIBUTE vt[] = { { CKA_SIGN, &yes, sizeof yes }, { CKA_KH_BACKEND, &vault, sizeof vault } };
            CK_OBJECT_HANDLE pub, priv;
            rv = fl->C_GenerateKeyPair(sess, &mech, pt, 1, vt, 2, &pub, &priv);
            printf("result rv=%s\n", p11l_rv_str(rv));
            fflush(stdout);
        } else if (strcmp(line, "quit") == 0) {
            break;
        }
    }
    rv = fl->C_Finalize(NULL);
    printf("finalized %s\n", p11l_rv_str(rv));
    return rv == CKR_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    void *dl;
    const char *path = p11l_module_path();
    if (argc != 2 || !path)
        return 2;
    alarm(RS_ALARM_S);
    CK_RV rv = p11l_load(&dl, &fl, path);
    if (rv != CKR_OK)
        return 1;
    int ret = 0;
    if (strcmp(argv[1], "make") == 0) {
        struct tally t = { 0 };
        rv = rs_open(true);
        for (int i = 0; i < RS_NKEYS && rv == CKR_OK; i++)
            rv = rs_gen(i);
        if (rv != CKR_OK) {
            fprintf(stderr, "make: %s\n", p11l_rv_str(rv));
            return 1;
        }
        rs_sign_all(&t);
        print_tally("make", &t);
        ret = t.ok == RS_NKEYS ? 0 : 1;
        fl->C_Finalize(NULL);
    } else if (strcmp(argv[1], "sign") == 0) {
        struct tally t = { 0 };
        rv = rs_open(false);
        if (rv != CKR_OK) {
            fprintf(stderr, "sign: %s\n", p11l_rv_str(rv));
            return 1;
        }
        rs_sign_all(&t);
        print_tally("sign", &t);
        ret = t.ok == RS_NKEYS ? 0 : 1;
        fl->C_Finalize(NULL);
    } else if (strcmp(argv[1], "serve") == 0) {
        ret = serve();
    } else {
        return 2;
    }
    p11l_unload(dl);
    return ret;
}
