/*
 * Tests of the tpm backend's units that need no TPM: the rc translator and
 * its classes, PCR selections, blob formats, the SRK template and storage-key
 * check, public keys of TPM public areas, keyhold's swtpm TCTI (its
 * configuration and its deadlines, against a socket of the test's own that
 * never answers), and the deadline loop around ESYS commands. Everything
 * that needs a TPM is tested on swtpm by the tpm-* integration tests.
 */
#include "tpm.h"
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <tss2/tss2_mu.h>

static void test_rc_base(void)
{
    KH_CHECK(kh_tpm_rc_base(0x9a2) == TPM2_RC_BAD_AUTH);            /* session 1 */
    KH_CHECK(kh_tpm_rc_base(0x18b) == TPM2_RC_HANDLE);              /* handle 1 */
    KH_CHECK(kh_tpm_rc_base(0x1c4) == TPM2_RC_VALUE);               /* parameter 1 */
    KH_CHECK(kh_tpm_rc_base(TPM2_RC_OBJECT_MEMORY) == TPM2_RC_OBJECT_MEMORY);
    KH_CHECK(kh_tpm_rc_base(TPM2_RC_LOCKOUT) == TPM2_RC_LOCKOUT);
    KH_CHECK(kh_tpm_rc_base(TSS2_TCTI_RC_IO_ERROR) == TSS2_TCTI_RC_IO_ERROR);
}

static void test_translator(void)
{
    static const struct {
        TSS2_RC rc;
        kh_tpm_use use;
        CK_RV want;
    } cases[] = {
        { TPM2_RC_LOCKOUT, KH_TPM_USE_PIN, CKR_PIN_LOCKED },
        { TPM2_RC_LOCKOUT, KH_TPM_USE_KEY, CKR_PIN_LOCKED },
        { 0x98e /* AUTH_FAIL, session 1 */, KH_TPM_USE_PIN, CKR_PIN_INCORRECT },
        { 0x98e, KH_TPM_USE_KEY, CKR_DEVICE_ERROR },
        { 0x98e, KH_TPM_USE_IMPORT, CKR_ATTRIBUTE_VALUE_INVALID },
        { 0x9a2 /* BAD_AUTH */, KH_TPM_USE_PIN, CKR_PIN_INCORRECT },
        { 0x99d /* POLICY_FAIL */, KH_TPM_USE_KEY, CKR_KEY_FUNCTION_NOT_PERMITTED },
        { 0x99d, KH_TPM_USE_PIN, CKR_DEVICE_ERROR },
        { TPM2_RC_OBJECT_MEMORY, KH_TPM_USE_KEY, CKR_DEVICE_MEMORY },
        { TPM2_RC_SESSION_MEMORY, KH_TPM_USE_OTHER, CKR_DEVICE_MEMORY },
        { TPM2_RC_CURVE + TPM2_RC_P + TPM2_RC_2, KH_TPM_USE_KEY, CKR_CURVE_NOT_SUPPORTED },
        { TPM2_RC_KEY_SIZE + TPM2_RC_P + TPM2_RC_2, KH_TPM_USE_KEY, CKR_KEY_SIZE_RANGE },
        { TPM2_RC_SCHEME + TPM2_RC_P + TPM2_RC_2, KH_TPM_USE_KEY, CKR_MECHANISM_INVALID },
        { TPM2_RC_INTEGRITY + TPM2_RC_P + TPM2_RC_1, KH_TPM_USE_IMPORT, CKR_ATTRIBUTE_VALUE_INVALID },
        { TPM2_RC_INTEGRITY + TPM2_RC_P + TPM2_RC_1, KH_TPM_USE_KEY, CKR_FUNCTION_FAILED },
        { TPM2_RC_RETRY, KH_TPM_USE_KEY, CKR_DEVICE_ERROR },
        { TPM2_RC_INITIALIZE, KH_TPM_USE_OTHER, CKR_DEVICE_ERROR },
        { TSS2_TCTI_RC_IO_ERROR, KH_TPM_USE_KEY, CKR_DEVICE_ERROR },
        { TSS2_TCTI_RC_NO_CONNECTION, KH_TPM_USE_PIN, CKR_DEVICE_ERROR },
        { TSS2_ESYS_RC_MEMORY, KH_TPM_USE_KEY, CKR_HOST_MEMORY },
        { TSS2_ESYS_RC_MALFORMED_RESPONSE, KH_TPM_USE_KEY, CKR_DEVICE_ERROR },
        { TSS2_MU_RC_BAD_SIZE, KH_TPM_USE_IMPORT, CKR_ATTRIBUTE_VALUE_INVALID },
        { KH_TPM_RC_NO_PARENT, KH_TPM_USE_PIN, CKR_FUNCTION_FAILED },
        { KH_TPM_RC_STALE, KH_TPM_USE_KEY, CKR_DEVICE_ERROR },
        { TSS2_RC_SUCCESS, KH_TPM_USE_KEY, CKR_OK },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CK_RV rv = kh_tpm_rv(cases[i].rc, cases[i].use, "test");
        if (rv != cases[i].want)
            kh_test_fail(__FILE__, __LINE__, "rc 0x%08x use %d: 0x%lx, want 0x%lx", (unsigned)cases[i].rc,
                         (int)cases[i].use, rv, cases[i].want);
    }
}

