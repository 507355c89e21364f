/*
 * remote: the remote backend through the module's Cryptoki interface, against
 * a real signer-protocol server over real sockets.
 *
 * The server is tests/integration/fake-signer (fault injection: each fault
 * is a key id suffix, see its header), started, killed and restarted by this
 * program. Phases:
 *
 *   register  keys of every type registered with C_CreateObject
 *             (CKA_KH_BACKEND = remote, CKA_KH_REMOTE_REF), public attributes
 *             from the signer; bad references, unknown keys, a signer's
 *             invalid public key, an unreachable signer and inconsistent
 *             templates are refused with a precise CK_RV and store nothing
 *   sign      every mechanism of every key type; signatures checked by
 *             OpenSSL (P-256, secp256k1, Ed25519) or C_Verify with the public
 *             object; secp256k1 ECDSA always low-S; DER, high-S, v+27 and
 *             base64 answers normalised
 *   faults    slow, closed, garbage, unframed, 4 GiB prefix, wrong key,
 *             corrupted, short, wrong id, no result, error codes: each a
 *             precise CK_RV within the deadline + 1 s, and the next signature
 *             works
 *   restart   the signer exits mid-request, is SIGKILLed mid-request, is down:
 *             CKR_DEVICE_ERROR in time; signing resumes once it is back
 *   pool      connections are reused (the signer's own count), survive a
 *             signer that closes after every answer, and threads and a forked
 *             child sign at once
 *   tcp, tls  the same over TCP and TLS (CA made at run time by openssl; the
 *             wrong CA is refused)
 *   throughput  printed only: vault vs remote signatures/s on one token
 *   plugin    a dlopen'ed driver (tests/plugin/test-driver.c) registers and
 *             signs; its wrong-key answer is refused; a plugin with another
 *             ABI version is refused
 *
 * The deadline is remote_timeout_ms = 1000 (KEYHOLD_CONF). Times are printed;
 * "within the deadline + 1 s" is checked because the issue asks for exactly
 * that bound (a hang would otherwise only show as meson's timeout).
 *
 * Env: KEYHOLD_MODULE, KH_FAKE_SIGNER, KH_TEST_DRIVER, KH_TEST_DRIVER_BADABI.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/evp.h>

#include "p11load.h"
#include "wire.h"

#define DEADLINE_MS 1000
#define SO_PIN "12345678"
#define USER_PIN "123456"

static CK_FUNCTION_LIST_PTR fl;
static void *dl;
static char tmp[4096];
static char sock_url[4200];
static char keys_dir[4200];
static const char *fake_path;
static pid_t signer_pid = -1;
static int failures, checks;

#define CHECK(cond, ...) check_((cond), __LINE__, __VA_ARGS__)
static void check_(bool ok, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check_(bool ok, int line, const char *fmt, ...)
{
    va_list ap;
    checks++;
    printf(ok ? "   ok: " : "FAIL (line %d): ", line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!ok)
        failures++;
}

static double ms_since(double t0_us)
{
    return (p11l_now_us() - t0_us) / 1000.0;
}

/* ---- the signer process ---- */

static bool signer_up(const char *url)
{
    kh_wire_url u;
    if (kh_wire_url_parse(&u, NULL, 0, url) != KH_WIRE_OK)
        return false;
    for (int i = 0; i < 200; i++) {
        kh_wire_conn *c;
        if (kh_wire_connect(&c, &u, NULL, kh_wire_now_ms() + 500) == KH_WIRE_OK) {
            kh_wire_close(c);
            return true;
        }
        usleep(50000);
    }
    return false;
}

/* Start fake-signer on url with extra arguments (NULL-terminated). */
static pid_t start_signer_on(const char *url, const char *a1, const char *a2, const char *a3,
                             const char *a4)
{
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[12] = { fake_path, "--listen", url, "--keys", keys_dir, a1, a2, a3, a4, NULL };
        execv(fake_path, (char *const *)argv);
        _exit(127);
    }
    /* unix: wait for the socket; tcp/tls: wait for the port */
    if (!strncmp(url, "tls://", 6)) {
        char plain[300];
        snprintf(plain, sizeof plain, "tcp://%s", url + 6);
        if (!signer_up(plain))
            fprintf(stderr, "signer on %s did not come up\n", url);
    } else if (!signer_up(url)) {
        fprintf(stderr, "signer on %s did not come up\n", url);
    }
    return pid;
}

static void start_signer(const char *a1, const char *a2)
{
    signer_pid = start_signer_on(sock_url, a1, a2, NULL, NULL);
}

static void stop_pid(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    waitpid(pid, NULL, 0);
}

static void stop_signer(int sig)
{
    stop_pid(signer_pid, sig);
    signer_pid = -1;
}

/* The signer's counters (a direct protocol exchange, not through the module). */
static bool signer_stats(int *conns, int *reqs)
{
    kh_wire_url u;
    kh_wire_conn *c;
    char *buf = NULL;
    size_t len;
    static const char req[] = "{\"method\":\"stats\"}";
    if (kh_wire_url_parse(&u, NULL, 0, sock_url) != KH_WIRE_OK ||
        kh_wire_connect(&c, &u, NULL, kh_wire_now_ms() + 2000) != KH_WIRE_OK)
        return false;
    bool ok = kh_wire_send(c, req, sizeof req - 1, kh_wire_now_ms() + 2000) == KH_WIRE_OK &&
              kh_wire_recv(c, &buf, &len, 4096, kh_wire_now_ms() + 2000) == KH_WIRE_OK;
    kh_wire_close(c);
    if (!ok)
        return false;
    json_object *o = json_tokener_parse(buf), *res, *v;
    free(buf);
    ok = o && json_object_object_get_ex(o, "result", &res);
    if (ok && json_object_object_get_ex(res, "connections", &v))
        *conns = json_object_get_int(v) - 1;   /* not counting this one */
    if (ok && json_object_object_get_ex(res, "requests", &v))
        *reqs = json_object_get_int(v) - 1;
    json_object_put(o);
    return ok;
}

/* ---- module helpers ---- */

