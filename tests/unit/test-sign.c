/*
 * test-sign.c - keyhold-sign's parsing without a token (tools/signcmd.c):
 * the stdin message (strict base64 line, raw), the signature encodings,
 * options and the configuration file, the mechanism table and its local
 * hash fallback, the exit codes, and reading input up to a cap.
 */
#include "testutil.h"

#include "signcmd.h"

#include <openssl/evp.h>

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* decode <in> (len bytes) in base64 mode; true when accepted. */
static bool decode_b64(const char *in, size_t len, uint8_t **msg, size_t *msg_len, char *err,
                       size_t errlen)
{
    return kh_sign_decode_input(msg, msg_len, KH_SIGN_IN_BASE64, (const uint8_t *)in, len, err,
                                errlen) == KH_SIGN_EXIT_OK;
}

static void test_base64_accepts(void)
{
    static const struct { const char *in; const char *want; } cases[] = {
        { "Zm9vYmFy\n", "foobar" },
        { "Zm9vYmE=\n", "fooba" },
        { "Zm9vYg==\n", "foob" },
        { "Zm9vYg==\r\n", "foob" },      /* CRLF line ending */
        { "Zm9vYg==", "foob" },          /* no line ending */
        { "\n", "" },                    /* the empty message */
        { "\r\n", "" },
    };
    char err[256];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *msg = NULL;
        size_t len = 0;
        bool ok = decode_b64(cases[i].in, strlen(cases[i].in), &msg, &len, err, sizeof err);
        if (!ok) {
            kh_test_fail(__FILE__, __LINE__, "case %zu rejected: %s", i, err);
            continue;
        }
        KH_CHECK(msg != NULL);
        KH_CHECK(len == strlen(cases[i].want));
        KH_CHECK(len == 0 || memcmp(msg, cases[i].want, len) == 0);
        free(msg);
    }
}

static void test_base64_rejects(void)
{
    /* Input (with its length, NULs allowed) and a part of the reason. */
    static const struct { const char *in; size_t len; const char *why; } cases[] = {
        { "", 0, "no input" },
        { "Zg\n", 3, "not a multiple of 4" },
        { "Zg=\n", 4, "not a multiple of 4" },
        { "Zm9v\nZm9v\n", 10, "5 more bytes after offset 4" },
        { "Zm9v\n\n", 6, "1 more bytes after offset 4" },
        { "Zm9v\r\r\n", 7, "line break at offset 4" },
        { "Zm 9v\n", 6, "offset 2 is not in the base64 alphabet" },
        { "Zm9v \n", 6, "offset 4 is not in the base64 alphabet" },
        { "Zm9-\n", 5, "offset 3 is not in the base64 alphabet" },
        { "Zm9_\n", 5, "offset 3 is not in the base64 alphabet" },
        { "Zm\0v\n", 5, "offset 2 is not in the base64 alphabet" },
        { "Zm9v\xff\n", 6, "offset 4 is not in the base64 alphabet" },
        { "Z=9v\n", 5, "'=' at offset 1 is not final padding" },
        { "Zm=v\n", 5, "'=' at offset 2 is not final padding" },
        { "====\n", 5, "'=' at offset 0" },
        { "Zg=a\n", 5, "'=' at offset 2 is not final padding" },
        { "Zh==\n", 5, "non-canonical" },
        { "Zm9=\n", 5, "non-canonical" },
        { "Zm8=Zm8=\n", 9, "'=' at offset 3 is not final padding" },
    };
    char err[256];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *msg = (uint8_t *)"sentinel";
        size_t len = 99;
        int r = kh_sign_decode_input(&msg, &len, KH_SIGN_IN_BASE64, (const uint8_t *)cases[i].in,
                                     cases[i].len, err, sizeof err);
        if (r != KH_SIGN_EXIT_INPUT) {
            kh_test_fail(__FILE__, __LINE__, "case %zu: returned %d, want %d", i, r, KH_SIGN_EXIT_INPUT);
            if (r == KH_SIGN_EXIT_OK)
                free(msg);
            continue;
        }
        KH_CHECK(msg == NULL && len == 0);
        if (!strstr(err, cases[i].why))
            kh_test_fail(__FILE__, __LINE__, "case %zu: reason '%s' lacks '%s'", i, err, cases[i].why);
    }
}