static void test_stale(void)
{
    KH_CHECK(kh_tpm_rc_stale(TPM2_RC_REFERENCE_H0));
    KH_CHECK(kh_tpm_rc_stale(0x18b));           /* HANDLE, handle 1 */
    KH_CHECK(kh_tpm_rc_stale(0x9a2));           /* BAD_AUTH, session 1 */
    KH_CHECK(kh_tpm_rc_stale(TPM2_RC_AUTH_UNAVAILABLE));
    KH_CHECK(kh_tpm_rc_stale(TPM2_RC_KEY + TPM2_RC_H + TPM2_RC_1));
    KH_CHECK(!kh_tpm_rc_stale(0x99d));          /* POLICY_FAIL: a policy, not a handle */
    KH_CHECK(!kh_tpm_rc_stale(0x1c4));          /* VALUE, parameter 1 */
    KH_CHECK(!kh_tpm_rc_stale(TPM2_RC_OBJECT_MEMORY));
    KH_CHECK(!kh_tpm_rc_stale(TPM2_RC_LOCKOUT));
    KH_CHECK(!kh_tpm_rc_stale(TSS2_TCTI_RC_IO_ERROR));
}

static void test_pcr_parse(void)
{
    TPML_PCR_SELECTION sel;
    KH_CHECK(kh_tpm_pcr_parse(&sel, "sha256:7"));
    KH_CHECK(sel.count == 1 && sel.pcrSelections[0].hash == TPM2_ALG_SHA256);
    KH_CHECK(sel.pcrSelections[0].sizeofSelect == 3 && sel.pcrSelections[0].pcrSelect[0] == 0x80);
    KH_CHECK(kh_tpm_pcr_parse(&sel, "sha256:0,7,23"));
    KH_CHECK(sel.pcrSelections[0].pcrSelect[0] == 0x81 && sel.pcrSelections[0].pcrSelect[2] == 0x80);
    KH_CHECK(kh_tpm_pcr_parse(&sel, "sha1:7+sha384:16"));
    KH_CHECK(sel.count == 2 && sel.pcrSelections[1].hash == TPM2_ALG_SHA384 &&
             sel.pcrSelections[1].pcrSelect[2] == 0x01);
    static const char *const bad[] = { "", "7", "sha256", "sha256:", "sha256:24", "sha256:-1", "md5:7",
                                       "sha256:7,", "sha256:7+sha256:8", "sha256:7 ", "sha256:7x",
                                       "sha256:+sha1:1", NULL };
    for (int i = 0; bad[i]; i++) {
        if (kh_tpm_pcr_parse(&sel, bad[i]))
            kh_test_fail(__FILE__, __LINE__, "'%s' accepted", bad[i]);
        KH_CHECK(sel.count == 0);
    }
    KH_CHECK(!kh_tpm_pcr_parse(&sel, NULL));
}

static void test_persistent_parse(void)
{
    uint32_t h = 0;
    KH_CHECK(kh_tpm_parse_persistent(&h, "0x81000001") && h == 0x81000001u);
    KH_CHECK(kh_tpm_parse_persistent(&h, "0x81ffffff") && h == 0x81ffffffu);
    KH_CHECK(!kh_tpm_parse_persistent(&h, "0x80000001"));
    KH_CHECK(!kh_tpm_parse_persistent(&h, "0x82000000"));
    KH_CHECK(!kh_tpm_parse_persistent(&h, "0x81000001z"));
    KH_CHECK(!kh_tpm_parse_persistent(&h, ""));
}