static void write_conf(const char *extra)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/keyhold.conf", tmp);
    FILE *f = fopen(path, "w");
    fprintf(f, "remote_timeout_ms = %d\n%s", DEADLINE_MS, extra ? extra : "");
    fclose(f);
    setenv("KEYHOLD_CONF", path, 1);
}

static CK_SESSION_HANDLE open_session(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv == CKR_OK)
        rv = p11l_login(fl, s, USER_PIN);
    if (rv != CKR_OK)
        fprintf(stderr, "session: %s\n", p11l_rv_str(rv));
    return s;
}

static CK_RV reg(CK_OBJECT_HANDLE *out, CK_SESSION_HANDLE s, const char *ref, const char *label,
                 const CK_ATTRIBUTE *extra, CK_ULONG nextra)
{
    static CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ULONG be = CKV_KH_BACKEND_REMOTE;
    CK_ATTRIBUTE t[16] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_PRIVATE, &yes, sizeof yes },
        { CKA_SIGN, &yes, sizeof yes },
        { CKA_LABEL, (void *)label, (CK_ULONG)strlen(label) },
        { CKA_KH_BACKEND, &be, sizeof be },
        { CKA_KH_REMOTE_REF, (void *)ref, (CK_ULONG)strlen(ref) },
    };
    CK_ULONG n = 7;
    for (CK_ULONG i = 0; i < nextra; i++)
        t[n++] = extra[i];
    *out = CK_INVALID_HANDLE;
    return fl->C_CreateObject(s, t, n, out);
}

static char *ref_for(const char *url, const char *key)
{
    static char bufs[4][4400];
    static int i;
    char *b = bufs[i++ % 4];
    snprintf(b, sizeof bufs[0], "signer:%s#%s", url, key);
    return b;
}

/* A public key object with the private key's public attributes (for C_Verify). */
static CK_OBJECT_HANDLE pub_of(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt;
    CK_ATTRIBUTE g = { CKA_KEY_TYPE, &kt, sizeof kt };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    if (fl->C_GetAttributeValue(s, priv, &g, 1) != CKR_OK)
        return h;
    CK_ATTRIBUTE t[4] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_KEY_TYPE, &kt, sizeof kt } };
    uint8_t *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    CK_ATTRIBUTE_TYPE ta = kt == CKK_RSA ? CKA_MODULUS : CKA_EC_PARAMS;
    CK_ATTRIBUTE_TYPE tb = kt == CKK_RSA ? CKA_PUBLIC_EXPONENT : CKA_EC_POINT;
    if (p11l_get_attr(fl, &a, &al, s, priv, ta) == CKR_OK &&
        p11l_get_attr(fl, &b, &bl, s, priv, tb) == CKR_OK) {
        t[2] = (CK_ATTRIBUTE){ ta, a, al };
        t[3] = (CK_ATTRIBUTE){ tb, b, bl };
        fl->C_CreateObject(s, t, 4, &h);
    }
    free(a);
    free(b);
    return h;
}

static CK_RV sign_ms(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM *m,
                     const uint8_t *data, size_t len, uint8_t *sig, CK_ULONG *siglen, double *ms)
{
    double t0 = p11l_now_us();
    CK_RV rv = fl->C_SignInit(s, m, key);
    if (rv == CKR_OK)
        rv = fl->C_Sign(s, (CK_BYTE_PTR)data, len, sig, siglen);
    if (ms)
        *ms = ms_since(t0);
    return rv;
}

static CK_RV verify(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_MECHANISM *m,
                    const uint8_t *data, size_t len, const uint8_t *sig, CK_ULONG siglen)
{
    CK_RV rv = fl->C_VerifyInit(s, m, pub);
    if (rv == CKR_OK)
        rv = fl->C_Verify(s, (CK_BYTE_PTR)data, len, (CK_BYTE_PTR)sig, siglen);
    return rv;
}

static size_t count_private(CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE h[512];
    size_t n = 0;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    p11l_find(fl, h, 512, &n, s, CKO_PRIVATE_KEY, CKA_CLASS, &cls, sizeof cls);
    return n;
}

static const uint8_t secp_half_n[32] = {
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
};

static bool low_s(const uint8_t *sig)
{
    return memcmp(sig + 32, secp_half_n, 32) <= 0;
}

/* OpenSSL check for a P-256 / secp256k1 ECDSA (over a 32-byte digest) or Ed25519 signature. */
static bool ossl_ok(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, p11l_alg alg, const uint8_t *msg,
                    size_t len, const uint8_t *sig, size_t siglen)
{
    uint8_t *pt = NULL;
    size_t ptl = 0;
    if (p11l_get_attr(fl, &pt, &ptl, s, priv, CKA_EC_POINT) != CKR_OK)
        return false;
    bool ok = p11l_ossl_verify(alg, pt, ptl, msg, len, sig, siglen);
    free(pt);
    return ok;
}

/* ---- phases ---- */

static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE k_k1, k_p256, k_p384, k_ed, k_rsa;