/* Every length 0..64 of random bytes survives encode + decode. */
static void test_base64_roundtrip(void)
{
    uint64_t s = kh_test_seed();
    uint8_t buf[64];
    char err[256];

    for (size_t n = 0; n <= sizeof buf; n++) {
        uint8_t *enc, *msg = NULL;
        size_t enc_len, msg_len = 0;
        for (size_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[i] = (uint8_t)(s >> 56);
        }
        enc = kh_sign_encode_output(KH_SIGN_OUT_BASE64, buf, n, &enc_len);
        KH_CHECK(enc && enc_len > 0 && enc[enc_len - 1] == '\n');
        if (!enc)
            continue;
        KH_CHECK(decode_b64((const char *)enc, enc_len, &msg, &msg_len, err, sizeof err));
        KH_CHECK(msg_len == n && (n == 0 || memcmp(msg, buf, n) == 0));
        free(enc);
        free(msg);
    }
}

static void test_message_limits(void)
{
    size_t n = KH_SIGN_MAX_MESSAGE;
    uint8_t *big = calloc(1, n + 1), *msg = NULL, *enc;
    size_t msg_len = 0, enc_len;
    char err[256];

    KH_CHECK(big != NULL);
    if (!big)
        return;
    /* raw: up to the maximum, and the empty message */
    KH_CHECK(kh_sign_decode_input(&msg, &msg_len, KH_SIGN_IN_RAW, big, n, err, sizeof err) == KH_SIGN_EXIT_OK);
    KH_CHECK(msg_len == n);
    free(msg);
    KH_CHECK(kh_sign_decode_input(&msg, &msg_len, KH_SIGN_IN_RAW, big, 0, err, sizeof err) == KH_SIGN_EXIT_OK);
    KH_CHECK(msg != NULL && msg_len == 0);
    free(msg);
    KH_CHECK(kh_sign_decode_input(&msg, &msg_len, KH_SIGN_IN_RAW, big, n + 1, err, sizeof err) == KH_SIGN_EXIT_INPUT);
    /* base64: the maximum fits in KH_SIGN_MAX_BASE64; one byte more does not decode */
    enc = kh_sign_encode_output(KH_SIGN_OUT_BASE64, big, n, &enc_len);
    KH_CHECK(enc && enc_len <= KH_SIGN_MAX_BASE64);
    KH_CHECK(decode_b64((const char *)enc, enc_len, &msg, &msg_len, err, sizeof err) && msg_len == n);
    free(msg);
    free(enc);
    enc = kh_sign_encode_output(KH_SIGN_OUT_BASE64, big, n + 1, &enc_len);
    KH_CHECK(enc != NULL);
    KH_CHECK(enc && !decode_b64((const char *)enc, enc_len, &msg, &msg_len, err, sizeof err));
    KH_CHECK(strstr(err, "longer than") != NULL);
    free(enc);
    free(big);
}

static void test_output(void)
{
    const uint8_t sig[] = { 0x00, 0x01, 0xfe, 0xff, 0x7f };
    uint8_t *out;
    size_t len;

    out = kh_sign_encode_output(KH_SIGN_OUT_BASE64, sig, sizeof sig, &len);
    KH_CHECK(out && len == 9 && memcmp(out, "AAH+/38=\n", 9) == 0);
    free(out);
    out = kh_sign_encode_output(KH_SIGN_OUT_HEX, sig, sizeof sig, &len);
    KH_CHECK(out && len == 11 && memcmp(out, "0001feff7f\n", 11) == 0);
    free(out);
    out = kh_sign_encode_output(KH_SIGN_OUT_RAW, sig, sizeof sig, &len);
    KH_CHECK(out && len == sizeof sig && memcmp(out, sig, sizeof sig) == 0);
    free(out);
}