static void fake_ecc(TPM2B_PUBLIC *p)
{
    /* P-256's generator as a public point */
    static const char gx[] = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
    static const char gy[] = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    size_t n;
    uint8_t *x = kh_test_unhex(gx, &n), *y = kh_test_unhex(gy, &n);
    memset(p, 0, sizeof *p);
    p->publicArea.type = TPM2_ALG_ECC;
    p->publicArea.nameAlg = TPM2_ALG_SHA256;
    p->publicArea.objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH;
    p->publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p->publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    memcpy(p->publicArea.unique.ecc.x.buffer, x, 32);
    p->publicArea.unique.ecc.x.size = 32;
    memcpy(p->publicArea.unique.ecc.y.buffer, y, 32);
    p->publicArea.unique.ecc.y.size = 32;
    free(x);
    free(y);
}

static void test_blob(void)
{
    kh_tpm_key k, back;
    uint8_t *blob = NULL;
    size_t len = 0;
    memset(&k, 0, sizeof k);
    fake_ecc(&k.pub);
    k.parent.size = 34;
    memset(k.parent.name, 0xAB, 34);
    k.priv.size = 100;
    memset(k.priv.buffer, 0x5C, 100);
    k.auth.size = 32;
    memset(k.auth.buffer, 0x11, 32);
    k.pcr = true;
    KH_CHECK(kh_tpm_pcr_parse(&k.pcrs, "sha256:7"));
    KH_CHECK_RV(kh_tpm_key_encode(&blob, &len, &k), CKR_OK);
    KH_CHECK_RV(kh_tpm_key_decode(&back, blob, len), CKR_OK);
    KH_CHECK(back.pcr && back.pcrs.count == 1 && back.auth.size == 32 && back.priv.size == 100);
    KH_CHECK(back.pub.publicArea.type == TPM2_ALG_ECC &&
             back.pub.publicArea.parameters.eccDetail.curveID == TPM2_ECC_NIST_P256 &&
             memcmp(back.pub.publicArea.unique.ecc.x.buffer, k.pub.publicArea.unique.ecc.x.buffer, 32) == 0 &&
             memcmp(back.pub.publicArea.unique.ecc.y.buffer, k.pub.publicArea.unique.ecc.y.buffer, 32) == 0);
    KH_CHECK(back.parent.size == 34 && memcmp(back.parent.name, k.parent.name, 34) == 0);
    KH_CHECK(memcmp(back.auth.buffer, k.auth.buffer, 32) == 0 && memcmp(back.priv.buffer, k.priv.buffer, 100) == 0);
    KH_CHECK_RV(kh_tpm_key_decode(&back, blob, len - 1), CKR_KH_STORE_ERROR);     /* truncated */
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, blob, len);
    longer[len] = 0;
    KH_CHECK_RV(kh_tpm_key_decode(&back, longer, len + 1), CKR_KH_STORE_ERROR);   /* trailing bytes */
    free(longer);
    blob[0] ^= 1;
    KH_CHECK_RV(kh_tpm_key_decode(&back, blob, len), CKR_KH_STORE_ERROR);         /* magic */
    blob[0] ^= 1;
    blob[5] = 0x80;
    KH_CHECK_RV(kh_tpm_key_decode(&back, blob, len), CKR_KH_STORE_ERROR);         /* unknown flag */
    kh_crypto_secret_free(blob, len);

    kh_tpm_sealobj so, sb;
    memset(&so, 0, sizeof so);
    fake_ecc(&so.pub);
    so.parent = k.parent;
    so.priv.size = 60;
    so.branch.size = 32;
    memset(so.branch.buffer, 7, 32);
    KH_CHECK_RV(kh_tpm_seal_encode(&blob, &len, &so), CKR_OK);
    KH_CHECK_RV(kh_tpm_seal_decode(&sb, blob, len), CKR_OK);
    KH_CHECK(sb.branch.size == 32 && memcmp(sb.branch.buffer, so.branch.buffer, 32) == 0);
    KH_CHECK_RV(kh_tpm_key_decode(&back, blob, len), CKR_KH_STORE_ERROR);        /* not a key blob */
    free(blob);
    so.branch.size = 16;
    KH_CHECK_RV(kh_tpm_seal_encode(&blob, &len, &so), CKR_OK);
    KH_CHECK_RV(kh_tpm_seal_decode(&sb, blob, len), CKR_KH_STORE_ERROR);         /* branch of 16 bytes */
    free(blob);
}