static void phase_register(CK_SESSION_HANDLE s)
{
    printf("-- register\n");
    struct { const char *id; CK_OBJECT_HANDLE *h; CK_KEY_TYPE kt; } good[] = {
        { "k1", &k_k1, CKK_EC }, { "p256", &k_p256, CKK_EC }, { "p384", &k_p384, CKK_EC },
        { "ed25519", &k_ed, CKK_EC_EDWARDS }, { "rsa", &k_rsa, CKK_RSA },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char label[64];
        snprintf(label, sizeof label, "remote-%s", good[i].id);
        CK_RV rv = reg(good[i].h, s, ref_for(sock_url, good[i].id), label, NULL, 0);
        CK_KEY_TYPE kt = 0;
        CK_ULONG be = 0;
        CK_ATTRIBUTE a[2] = { { CKA_KEY_TYPE, &kt, sizeof kt }, { CKA_KH_BACKEND, &be, sizeof be } };
        if (rv == CKR_OK)
            rv = fl->C_GetAttributeValue(s, *good[i].h, a, 2);
        CHECK(rv == CKR_OK && kt == good[i].kt && be == CKV_KH_BACKEND_REMOTE,
              "register %s: %s, key type 0x%lx, backend %lu", good[i].id, p11l_rv_str(rv), kt, be);
    }
    /* the reference is readable and searchable */
    uint8_t *ref = NULL;
    size_t rl = 0;
    const char *want = ref_for(sock_url, "p256");
    CHECK(p11l_get_attr(fl, &ref, &rl, s, k_p256, CKA_KH_REMOTE_REF) == CKR_OK &&
              rl == strlen(want) && !memcmp(ref, want, rl), "CKA_KH_REMOTE_REF reads back");
    free(ref);
    size_t n = 0;
    CK_OBJECT_HANDLE h[4];
    p11l_find(fl, h, 4, &n, s, CKO_PRIVATE_KEY, CKA_KH_REMOTE_REF, want, strlen(want));
    CHECK(n == 1 && h[0] == k_p256, "found by CKA_KH_REMOTE_REF (%zu)", n);
    /* a key type that is not the signer's, explicitly: refused */
    CK_KEY_TYPE rsa = CKK_RSA;
    CK_ATTRIBUTE kt_rsa = { CKA_KEY_TYPE, &rsa, sizeof rsa };
    size_t before = count_private(s);
    CK_OBJECT_HANDLE x;
    struct { const char *ref; const CK_ATTRIBUTE *extra; CK_RV want; const char *what; } bad[] = {
        { ref_for(sock_url, "p256"), &kt_rsa, CKR_TEMPLATE_INCONSISTENT, "CKA_KEY_TYPE RSA for a P-256 key" },
        { ref_for(sock_url, "nokey"), NULL, CKR_ATTRIBUTE_VALUE_INVALID, "unknown key id" },
        { ref_for(sock_url, "p256+pkbad"), NULL, CKR_DEVICE_ERROR, "signer's public key off the curve" },
        { "signer:unix:/nonexistent/keyhold.sock#p256", NULL, CKR_DEVICE_ERROR, "unreachable signer" },
        { "signer:http://x#p256", NULL, CKR_ATTRIBUTE_VALUE_INVALID, "bad URL" },
        { "signer:unix:/x.sock", NULL, CKR_ATTRIBUTE_VALUE_INVALID, "no #key" },
        { "nodriver:abc", NULL, CKR_ATTRIBUTE_VALUE_INVALID, "unknown driver" },
        { "no-prefix", NULL, CKR_ATTRIBUTE_VALUE_INVALID, "no driver prefix" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double t0 = p11l_now_us();
        CK_RV rv = reg(&x, s, bad[i].ref, "bad", bad[i].extra, bad[i].extra ? 1 : 0);
        CHECK(rv == bad[i].want, "register (%s): %s, want %s, %.0f ms", bad[i].what,
              p11l_rv_str(rv), p11l_rv_str(bad[i].want), ms_since(t0));
    }
    /* a private value with the remote backend: import into a remote is not a thing */
    uint8_t val[32] = { 1 };
    CK_ATTRIBUTE v = { CKA_VALUE, val, sizeof val };
    CK_RV rv = reg(&x, s, ref_for(sock_url, "k1"), "bad", &v, 1);
    CHECK(rv == CKR_TEMPLATE_INCONSISTENT, "CKA_VALUE with a reference: %s", p11l_rv_str(rv));
    CHECK(count_private(s) == before, "nothing stored by the refused registrations");
    /* registering needs the user logged in, and so does signing */
    fl->C_Logout(s);
    rv = reg(&x, s, ref_for(sock_url, "p256"), "no-login", NULL, 0);
    CHECK(rv == CKR_USER_NOT_LOGGED_IN, "register without login: %s", p11l_rv_str(rv));
    p11l_login(fl, s, USER_PIN);
}

static void phase_sign(CK_SESSION_HANDLE s)
{
    printf("-- sign\n");
    uint8_t d32[32], msg[300], sig[512];
    for (size_t i = 0; i < sizeof d32; i++)
        d32[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 13 + 5);
    CK_ULONG sl;
    CK_RV rv;

    /* secp256k1: raw ECDSA is low-S and verifies with OpenSSL, many times */
    CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
    bool all = true;
    for (int i = 0; i < 20; i++) {
        d32[0] = (uint8_t)i;
        sl = sizeof sig;
        rv = sign_ms(s, k_k1, &ecdsa, d32, 32, sig, &sl, NULL);
        all = all && rv == CKR_OK && sl == 64 && low_s(sig) &&
              ossl_ok(s, k_k1, P11L_SECP256K1, d32, 32, sig, sl);
    }
    CHECK(all, "secp256k1 CKM_ECDSA x20: low-S, OpenSSL verifies");
    CK_OBJECT_HANDLE pk1 = pub_of(s, k_k1);
    CK_MECHANISM m_sha = { CKM_ECDSA_SHA256, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_k1, &m_sha, msg, 100, sig, &sl, NULL);
    CHECK(rv == CKR_OK && verify(s, pk1, &m_sha, msg, 100, sig, sl) == CKR_OK,
          "secp256k1 CKM_ECDSA_SHA256: %s", p11l_rv_str(rv));
    CK_MECHANISM m_bip = { CKM_KH_BIP340_SCHNORR, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_k1, &m_bip, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_OK && sl == 64 && verify(s, pk1, &m_bip, d32, 32, sig, sl) == CKR_OK,
          "secp256k1 BIP-340: %s", p11l_rv_str(rv));
    uint8_t aux[32] = { 9, 9, 9 };
    CK_MECHANISM m_bip_aux = { CKM_KH_BIP340_SCHNORR, aux, sizeof aux };
    sl = sizeof sig;
    rv = sign_ms(s, k_k1, &m_bip_aux, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_OK && verify(s, pk1, &m_bip, d32, 32, sig, sl) == CKR_OK,
          "secp256k1 BIP-340 with aux: %s", p11l_rv_str(rv));
    CK_MECHANISM m_rec = { CKM_KH_ECDSA_RECOVERABLE, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_k1, &m_rec, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_OK && sl == 65 && sig[64] <= 1 && low_s(sig) &&
              verify(s, pk1, &m_rec, d32, 32, sig, sl) == CKR_OK,
          "secp256k1 recoverable: %s, v=%d", p11l_rv_str(rv), sig[64]);

    /* P-256, P-384 */
    sl = sizeof sig;
    rv = sign_ms(s, k_p256, &ecdsa, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k_p256, P11L_P256, d32, 32, sig, sl),
          "P-256 CKM_ECDSA, OpenSSL verifies: %s", p11l_rv_str(rv));
    /* a key id with JSON's special characters travels escaped, both ways */
    CK_OBJECT_HANDLE k_odd;
    rv = reg(&k_odd, s, ref_for(sock_url, "p256+q\"uote\\back/slash \xc3\xa9"), "odd-id", NULL, 0);
    CHECK(rv == CKR_OK, "register a key id with '\"', '\\', '/' and UTF-8: %s", p11l_rv_str(rv));
    sl = sizeof sig;
    rv = sign_ms(s, k_odd, &ecdsa, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k_odd, P11L_P256, d32, 32, sig, sl),
          "P-256 through that key id, OpenSSL verifies: %s", p11l_rv_str(rv));
    CK_OBJECT_HANDLE p384 = pub_of(s, k_p384);
    CK_MECHANISM m_384 = { CKM_ECDSA_SHA384, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_p384, &m_384, msg, 200, sig, &sl, NULL);
    CHECK(rv == CKR_OK && sl == 96 && verify(s, p384, &m_384, msg, 200, sig, sl) == CKR_OK,
          "P-384 CKM_ECDSA_SHA384: %s", p11l_rv_str(rv));

    /* Ed25519, short and long messages */
    CK_MECHANISM m_ed = { CKM_EDDSA, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_ed, &m_ed, msg, 0, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k_ed, P11L_ED25519, msg, 0, sig, sl),
          "Ed25519 empty message: %s", p11l_rv_str(rv));
    size_t big_len = 300000;
    uint8_t *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (uint8_t)(i ^ (i >> 8));
    sl = sizeof sig;
    rv = sign_ms(s, k_ed, &m_ed, big, big_len, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k_ed, P11L_ED25519, big, big_len, sig, sl),
          "Ed25519 300 kB message: %s", p11l_rv_str(rv));
    /* a message the 1 MiB frame cannot carry: a precise error, not a device error */
    size_t huge_len = 900000;
    uint8_t *huge = calloc(1, huge_len);
    sl = sizeof sig;
    rv = sign_ms(s, k_ed, &m_ed, huge, huge_len, sig, &sl, NULL);
    CHECK(rv == CKR_DATA_LEN_RANGE, "Ed25519 900 kB message: %s", p11l_rv_str(rv));
    free(huge);
    free(big);

    /* RSA: PKCS#1 v1.5 and PSS */
    CK_OBJECT_HANDLE prsa = pub_of(s, k_rsa);
    CK_MECHANISM m_rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    sl = sizeof sig;
    rv = sign_ms(s, k_rsa, &m_rsa, msg, 50, sig, &sl, NULL);
    CHECK(rv == CKR_OK && sl == 256 && verify(s, prsa, &m_rsa, msg, 50, sig, sl) == CKR_OK,
          "RSA CKM_SHA256_RSA_PKCS: %s", p11l_rv_str(rv));
    CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
    CK_MECHANISM m_pss = { CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof pss };
    sl = sizeof sig;
    rv = sign_ms(s, k_rsa, &m_pss, msg, 50, sig, &sl, NULL);
    CHECK(rv == CKR_OK && verify(s, prsa, &m_pss, msg, 50, sig, sl) == CKR_OK,
          "RSA CKM_SHA256_RSA_PKCS_PSS: %s", p11l_rv_str(rv));
    /* a mechanism that does not fit the key never reaches the signer */
    sl = sizeof sig;
    rv = sign_ms(s, k_rsa, &ecdsa, d32, 32, sig, &sl, NULL);
    CHECK(rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_MECHANISM_INVALID,
          "CKM_ECDSA on the RSA key: %s", p11l_rv_str(rv));

    /* answers that need normalising, and base64 */
    struct { const char *id; CK_MECHANISM *m; p11l_alg alg; bool check_low; } norm[] = {
        { "k1+highs", &ecdsa, P11L_SECP256K1, true },
        { "k1+der", &ecdsa, P11L_SECP256K1, true },
        { "p256+der", &ecdsa, P11L_P256, false },
        { "p256+b64", &ecdsa, P11L_P256, false },
    };
    for (size_t i = 0; i < sizeof norm / sizeof norm[0]; i++) {
        CK_OBJECT_HANDLE k;
        rv = reg(&k, s, ref_for(sock_url, norm[i].id), norm[i].id, NULL, 0);
        sl = sizeof sig;
        if (rv == CKR_OK)
            rv = sign_ms(s, k, norm[i].m, d32, 32, sig, &sl, NULL);
        CHECK(rv == CKR_OK && (!norm[i].check_low || low_s(sig)) &&
                  ossl_ok(s, k, norm[i].alg, d32, 32, sig, sl),
              "%s: %s, r||s (low-S where secp256k1), OpenSSL verifies", norm[i].id, p11l_rv_str(rv));
    }
    const char *rec_ids[] = { "k1+highs", "k1+v27" };
    for (size_t i = 0; i < 2; i++) {
        CK_OBJECT_HANDLE k;
        char label[40];
        snprintf(label, sizeof label, "rec-%s", rec_ids[i]);
        rv = reg(&k, s, ref_for(sock_url, rec_ids[i]), label, NULL, 0);
        sl = sizeof sig;
        if (rv == CKR_OK)
            rv = sign_ms(s, k, &m_rec, d32, 32, sig, &sl, NULL);
        CHECK(rv == CKR_OK && sig[64] <= 1 && low_s(sig) &&
                  verify(s, pk1, &m_rec, d32, 32, sig, sl) == CKR_OK,
              "recoverable via %s: %s, v=%d", rec_ids[i], p11l_rv_str(rv), sig[64]);
    }
}