static void test_opts_set(void)
{
    struct kh_sign_opts o;
    char err[512];

    memset(&o, 0, sizeof o);
    KH_CHECK(kh_sign_opts_set(&o, "uri", "pkcs11:token=a;object=b?pin-value=1234", err, sizeof err));
    KH_CHECK(!kh_sign_opts_set(&o, "uri", "pkcs11:object=c", err, sizeof err));
    KH_CHECK(strcmp(err, "given twice") == 0);
    KH_CHECK(strcmp(o.uri, "pkcs11:token=a;object=b?pin-value=1234") == 0);
    KH_CHECK(kh_sign_opts_set(&o, "module", "/x.so", err, sizeof err) && strcmp(o.module, "/x.so") == 0);
    KH_CHECK(kh_sign_opts_set(&o, "pin_file", "/run/pin", err, sizeof err));
    KH_CHECK(kh_sign_opts_set(&o, "mechanism", "bip340", err, sizeof err));
    KH_CHECK(kh_sign_opts_set(&o, "in", "raw", err, sizeof err) && o.in == KH_SIGN_IN_RAW);
    KH_CHECK(!kh_sign_opts_set(&o, "in", "base64", err, sizeof err) && o.in == KH_SIGN_IN_RAW);
    KH_CHECK(kh_sign_opts_set(&o, "out", "hex", err, sizeof err) && o.out == KH_SIGN_OUT_HEX);
    KH_CHECK(kh_sign_opts_set(&o, "timeout_ms", "3600000", err, sizeof err) && o.timeout_ms == 3600000);
    KH_CHECK(!kh_sign_opts_set(&o, "timeout_ms", "5", err, sizeof err));
    kh_sign_opts_clear(&o);
    KH_CHECK(o.uri == NULL && o.in == KH_SIGN_IN_UNSET && o.timeout_ms == 0);

    /* Bad values leave the setting unset. */
    KH_CHECK(!kh_sign_opts_set(&o, "uri", "token=a", err, sizeof err) && !o.uri);
    KH_CHECK(!kh_sign_opts_set(&o, "uri", "", err, sizeof err) && !o.uri);
    KH_CHECK(!kh_sign_opts_set(&o, "module", "", err, sizeof err) && !o.module);
    KH_CHECK(!kh_sign_opts_set(&o, "pin_file", "-", err, sizeof err) && !o.pin_file);
    KH_CHECK(!kh_sign_opts_set(&o, "mechanism", "ecdsa-sha1", err, sizeof err) && !o.mechanism);
    KH_CHECK(strstr(err, "eddsa, ecdsa-sha256") != NULL);
    KH_CHECK(!kh_sign_opts_set(&o, "in", "hex", err, sizeof err) && o.in == KH_SIGN_IN_UNSET);
    KH_CHECK(!kh_sign_opts_set(&o, "out", "pem", err, sizeof err) && o.out == KH_SIGN_OUT_UNSET);
    KH_CHECK(!kh_sign_opts_set(&o, "colour", "red", err, sizeof err));
    KH_CHECK(strcmp(err, "unknown setting") == 0);
    static const char *const bad_timeouts[] = {
        "0", "", "-1", "+5", " 5", "5 ", "5s", "1e3", "0x10", "3600001", "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof bad_timeouts / sizeof bad_timeouts[0]; i++) {
        if (kh_sign_opts_set(&o, "timeout_ms", bad_timeouts[i], err, sizeof err))
            kh_test_fail(__FILE__, __LINE__, "timeout '%s' accepted", bad_timeouts[i]);
        KH_CHECK(o.timeout_ms == 0);
    }
    KH_CHECK(kh_sign_opts_set(&o, "timeout_ms", "1", err, sizeof err) && o.timeout_ms == 1);
    kh_sign_opts_clear(&o);
}