static void test_templates(void)
{
    TPM2B_PUBLIC srk, k;
    kh_tpm_srk_template(&srk);
    KH_CHECK(kh_tpm_is_storage_key(&srk.publicArea));
    KH_CHECK(srk.publicArea.objectAttributes & TPMA_OBJECT_NODA);
    KH_CHECK(srk.publicArea.unique.ecc.x.size == 32 && srk.publicArea.unique.ecc.y.size == 32);
    /* tpm2_createprimary -G ecc: the same but DA-protected and no unique: also a storage key */
    srk.publicArea.objectAttributes &= ~TPMA_OBJECT_NODA;
    srk.publicArea.unique.ecc.x.size = 0;
    KH_CHECK(kh_tpm_is_storage_key(&srk.publicArea));
    srk.publicArea.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
    KH_CHECK(!kh_tpm_is_storage_key(&srk.publicArea));
    fake_ecc(&k);
    KH_CHECK(!kh_tpm_is_storage_key(&k.publicArea));
}

static void test_pubkey(void)
{
    TPM2B_PUBLIC p;
    kh_pubkey pub;
    fake_ecc(&p);
    KH_CHECK_RV(kh_tpm_pubkey(&pub, &p.publicArea), CKR_OK);
    KH_CHECK(pub.alg == KH_ALG_P256 && pub.point_len == 65 && pub.point[0] == 0x04 && pub.point[1] == 0x6b);
    p.publicArea.unique.ecc.y.buffer[31] ^= 1; /* off the curve */
    KH_CHECK_RV(kh_tpm_pubkey(&pub, &p.publicArea), CKR_ATTRIBUTE_VALUE_INVALID);
    p.publicArea.parameters.eccDetail.curveID = TPM2_ECC_BN_P256;
    KH_CHECK_RV(kh_tpm_pubkey(&pub, &p.publicArea), CKR_CURVE_NOT_SUPPORTED);
    /* RSA: exponent 0 means 65537 */
    kh_pubkey rsa;
    uint8_t *der = NULL;
    size_t der_len = 0;
    KH_CHECK_RV(kh_crypto_generate(&rsa, &der, &der_len, KH_ALG_RSA, 2048), CKR_OK);
    kh_crypto_secret_free(der, der_len);
    memset(&p, 0, sizeof p);
    p.publicArea.type = TPM2_ALG_RSA;
    p.publicArea.parameters.rsaDetail.keyBits = 2048;
    memcpy(p.publicArea.unique.rsa.buffer, rsa.n, rsa.n_len);
    p.publicArea.unique.rsa.size = (UINT16)rsa.n_len;
    KH_CHECK_RV(kh_tpm_pubkey(&pub, &p.publicArea), CKR_OK);
    KH_CHECK(pub.alg == KH_ALG_RSA && pub.e_len == 3 && pub.e[0] == 1 && pub.e[1] == 0 && pub.e[2] == 1);
    KH_CHECK(pub.n_len == rsa.n_len && memcmp(pub.n, rsa.n, rsa.n_len) == 0);
    p.publicArea.parameters.rsaDetail.keyBits = 1024;
    KH_CHECK_RV(kh_tpm_pubkey(&pub, &p.publicArea), CKR_KEY_SIZE_RANGE);
}

/* ---- the swtpm TCTI ---- */