/* Sign with the good P-256 key: the signer serves again. */
static bool good_sign(CK_SESSION_HANDLE s, double *ms)
{
    uint8_t d[32] = { 42 }, sig[64];
    CK_ULONG sl = sizeof sig;
    CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
    return sign_ms(s, k_p256, &m, d, 32, sig, &sl, ms) == CKR_OK;
}

static void phase_faults(CK_SESSION_HANDLE s)
{
    printf("-- faults (deadline %d ms)\n", DEADLINE_MS);
    struct { const char *id; CK_RV want; bool slow; } f[] = {
        { "p256+slow3000", CKR_DEVICE_ERROR, true },
        { "p256+close", CKR_DEVICE_ERROR, false },
        { "p256+garbage", CKR_DEVICE_ERROR, false },
        { "p256+rawgarbage", CKR_DEVICE_ERROR, false },
        { "p256+huge", CKR_DEVICE_ERROR, false },
        { "p256+wrongkey", CKR_DEVICE_ERROR, false },
        { "p256+corrupt", CKR_DEVICE_ERROR, false },
        { "p256+short", CKR_DEVICE_ERROR, false },
        { "p256+badid", CKR_DEVICE_ERROR, false },
        { "p256+noresult", CKR_DEVICE_ERROR, false },
        { "p256+deny", CKR_FUNCTION_REJECTED, false },
        { "p256+unsupported", CKR_MECHANISM_INVALID, false },
        { "p256+unavailable", CKR_DEVICE_ERROR, false },
        { "k1+wrongkey", CKR_DEVICE_ERROR, false },
        { "k1+corrupt", CKR_DEVICE_ERROR, false },
        { "ed25519+wrongkey", CKR_DEVICE_ERROR, false },
        { "rsa+wrongkey", CKR_DEVICE_ERROR, false },
        { "p256+dertrail", CKR_DEVICE_ERROR, false },
        { "p256+dernonmin", CKR_DEVICE_ERROR, false },
    };
    uint8_t d[32] = { 7 }, sig[512];
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        CK_OBJECT_HANDLE k;
        CK_RV rv = reg(&k, s, ref_for(sock_url, f[i].id), f[i].id, NULL, 0);
        if (rv != CKR_OK) {
            CHECK(false, "register %s: %s", f[i].id, p11l_rv_str(rv));
            continue;
        }
        CK_KEY_TYPE kt;
        CK_ATTRIBUTE a = { CKA_KEY_TYPE, &kt, sizeof kt };
        fl->C_GetAttributeValue(s, k, &a, 1);
        CK_MECHANISM m = { kt == CKK_RSA ? CKM_SHA256_RSA_PKCS : kt == CKK_EC_EDWARDS ? CKM_EDDSA : CKM_ECDSA,
                           NULL, 0 };
        CK_ULONG sl = sizeof sig;
        memset(sig, 0xAA, sizeof sig);
        double ms;
        rv = sign_ms(s, k, &m, d, 32, sig, &sl, &ms);
        bool zeroed = true;
        for (size_t j = 0; j < 64; j++)
            zeroed = zeroed && sig[j] == 0;
        CHECK(rv == f[i].want && ms < DEADLINE_MS + 1000 && (!f[i].slow || ms >= DEADLINE_MS - 5) &&
                  zeroed,
              "%-18s -> %s in %.0f ms (output cleared)", f[i].id, p11l_rv_str(rv), ms);
        double gms;
        bool ok = good_sign(s, &gms);
        CHECK(ok, "   then p256 signs again (%.1f ms)", gms);
    }
}