static void test_conf_parse(void)
{
    static const char good[] =
        "# keyhold-sign\n"
        "\n"
        "uri = pkcs11:token=gw;object=ed\r\n"
        "  module=/usr/lib/x.so  \n"
        "\tout\t=\thex\n"
        "timeout_ms = 2500\n"
        "   # indented comment\n"
        "in = raw";                                      /* no final newline */
    struct kh_sign_opts o, cmd;
    char err[512];

    memset(&o, 0, sizeof o);
    KH_CHECK(kh_sign_conf_parse(&o, good, strlen(good), err, sizeof err));
    KH_CHECK(o.uri && strcmp(o.uri, "pkcs11:token=gw;object=ed") == 0);
    KH_CHECK(o.module && strcmp(o.module, "/usr/lib/x.so") == 0);
    KH_CHECK(o.out == KH_SIGN_OUT_HEX && o.in == KH_SIGN_IN_RAW && o.timeout_ms == 2500);
    KH_CHECK(o.pin_file == NULL && o.mechanism == NULL);

    /* The command line (cmd) wins; unset settings come from the file. */
    memset(&cmd, 0, sizeof cmd);
    KH_CHECK(kh_sign_opts_set(&cmd, "uri", "pkcs11:object=other", err, sizeof err));
    KH_CHECK(kh_sign_opts_set(&cmd, "out", "raw", err, sizeof err));
    kh_sign_opts_merge(&cmd, &o);
    KH_CHECK(strcmp(cmd.uri, "pkcs11:object=other") == 0 && cmd.out == KH_SIGN_OUT_RAW);
    KH_CHECK(cmd.module && strcmp(cmd.module, "/usr/lib/x.so") == 0 && o.module == NULL);
    KH_CHECK(cmd.in == KH_SIGN_IN_RAW && cmd.timeout_ms == 2500);
    kh_sign_opts_clear(&cmd);
    kh_sign_opts_clear(&o);

    static const struct { const char *text; size_t len; const char *why; } bad[] = {
        { "uri\n", 4, "line 1: expected 'name = value'" },
        { "# c\n= x\n", 8, "line 2: missing or overlong setting name" },
        { "in = raw\nin = raw\n", 18, "line 2: in: given twice" },
        { "\n\nout = pem\n", 11, "line 3: out: unknown format 'pem'" },
        { "uri = pkcs11:a\0b\n", 17, "NUL byte" },
        { "timeout_ms = \n", 14, "line 1: timeout_ms: '' is not" },
        { "module =\n", 9, "line 1: module: empty value" },
        { "pin-file = /x\n", 14, "line 1: pin-file: unknown setting" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&o, 0, sizeof o);
        if (kh_sign_conf_parse(&o, bad[i].text, bad[i].len, err, sizeof err))
            kh_test_fail(__FILE__, __LINE__, "bad config %zu accepted", i);
        else if (!strstr(err, bad[i].why))
            kh_test_fail(__FILE__, __LINE__, "bad config %zu: '%s' lacks '%s'", i, err, bad[i].why);
        kh_sign_opts_clear(&o);
    }
}

static void test_mechanisms(void)
{
    const struct kh_sign_mech *m;
    CK_RSA_PKCS_PSS_PARAMS pss;

    m = kh_sign_mech_default(CKK_EC_EDWARDS);
    KH_CHECK(m && m->mech == CKM_EDDSA && m->raw_mech == CK_UNAVAILABLE_INFORMATION);
    m = kh_sign_mech_default(CKK_EC);
    KH_CHECK(m && m->mech == CKM_ECDSA_SHA256 && m->raw_mech == CKM_ECDSA && !m->digest_info);
    m = kh_sign_mech_default(CKK_RSA);
    KH_CHECK(m && m->mech == CKM_SHA256_RSA_PKCS && m->raw_mech == CKM_RSA_PKCS && m->digest_info);
    KH_CHECK(kh_sign_mech_default(CKK_AES) == NULL);

    m = kh_sign_mech_by_name("bip340");
    KH_CHECK(m && m->mech == CKM_KH_BIP340_SCHNORR && m->input_len == 32);
    KH_CHECK(m && kh_sign_mech_fits(m, CKK_EC, KH_KEY_SECP256K1));
    KH_CHECK(m && !kh_sign_mech_fits(m, CKK_EC, KH_KEY_P256));
    m = kh_sign_mech_by_name("ecdsa-recoverable");
    KH_CHECK(m && m->mech == CKM_KH_ECDSA_RECOVERABLE && m->input_len == 32);
    m = kh_sign_mech_by_name("ecdsa-sha384");
    KH_CHECK(m && kh_sign_mech_fits(m, CKK_EC, KH_KEY_P256) && kh_sign_mech_fits(m, CKK_EC, KH_KEY_P384));
    KH_CHECK(m && !kh_sign_mech_fits(m, CKK_EC_EDWARDS, KH_KEY_ED25519));
    KH_CHECK(m && !kh_sign_mech_pss_params(m, &pss));
    m = kh_sign_mech_by_name("rsa-pss-sha384");
    KH_CHECK(m && m->mech == CKM_SHA384_RSA_PKCS_PSS && m->raw_mech == CKM_RSA_PKCS_PSS);
    KH_CHECK(m && kh_sign_mech_pss_params(m, &pss));
    KH_CHECK(pss.hashAlg == CKM_SHA384 && pss.mgf == CKG_MGF1_SHA384 && pss.sLen == 48);
    KH_CHECK(kh_sign_mech_by_name("EDDSA") == NULL && kh_sign_mech_by_name("") == NULL);
    /* Every name in the list resolves. */
    {
        char names[512], *save = NULL;
        snprintf(names, sizeof names, "%s", kh_sign_mech_names());
        int n = 0;
        for (char *t = strtok_r(names, ", ", &save); t; t = strtok_r(NULL, ", ", &save), n++)
            KH_CHECK(kh_sign_mech_by_name(t) != NULL);
        KH_CHECK(n == 13);
    }
}