static void test_tcti_conf(void)
{
    TSS2_TCTI_CONTEXT *t = NULL;
    KH_CHECK(kh_tcti_is_swtpm("swtpm") && kh_tcti_is_swtpm("swtpm:path=/x") && !kh_tcti_is_swtpm("swtpmx"));
    KH_CHECK(!kh_tcti_is_swtpm("device:/dev/tpmrm0") && !kh_tcti_is_swtpm(NULL));
    KH_CHECK(kh_tcti_swtpm_new(&t, "swtpm:host=127.0.0.1,port=2321", 1000) == TSS2_RC_SUCCESS && t);
    kh_tcti_swtpm_free(t);
    KH_CHECK(kh_tcti_swtpm_new(&t, "swtpm:port=99999", 1000) == TSS2_TCTI_RC_BAD_VALUE && !t);
    KH_CHECK(kh_tcti_swtpm_new(&t, "swtpm:port=", 1000) == TSS2_TCTI_RC_BAD_VALUE);
    KH_CHECK(kh_tcti_swtpm_new(&t, "swtpm:frob=1", 1000) == TSS2_TCTI_RC_BAD_VALUE);
    KH_CHECK(kh_tcti_swtpm_new(&t, "device:/dev/tpm0", 1000) == TSS2_TCTI_RC_BAD_VALUE);
    /* kh_tpm_tcti_open gives swtpm configurations keyhold's TCTI; close tells it apart */
    KH_CHECK(kh_tpm_tcti_open(&t, "swtpm:port=2321", 1000) == TSS2_RC_SUCCESS && t);
    kh_tpm_tcti_close(t);
    kh_tpm_tcti_close(NULL);
}

/* ---- awaiting a command ---- */

static TSS2_RC fin_pending(ESYS_CONTEXT *esys, void *arg)
{
    (void)esys;
    (*(int *)arg)++;
    return TSS2_ESYS_RC_TRY_AGAIN;
}

static TSS2_RC fin_tpm_error(ESYS_CONTEXT *esys, void *arg)
{
    (void)esys;
    (*(int *)arg)++;
    return TPM2_RC_RETRY; /* the TPM answered: done, whatever it says */
}

static void test_await(void)
{
    bool late = true;
    int calls = 0;
    KH_CHECK(kh_tpm_await(NULL, &late, fin_tpm_error, &calls, 1000) == TPM2_RC_RETRY);
    KH_CHECK(!late && calls == 1);
    calls = 0;
    double t0 = kh_tpm_now_ms();
    KH_CHECK(kh_tpm_await(NULL, &late, fin_pending, &calls, 50) == TSS2_TCTI_RC_IO_ERROR);
    KH_CHECK(late && calls > 1 && kh_tpm_now_ms() - t0 >= 50);
}

/* A unix socket that accepts and reads, and answers only if told to. */
struct silent {
    int lfd;
    char path[108];
    int mode;      /* 0: never answer; 1: close at once; 2: answer a 10-byte response slowly */
    pthread_t tid;
};

static void *silent_run(void *arg)
{
    struct silent *sv = arg;
    int fd = accept(sv->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t buf[64];
    if (read(fd, buf, sizeof buf) <= 0 || sv->mode == 1) {
        close(fd);
        return NULL;
    }
    if (sv->mode == 2) {
        static const uint8_t resp[10] = { 0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0 };
        struct timespec ts = { 0, 300 * 1000000L };
        (void)!write(fd, resp, 4);
        nanosleep(&ts, NULL);
        (void)!write(fd, resp + 4, 6);
    } else {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        poll(&p, 1, 5000);   /* until the client gives up and closes */
    }
    close(fd);
    return NULL;
}

static void silent_start(struct silent *sv, int mode)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sv->path, sizeof sv->path, "%s/s", kh_test_tmpdir());
    memcpy(sa.sun_path, sv->path, strlen(sv->path) + 1);
    sv->mode = mode;
    sv->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    KH_CHECK(sv->lfd >= 0 && bind(sv->lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(sv->lfd, 4) == 0);
    pthread_create(&sv->tid, NULL, silent_run, sv);
}

static void silent_stop(struct silent *sv)
{
    pthread_join(sv->tid, NULL);
    close(sv->lfd);
    unlink(sv->path);
}

static const uint8_t getrandom_cmd[12] = { 0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8 };