static double kill_at_ms;
static void *slow_sign_thread(void *arg)
{
    CK_SLOT_ID sl = *(CK_SLOT_ID *)arg;
    CK_SESSION_HANDLE s;
    static CK_RV rv;
    static double ms;
    fl->C_OpenSession(sl, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    CK_OBJECT_HANDLE h;
    rv = p11l_find_one(fl, &h, s, CKO_PRIVATE_KEY, "p256+slow3000");
    if (rv == CKR_OK) {
        uint8_t d[32] = { 1 }, sig[64];
        CK_ULONG siglen = sizeof sig;
        CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
        rv = sign_ms(s, h, &m, d, 32, sig, &siglen, &ms);
    }
    fl->C_CloseSession(s);
    static double out[2];
    out[0] = (double)rv;
    out[1] = ms;
    return out;
}

static void phase_restart(CK_SESSION_HANDLE s)
{
    printf("-- restart\n");
    CK_OBJECT_HANDLE k;
    uint8_t d[32] = { 3 }, sig[64];
    CK_ULONG sl = sizeof sig;
    CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
    double ms;
    CK_RV rv = reg(&k, s, ref_for(sock_url, "p256+die"), "p256+die", NULL, 0);
    if (rv == CKR_OK)
        rv = sign_ms(s, k, &m, d, 32, sig, &sl, &ms);
    CHECK(rv == CKR_DEVICE_ERROR && ms < DEADLINE_MS + 1000,
          "signer exits mid-request: %s in %.0f ms", p11l_rv_str(rv), ms);
    waitpid(signer_pid, NULL, 0);
    signer_pid = -1;
    double t0 = p11l_now_us();
    bool ok = good_sign(s, NULL);
    CHECK(!ok && ms_since(t0) < DEADLINE_MS + 1000, "signer down: p256 fails in %.0f ms", ms_since(t0));
    start_signer(NULL, NULL);
    ok = good_sign(s, &ms);
    CHECK(ok, "signer back: p256 signs again (%.1f ms)", ms);

    /* SIGKILL while a request waits for its answer */
    pthread_t th;
    pthread_create(&th, NULL, slow_sign_thread, &slot);
    usleep(300000);
    double t_kill = p11l_now_us();
    stop_signer(SIGKILL);
    double *res;
    pthread_join(th, (void **)&res);
    kill_at_ms = ms_since(t_kill);
    CHECK((CK_RV)res[0] == CKR_DEVICE_ERROR && res[1] < DEADLINE_MS + 1000,
          "signer SIGKILLed mid-request: %s after %.0f ms (%.0f ms after the kill)",
          p11l_rv_str((CK_RV)res[0]), res[1], kill_at_ms);
    t0 = p11l_now_us();
    ok = good_sign(s, NULL);
    CHECK(!ok && ms_since(t0) < DEADLINE_MS + 1000, "signer killed: p256 fails in %.0f ms",
          ms_since(t0));
    start_signer(NULL, NULL);
    ok = good_sign(s, &ms);
    CHECK(ok, "signer restarted: p256 signs again (%.1f ms)", ms);
}

struct thr { CK_SLOT_ID slot; int ok, n; };
static void *sign_thread(void *arg)
{
    struct thr *t = arg;
    CK_SESSION_HANDLE s;
    if (fl->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return NULL;
    uint8_t d[32], sig[64], msg[64] = { 5 };
    CK_MECHANISM me = { CKM_ECDSA, NULL, 0 }, md = { CKM_EDDSA, NULL, 0 };
    for (int i = 0; i < t->n; i++) {
        memset(d, i, sizeof d);
        CK_ULONG sl = sizeof sig;
        bool ed = i % 2;
        CK_RV rv = sign_ms(s, ed ? k_ed : k_p256, ed ? &md : &me, ed ? msg : d, 32, sig, &sl, NULL);
        if (rv == CKR_OK)
            t->ok++;
    }
    fl->C_CloseSession(s);
    return NULL;
}

static void phase_pool(CK_SESSION_HANDLE s)
{
    printf("-- pool\n");
    int c0 = 0, r0 = 0, c1 = 0, r1 = 0;
    bool st = signer_stats(&c0, &r0);
    int ok = 0;
    for (int i = 0; i < 50; i++)
        ok += good_sign(s, NULL);
    st = st && signer_stats(&c1, &r1);
    CHECK(st && ok == 50 && c1 - c0 <= 1 && r1 - r0 >= 50,
          "50 signatures: %d new connection(s), %d requests", c1 - c0, r1 - r0);

    /* threads share the pool */
    struct thr t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){ slot, 0, 40 };
        pthread_create(&th[i], NULL, sign_thread, &t[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += t[i].ok;
    }
    int c2 = 0, r2 = 0;
    signer_stats(&c2, &r2);
    CHECK(total == 160, "4 threads x 40 signatures: %d ok, %d new connection(s)", total, c2 - c1);

    /* a forked child signs on its own connections; the parent's stay intact */
    pid_t pid = fork();
    if (pid == 0) {
        CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
        CK_RV rv = fl->C_Initialize(&args);
        CK_SESSION_HANDLE cs = CK_INVALID_HANDLE;
        if (rv == CKR_OK)
            rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &cs);
        if (rv == CKR_OK)
            rv = p11l_login(fl, cs, USER_PIN);
        int n = 0;
        for (int i = 0; i < 10 && rv == CKR_OK; i++)
            n += good_sign(cs, NULL);
        fl->C_Finalize(NULL);
        _exit(n == 10 ? 0 : 1);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forked child signs 10 times");
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += good_sign(s, NULL);
    CHECK(ok == 10, "parent signs after the child: %d/10", ok);

    /* a signer that closes every connection after one answer: pooled
     * connections die, the module notices or reconnects once */
    stop_signer(SIGTERM);
    start_signer("--close-after", "1");
    ok = 0;
    double t0 = p11l_now_us();
    for (int i = 0; i < 30; i++)
        ok += good_sign(s, NULL);
    int c3 = 0, r3 = 0;
    signer_stats(&c3, &r3);
    CHECK(ok == 30, "signer closing after every answer: %d/30 ok, %d connections, %.1f ms/sig", ok,
          c3, ms_since(t0) / 30);
    stop_signer(SIGTERM);
    start_signer(NULL, NULL);
}

/* Signatures (or verifications) per second for 0.5 s. */
static double rate_of(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech,
                      const uint8_t *vsig, CK_ULONG vsig_len)
{
    uint8_t d[32] = { 4 }, sig[128];
    CK_MECHANISM m = { mech, NULL, 0 };
    double t0 = p11l_now_us(), now;
    unsigned long n = 0;
    do {
        CK_ULONG sl = sizeof sig;
        CK_RV rv = vsig ? fl->C_VerifyInit(s, &m, key) : fl->C_SignInit(s, &m, key);
        if (rv == CKR_OK)
            rv = vsig ? fl->C_Verify(s, d, 32, (CK_BYTE_PTR)vsig, vsig_len) : fl->C_Sign(s, d, 32, sig, &sl);
        if (rv != CKR_OK)
            return 0;
        n++;
        now = p11l_now_us();
    } while (now - t0 < 500000);
    return n / ((now - t0) / 1e6);
}

/* The protocol's sign straight to the fake signer (no module) for 0.5 s. */
static double raw_rate(const char *key, const char *alg)
{
    kh_wire_url u;
    kh_wire_conn *c;
    if (kh_wire_url_parse(&u, NULL, 0, sock_url) != KH_WIRE_OK ||
        kh_wire_connect(&c, &u, NULL, kh_wire_now_ms() + 2000) != KH_WIRE_OK)
        return 0;
    char req[400];
    int len = snprintf(req, sizeof req, "{\"method\":\"sign\",\"params\":{\"key\":\"%s\",\"algorithm\":"
                       "\"%s\",\"%s\":\"0400000000000000000000000000000000000000000000000000000000000000\"}}",
                       key, alg, strcmp(alg, "eddsa") ? "digest" : "message");
    double t0 = p11l_now_us(), now;
    unsigned long n = 0;
    do {
        char *b = NULL;
        size_t bl;
        if (kh_wire_send(c, req, (size_t)len, kh_wire_now_ms() + 2000) != KH_WIRE_OK ||
            kh_wire_recv(c, &b, &bl, KH_WIRE_FRAME_MAX, kh_wire_now_ms() + 2000) != KH_WIRE_OK) {
            kh_wire_close(c);
            return 0;
        }
        free(b);
        n++;
        now = p11l_now_us();
    } while (now - t0 < 500000);
    kh_wire_close(c);
    return n / ((now - t0) / 1e6);
}

/*
 * Printed, never asserted: what the client module costs per remote
 * signature against a fast server (fake-signer answers from a software key),
 * beside a vault key of the same type in the same token.
 */
static void phase_throughput(CK_SESSION_HANDLE s)
{
    printf("-- throughput (0.5 s per cell, 1 thread; printed, not asserted)\n");
    static const struct { const char *id; p11l_alg alg; CK_MECHANISM_TYPE mech; const char *palg; } t[] = {
        { "p256", P11L_P256, CKM_ECDSA, "ecdsa" },
        { "k1", P11L_SECP256K1, CKM_ECDSA, "ecdsa" },
        { "ed25519", P11L_ED25519, CKM_EDDSA, "eddsa" },
    };
    CK_OBJECT_HANDLE remote[3] = { k_p256, k_k1, k_ed };
    printf("   %-8s %12s %12s %12s %12s %10s\n", "key", "vault sign", "verify", "fake raw",
           "remote unix", "rem/vault");
    for (size_t i = 0; i < 3; i++) {
        CK_OBJECT_HANDLE pub, priv;
        char label[32];
        snprintf(label, sizeof label, "vault-%s", t[i].id);
        if (p11l_gen_keypair(fl, &pub, &priv, s, t[i].alg, label, (const uint8_t *)label, strlen(label)) != CKR_OK)
            continue;
        uint8_t d[32] = { 4 }, sig[128];
        CK_ULONG sl = sizeof sig;
        CK_MECHANISM m = { t[i].mech, NULL, 0 };
        fl->C_SignInit(s, &m, priv);
        fl->C_Sign(s, d, 32, sig, &sl);
        double vs = rate_of(s, priv, t[i].mech, NULL, 0);
        double vv = rate_of(s, pub, t[i].mech, sig, sl);
        double raw = raw_rate(t[i].id, t[i].palg);
        double rs = rate_of(s, remote[i], t[i].mech, NULL, 0);
        printf("   %-8s %12.0f %12.0f %12.0f %12.0f %10.2f\n", t[i].id, vs, vv, raw, rs,
               vs > 0 ? rs / vs : 0);
    }
}

static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sa;
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}

static int sh(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed: %s\n", cmd);
    return rc;
}

/* Finalize and initialise the module again with another configuration. */
static CK_SESSION_HANDLE reinit(const char *conf_extra)
{
    fl->C_Finalize(NULL);
    write_conf(conf_extra);
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
    CK_RV rv = fl->C_Initialize(&args);
    if (rv != CKR_OK)
        fprintf(stderr, "C_Initialize: %s\n", p11l_rv_str(rv));
    return open_session(slot);
}

static void phase_tcp_tls(void)
{
    printf("-- tcp, tls\n");
    char url[64], tls_url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", free_port());
    pid_t tcp_pid = start_signer_on(url, NULL, NULL, NULL, NULL);
    CK_SESSION_HANDLE s = open_session(slot);
    CK_OBJECT_HANDLE k;
    uint8_t msg[40] = { 1 }, sig[64];
    CK_ULONG sl = sizeof sig;
    CK_MECHANISM m = { CKM_EDDSA, NULL, 0 };
    CK_RV rv = reg(&k, s, ref_for(url, "ed25519"), "tcp-ed25519", NULL, 0);
    if (rv == CKR_OK)
        rv = sign_ms(s, k, &m, msg, sizeof msg, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k, P11L_ED25519, msg, sizeof msg, sig, sl),
          "over TCP: register and sign Ed25519: %s", p11l_rv_str(rv));
    fl->C_CloseSession(s);
    stop_pid(tcp_pid, SIGTERM);

    /* TLS: a CA and a server certificate for 127.0.0.1, made now */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cd %s && for ca in ca other; do openssl req -x509 -newkey ec -pkeyopt "
             "ec_paramgen_curve:P-256 -nodes -keyout $ca.key -out $ca.pem -days 2 -subj /CN=$ca "
             "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign "
             ">/dev/null 2>&1 || exit 1; done && printf 'subjectAltName=IP:127.0.0.1\\n' >srv.ext && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out "
             "srv.csr -subj /CN=signer >/dev/null 2>&1 && openssl x509 -req -in srv.csr -CA ca.pem "
             "-CAkey ca.key -CAcreateserial -days 2 -extfile srv.ext -out srv.pem >/dev/null 2>&1",
             tmp);
    if (sh(cmd) != 0) {
        CHECK(false, "making the test CA");
        return;
    }
    char cert[4300], key[4300], conf[9000];
    snprintf(cert, sizeof cert, "%s/srv.pem", tmp);
    snprintf(key, sizeof key, "%s/srv.key", tmp);
    snprintf(tls_url, sizeof tls_url, "tls://127.0.0.1:%u", free_port());
    pid_t tls_pid = start_signer_on(tls_url, "--tls-cert", cert, "--tls-key", key);
    snprintf(conf, sizeof conf, "remote_tls_ca = %s/ca.pem\n", tmp);
    s = reinit(conf);
    sl = sizeof sig;
    rv = reg(&k, s, ref_for(tls_url, "ed25519"), "tls-ed25519", NULL, 0);
    if (rv == CKR_OK)
        rv = sign_ms(s, k, &m, msg, sizeof msg, sig, &sl, NULL);
    CHECK(rv == CKR_OK && ossl_ok(s, k, P11L_ED25519, msg, sizeof msg, sig, sl),
          "over TLS (server verified with the test CA): register and sign: %s", p11l_rv_str(rv));
    snprintf(conf, sizeof conf, "remote_tls_ca = %s/other.pem\n", tmp);
    s = reinit(conf);
    sl = sizeof sig;
    double ms;
    rv = sign_ms(s, k, &m, msg, sizeof msg, sig, &sl, &ms);
    CHECK(rv == CKR_DEVICE_ERROR, "TLS with the wrong CA: %s in %.0f ms", p11l_rv_str(rv), ms);
    CK_OBJECT_HANDLE k2;
    rv = reg(&k2, s, ref_for(tls_url, "p256"), "tls-p256", NULL, 0);
    CHECK(rv == CKR_DEVICE_ERROR, "register over TLS with the wrong CA: %s", p11l_rv_str(rv));
    stop_pid(tls_pid, SIGTERM);
}