/* The fallback input: the digest (FIPS 180-2 "abc" vectors) or, for
 * PKCS #1 v1.5, the DigestInfo (RFC 8017 9.2 note 1) followed by it. */
static void test_prehash(void)
{
    uint8_t out[KH_SIGN_PREHASH_MAX];
    size_t len;
    uint8_t *want;
    size_t wlen;

    KH_CHECK(kh_sign_prehash(kh_sign_mech_by_name("ecdsa-sha256"), (const uint8_t *)"abc", 3, out, &len));
    want = kh_test_unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &wlen);
    KH_CHECK(len == wlen && memcmp(out, want, wlen) == 0);
    free(want);

    KH_CHECK(kh_sign_prehash(kh_sign_mech_by_name("rsa-pkcs-sha256"), (const uint8_t *)"abc", 3, out, &len));
    want = kh_test_unhex("3031300d060960864801650304020105000420"
                         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &wlen);
    KH_CHECK(len == wlen && memcmp(out, want, wlen) == 0);
    free(want);

    KH_CHECK(kh_sign_prehash(kh_sign_mech_by_name("rsa-pkcs-sha512"), (const uint8_t *)"abc", 3, out, &len));
    want = kh_test_unhex("3051300d060960864801650304020305000440"
                         "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                         "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f", &wlen);
    KH_CHECK(len == wlen && len == KH_SIGN_PREHASH_MAX && memcmp(out, want, wlen) == 0);
    free(want);

    KH_CHECK(kh_sign_prehash(kh_sign_mech_by_name("rsa-pss-sha384"), (const uint8_t *)"abc", 3, out, &len));
    want = kh_test_unhex("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
                         "8086072ba1e7cc2358baeca134c825a7", &wlen);
    KH_CHECK(len == wlen && memcmp(out, want, wlen) == 0);
    free(want);

    KH_CHECK(!kh_sign_prehash(kh_sign_mech_by_name("eddsa"), (const uint8_t *)"abc", 3, out, &len));
    KH_CHECK(!kh_sign_prehash(kh_sign_mech_by_name("bip340"), (const uint8_t *)"abc", 3, out, &len));
    KH_CHECK(len == 0);
}