static void test_tcti_deadline(void)
{
    char conf[160];
    TSS2_TCTI_CONTEXT *t = NULL;
    uint8_t resp[64];
    size_t size = sizeof resp;
    struct silent sv;

    /* nothing listening: NO_CONNECTION at once */
    snprintf(conf, sizeof conf, "swtpm:path=%s/nothing", kh_test_tmpdir());
    KH_CHECK(kh_tcti_swtpm_new(&t, conf, 2000) == TSS2_RC_SUCCESS);
    KH_CHECK(Tss2_Tcti_Transmit(t, sizeof getrandom_cmd, getrandom_cmd) == TSS2_TCTI_RC_NO_CONNECTION);
    KH_CHECK(Tss2_Tcti_Receive(t, &size, resp, 0) == TSS2_TCTI_RC_BAD_SEQUENCE);
    kh_tcti_swtpm_free(t);

    /* a peer that never answers: TRY_AGAIN within the caller's timeout, never a hang */
    silent_start(&sv, 0);
    snprintf(conf, sizeof conf, "swtpm:path=%s", sv.path);
    KH_CHECK(kh_tcti_swtpm_new(&t, conf, 2000) == TSS2_RC_SUCCESS);
    KH_CHECK(Tss2_Tcti_Transmit(t, sizeof getrandom_cmd, getrandom_cmd) == TSS2_RC_SUCCESS);
    double t0 = kh_tpm_now_ms();
    KH_CHECK(Tss2_Tcti_Receive(t, &size, resp, 100) == TSS2_TCTI_RC_TRY_AGAIN);
    KH_CHECK(Tss2_Tcti_Receive(t, &size, resp, TSS2_TCTI_TIMEOUT_BLOCK) == TSS2_TCTI_RC_TRY_AGAIN);
    printf("# silent peer: two receives returned after %.0f ms (100 ms + the 2000 ms cap)\n", kh_tpm_now_ms() - t0);
    kh_tcti_swtpm_free(t);
    silent_stop(&sv);

    /* a peer that hangs up: IO_ERROR */
    silent_start(&sv, 1);
    snprintf(conf, sizeof conf, "swtpm:path=%s", sv.path);
    KH_CHECK(kh_tcti_swtpm_new(&t, conf, 2000) == TSS2_RC_SUCCESS);
    KH_CHECK(Tss2_Tcti_Transmit(t, sizeof getrandom_cmd, getrandom_cmd) == TSS2_RC_SUCCESS);
    TSS2_RC rc;
    do
        rc = Tss2_Tcti_Receive(t, &size, resp, 100);
    while (rc == TSS2_TCTI_RC_TRY_AGAIN);
    KH_CHECK(rc == TSS2_TCTI_RC_IO_ERROR);
    kh_tcti_swtpm_free(t);
    silent_stop(&sv);

    /* a slow peer: partial reads resume after TRY_AGAIN and the response comes out whole */
    silent_start(&sv, 2);
    snprintf(conf, sizeof conf, "swtpm:path=%s", sv.path);
    KH_CHECK(kh_tcti_swtpm_new(&t, conf, 2000) == TSS2_RC_SUCCESS);
    KH_CHECK(Tss2_Tcti_Transmit(t, sizeof getrandom_cmd, getrandom_cmd) == TSS2_RC_SUCCESS);
    int tries = 0;
    size = sizeof resp;
    do {
        rc = Tss2_Tcti_Receive(t, &size, resp, 50);
        tries++;
    } while (rc == TSS2_TCTI_RC_TRY_AGAIN && tries < 100);
    KH_CHECK(rc == TSS2_RC_SUCCESS && size == 10 && resp[0] == 0x80 && resp[5] == 10);
    KH_CHECK(tries > 1);
    kh_tcti_swtpm_free(t);
    silent_stop(&sv);
}

int main(int argc, char **argv)
{
    kh_log_set_level(0);
    kh_test_register("/tpm/rc-base", test_rc_base);
    kh_test_register("/tpm/translator", test_translator);
    kh_test_register("/tpm/stale", test_stale);
    kh_test_register("/tpm/pcr-parse", test_pcr_parse);
    kh_test_register("/tpm/persistent-parse", test_persistent_parse);
    kh_test_register("/tpm/blob", test_blob);
    kh_test_register("/tpm/templates", test_templates);
    kh_test_register("/tpm/pubkey", test_pubkey);
    kh_test_register("/tpm/tcti/conf", test_tcti_conf);
    kh_test_register("/tpm/tcti/deadline", test_tcti_deadline);
    kh_test_register("/tpm/await", test_await);
    return kh_test_run(argc, argv);
}