/* Configuration values are checked at C_Initialize. */
static void phase_config(void)
{
    printf("-- configuration\n");
    static const struct { const char *conf; CK_RV want; } c[] = {
        { "remote_timeout_ms = 0\n", CKR_GENERAL_ERROR },
        { "remote_timeout_ms = 5s\n", CKR_GENERAL_ERROR },
        { "remote_pool_size = 65\n", CKR_GENERAL_ERROR },
        { "remote_plugin_signer = /x.so\n", CKR_GENERAL_ERROR },
        { "remote_plugin_Bad = /x.so\n", CKR_GENERAL_ERROR },
        { "remote_plugin_rel = x.so\n", CKR_GENERAL_ERROR },
        { "remote_something_new = 1\nremote_pool_size = 0\n", CKR_OK },
    };
    fl->C_Finalize(NULL);
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        write_conf(c[i].conf);
        CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
        CK_RV rv = fl->C_Initialize(&args);
        char shown[80];
        snprintf(shown, sizeof shown, "%s", c[i].conf);
        for (char *p = shown; *p; p++)
            if (*p == '\n')
                *p = ' ';
        CHECK(rv == c[i].want, "C_Initialize with '%s': %s", shown, p11l_rv_str(rv));
        if (rv == CKR_OK) {
            /* pool size 0: every signature on a new connection, still fine */
            CK_SESSION_HANDLE s = open_session(slot);
            bool ok = good_sign(s, NULL) && good_sign(s, NULL);
            CHECK(ok, "signing with remote_pool_size = 0");
            fl->C_Finalize(NULL);
        }
    }
    write_conf(NULL);
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
    fl->C_Initialize(&args);
}