static void test_exit_codes(void)
{
    /* The codes are an interface (README): their values are fixed. */
    KH_CHECK(KH_SIGN_EXIT_OK == 0 && KH_SIGN_EXIT_FAIL == 1 && KH_SIGN_EXIT_USAGE == 2 &&
             KH_SIGN_EXIT_INPUT == 3 && KH_SIGN_EXIT_NO_KEY == 4 && KH_SIGN_EXIT_LOGIN == 5 &&
             KH_SIGN_EXIT_UNAVAILABLE == 6 && KH_SIGN_EXIT_TIMEOUT == 7);
    KH_CHECK(kh_sign_exit_for_rv(CKR_OK) == KH_SIGN_EXIT_OK);
    KH_CHECK(kh_sign_exit_for_rv(CKR_PIN_INCORRECT) == KH_SIGN_EXIT_LOGIN);
    KH_CHECK(kh_sign_exit_for_rv(CKR_PIN_LOCKED) == KH_SIGN_EXIT_LOGIN);
    KH_CHECK(kh_sign_exit_for_rv(CKR_PIN_LEN_RANGE) == KH_SIGN_EXIT_LOGIN);
    KH_CHECK(kh_sign_exit_for_rv(CKR_USER_PIN_NOT_INITIALIZED) == KH_SIGN_EXIT_LOGIN);
    KH_CHECK(kh_sign_exit_for_rv(CKR_USER_NOT_LOGGED_IN) == KH_SIGN_EXIT_LOGIN);
    KH_CHECK(kh_sign_exit_for_rv(CKR_DEVICE_ERROR) == KH_SIGN_EXIT_UNAVAILABLE);
    KH_CHECK(kh_sign_exit_for_rv(CKR_DEVICE_REMOVED) == KH_SIGN_EXIT_UNAVAILABLE);
    KH_CHECK(kh_sign_exit_for_rv(CKR_TOKEN_NOT_PRESENT) == KH_SIGN_EXIT_UNAVAILABLE);
    KH_CHECK(kh_sign_exit_for_rv(CKR_LIBRARY_LOAD_FAILED) == KH_SIGN_EXIT_UNAVAILABLE);
    KH_CHECK(kh_sign_exit_for_rv(CKR_KH_STORE_ERROR) == KH_SIGN_EXIT_UNAVAILABLE);
    KH_CHECK(kh_sign_exit_for_rv(CKR_DATA_LEN_RANGE) == KH_SIGN_EXIT_INPUT);
    KH_CHECK(kh_sign_exit_for_rv(CKR_DATA_INVALID) == KH_SIGN_EXIT_INPUT);
    KH_CHECK(kh_sign_exit_for_rv(CKR_MECHANISM_INVALID) == KH_SIGN_EXIT_FAIL);
    KH_CHECK(kh_sign_exit_for_rv(CKR_KEY_TYPE_INCONSISTENT) == KH_SIGN_EXIT_FAIL);
    KH_CHECK(kh_sign_exit_for_rv(CKR_FUNCTION_FAILED) == KH_SIGN_EXIT_FAIL);
    KH_CHECK(kh_sign_exit_for_rv(CKR_GENERAL_ERROR) == KH_SIGN_EXIT_FAIL);
}

/* Writes len bytes into a pipe from a child and reads them back with max. */
static int read_through_pipe(size_t len, size_t max, size_t *got)
{
    int fds[2];
    uint8_t *buf = NULL;
    char err[256];
    int r;
    pid_t pid;

    if (pipe(fds) != 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        static const uint8_t chunk[4096] = { 'x' };
        close(fds[0]);
        for (size_t done = 0; done < len;) {
            size_t n = len - done < sizeof chunk ? len - done : sizeof chunk;
            ssize_t w = write(fds[1], chunk, n);
            if (w <= 0)
                _exit(0);     /* the reader stopped early: fine */
            done += (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    r = kh_sign_read_all(fds[0], max, &buf, got, err, sizeof err);
    close(fds[0]);
    waitpid(pid, NULL, 0);
    free(buf);
    return r;
}

static void test_read_all(void)
{
    size_t got = 0;

    KH_CHECK(read_through_pipe(0, 100, &got) == KH_SIGN_EXIT_OK && got == 0);
    KH_CHECK(read_through_pipe(100, 100, &got) == KH_SIGN_EXIT_OK && got == 100);
    KH_CHECK(read_through_pipe(101, 100, &got) == KH_SIGN_EXIT_INPUT);
    KH_CHECK(read_through_pipe(200000, 200000, &got) == KH_SIGN_EXIT_OK && got == 200000);
    KH_CHECK(read_through_pipe(200001, 200000, &got) == KH_SIGN_EXIT_INPUT);
    KH_CHECK(read_through_pipe(4096, 4096, &got) == KH_SIGN_EXIT_OK && got == 4096);
    KH_CHECK(read_through_pipe(4097, 4096, &got) == KH_SIGN_EXIT_INPUT);
}

int main(int argc, char **argv)
{
    kh_test_register("/sign/input/base64-accepts", test_base64_accepts);
    kh_test_register("/sign/input/base64-rejects", test_base64_rejects);
    kh_test_register("/sign/input/base64-roundtrip", test_base64_roundtrip);
    kh_test_register("/sign/input/limits", test_message_limits);
    kh_test_register("/sign/input/read-all", test_read_all);
    kh_test_register("/sign/output/formats", test_output);
    kh_test_register("/sign/opts/set", test_opts_set);
    kh_test_register("/sign/opts/config", test_conf_parse);
    kh_test_register("/sign/mech/table", test_mechanisms);
    kh_test_register("/sign/mech/prehash", test_prehash);
    kh_test_register("/sign/exit-codes", test_exit_codes);
    return kh_test_run(argc, argv);
}