static void phase_plugin(void)
{
    printf("-- plugin\n");
    const char *drv = getenv("KH_TEST_DRIVER"), *bad = getenv("KH_TEST_DRIVER_BADABI");
    if (!drv || !bad) {
        CHECK(false, "KH_TEST_DRIVER and KH_TEST_DRIVER_BADABI must name the test plugins");
        return;
    }
    char conf[9000];
    snprintf(conf, sizeof conf, "remote_plugin_testdrv = %s\nremote_plugin_badabi = %s\n", drv, bad);
    CK_SESSION_HANDLE s = reinit(conf);
    uint8_t d[32] = { 8 }, msg[77] = { 2 }, sig[128];
    struct { const char *ref; CK_MECHANISM_TYPE mech; p11l_alg alg; CK_RV want; } c[] = {
        { "testdrv:p256:alice", CKM_ECDSA, P11L_P256, CKR_OK },
        { "testdrv:p256:alice+der", CKM_ECDSA, P11L_P256, CKR_OK },
        { "testdrv:secp256k1:carol", CKM_ECDSA, P11L_SECP256K1, CKR_OK },
        { "testdrv:ed25519:bob", CKM_EDDSA, P11L_ED25519, CKR_OK },
        { "testdrv:p256:alice+wrongkey", CKM_ECDSA, P11L_P256, CKR_DEVICE_ERROR },
        { "testdrv:ed25519:bob+wrongkey", CKM_EDDSA, P11L_ED25519, CKR_DEVICE_ERROR },
        { "testdrv:p256:zed+slow3000", CKM_ECDSA, P11L_P256, CKR_DEVICE_ERROR },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        CK_OBJECT_HANDLE k;
        CK_RV rv = reg(&k, s, c[i].ref, c[i].ref, NULL, 0);
        CK_ULONG sl = sizeof sig;
        CK_MECHANISM m = { c[i].mech, NULL, 0 };
        const uint8_t *data = c[i].mech == CKM_EDDSA ? msg : d;
        size_t len = c[i].mech == CKM_EDDSA ? sizeof msg : 32;
        double ms = 0;
        if (rv == CKR_OK)
            rv = sign_ms(s, k, &m, data, len, sig, &sl, &ms);
        CHECK(rv == c[i].want && ms < DEADLINE_MS + 1000 &&
                  (rv != CKR_OK || ossl_ok(s, k, c[i].alg, data, len, sig, sl)),
              "%s: %s in %.0f ms%s", c[i].ref, p11l_rv_str(rv), ms,
              rv == CKR_OK ? ", OpenSSL verifies" : "");
    }
    CK_OBJECT_HANDLE k;
    CK_RV rv = reg(&k, s, "testdrv:rsa:x", "plugin-rsa", NULL, 0);
    CHECK(rv == CKR_ATTRIBUTE_VALUE_INVALID, "plugin without RSA keys: %s", p11l_rv_str(rv));
    rv = reg(&k, s, "badabi:p256:alice", "badabi", NULL, 0);
    CHECK(rv == CKR_DEVICE_ERROR, "plugin with ABI version 99 refused: %s", p11l_rv_str(rv));
    fl->C_CloseSession(s);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const char *mod = p11l_module_path();
    fake_path = getenv("KH_FAKE_SIGNER");
    if (!mod || !fake_path) {
        fprintf(stderr, "KEYHOLD_MODULE and KH_FAKE_SIGNER must be set\n");
        return 2;
    }
    if (!p11l_tmpdir(tmp, sizeof tmp, "remote"))
        return 2;
    char store[4300];
    snprintf(store, sizeof store, "%s/store", tmp);
    setenv("KEYHOLD_STORE", store, 1);
    snprintf(sock_url, sizeof sock_url, "unix:%s/fs.sock", tmp);
    snprintf(keys_dir, sizeof keys_dir, "%s/keys", tmp);
    write_conf(NULL);
    start_signer(NULL, NULL);

    CK_RV rv = p11l_load(&dl, &fl, mod);
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
    if (rv == CKR_OK)
        rv = fl->C_Initialize(&args);
    if (rv == CKR_OK)
        rv = p11l_make_token(fl, &slot, "remote", SO_PIN, USER_PIN);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: %s\n", p11l_rv_str(rv));
        stop_signer(SIGTERM);
        return 1;
    }
    CK_SESSION_HANDLE s = open_session(slot);
    phase_register(s);
    phase_sign(s);
    phase_faults(s);
    phase_restart(s);
    phase_pool(s);
    phase_throughput(s);
    fl->C_CloseSession(s);
    phase_config();
    phase_tcp_tls();
    phase_plugin();
    fl->C_Finalize(NULL);
    p11l_unload(dl);
    stop_signer(SIGTERM);
    if (!getenv("KH_KEEP_STORE"))
        p11l_rmtree(tmp);
    printf("== remote: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
