/*
 * test-tools.c - the tools' helper units: Keccak-256, bech32 (NIP-19),
 * hex/base64, public key encodings, PEM import parsing and PKCS#11 URIs.
 */
#include "testutil.h"

#include "bech32.h"
#include "encode.h"
#include "keccak.h"
#include "p11.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <stdlib.h>
#include <string.h>

static void check_hex(const uint8_t *got, size_t len, const char *want)
{
    char hex[1024];
    KH_CHECK(kh_hex_encode(hex, sizeof hex, got, len));
    if (strcmp(hex, want) != 0)
        kh_test_fail(__FILE__, __LINE__, "got %s, want %s", hex, want);
}

static void test_keccak_vectors(void)
{
    uint8_t h[32], msg[200];

    kh_keccak256(h, NULL, 0);
    check_hex(h, 32, "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
    kh_keccak256(h, (const uint8_t *)"abc", 3);
    check_hex(h, 32, "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45");

    /* Lengths around the 136-byte rate, from an independent Python
     * implementation that matches hashlib.sha3_256 with 0x06 padding. */
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)i;
    kh_keccak256(h, msg, 135);
    check_hex(h, 32, "cbdfd9dee5faad3818d6b06f95a219fd290b0e1706f6a82e5a595b9ce9faca62");
    kh_keccak256(h, msg, 136);
    check_hex(h, 32, "7ce759f1ab7f9ce437719970c26b0a66ff11fe3e38e17df89cf5d29c7d7f807e");
    kh_keccak256(h, msg, 137);
    check_hex(h, 32, "ac73d4fae68b8453f764007c1a20ce95994187861f0c3227a3a8e99a73a3b1db");
    kh_keccak256(h, msg, 200);
    check_hex(h, 32, "bfb0aa97863e797943cf7c33bb7e880bb4543f3d2703c0923c6901c2af57b890");
    memset(msg, 0xa3, sizeof msg);
    kh_keccak256(h, msg, 200);
    check_hex(h, 32, "3a57666b048777f2c953dc4456f45a2588e1cb6f2da760122d530ac2ce607d4a");
}

static void check_nip19(const char *hrp, const char *str, const char *hex)
{
    char out[KH_BECH32_MAX + 1], gothrp[16];
    uint8_t data[64];
    size_t len;
    uint8_t *want = kh_test_unhex(hex, &len);

    KH_CHECK(kh_bech32_encode(out, sizeof out, hrp, want, len));
    if (strcmp(out, str) != 0)
        kh_test_fail(__FILE__, __LINE__, "encode: got %s, want %s", out, str);
    KH_CHECK(kh_bech32_decode(gothrp, sizeof gothrp, data, &len, sizeof data, str));
    KH_CHECK(strcmp(gothrp, hrp) == 0);
    KH_CHECK(len == 32);
    check_hex(data, len, hex);
    free(want);
}

/* The examples of NIP-19 itself (nostr-protocol/nips 19.md). */
static void test_bech32_nip19(void)
{
    check_nip19("npub", "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6",
                "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d");
    check_nip19("nsec", "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5",
                "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa");
}

static void test_bech32_roundtrip(void)
{
    uint64_t seed = kh_test_seed();
    for (size_t len = 0; len < 70; len++) {
        uint8_t in[70], back[70];
        char s[KH_BECH32_MAX + 1], hrp[16];
        size_t blen;
        for (size_t i = 0; i < len; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            in[i] = (uint8_t)(seed >> 56);
        }
        KH_CHECK(kh_bech32_encode(s, sizeof s, "test", in, len));
        KH_CHECK(kh_bech32_decode(hrp, sizeof hrp, back, &blen, sizeof back, s));
        KH_CHECK(blen == len && strcmp(hrp, "test") == 0);
        KH_CHECK(len == 0 || memcmp(in, back, len) == 0);
        /* Any single-character change breaks the checksum. */
        if (len > 0) {
            size_t pos = strlen(s) - 1 - len % 6;
            s[pos] = s[pos] == 'q' ? 'p' : 'q';
            KH_CHECK(!kh_bech32_decode(hrp, sizeof hrp, back, &blen, sizeof back, s));
        }
    }
}

static void test_bech32_rejects(void)
{
    char hrp[16];
    uint8_t data[64];
    size_t len;
    /* mixed case */
    KH_CHECK(!kh_bech32_decode(hrp, sizeof hrp, data, &len, sizeof data,
                               "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6W6"));
    /* upper case is fine */
    KH_CHECK(kh_bech32_decode(hrp, sizeof hrp, data, &len, sizeof data,
                              "NPUB180CVV07TJDRRGPA0J7J7TMNYL2YR6YR7L8J4S3EVF6U64TH6GKWSYJH6W6"));
    KH_CHECK(strcmp(hrp, "npub") == 0);
    /* no separator, bad character, output too small */
    KH_CHECK(!kh_bech32_decode(hrp, sizeof hrp, data, &len, sizeof data, "npubqqqqqqqqqq"));
    KH_CHECK(!kh_bech32_decode(hrp, sizeof hrp, data, &len, sizeof data,
                               "npub1b0cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"));
    KH_CHECK(!kh_bech32_decode(hrp, sizeof hrp, data, &len, 16,
                               "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"));
}

static void test_eth_address(void)
{
    uint8_t scalar[32];
    struct kh_privkey key;
    char addr[KH_ETH_ADDRESS_LEN], err[128];

    memset(scalar, 0x46, sizeof scalar);
    KH_CHECK(kh_privkey_from_secp256k1(&key, scalar, err, sizeof err));
    KH_CHECK(kh_pubkey_eth_address(addr, &key.pub));
    if (strcmp(addr, "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F") != 0)
        kh_test_fail(__FILE__, __LINE__, "address %s", addr);
    kh_privkey_clear(&key);

    /* Out of range scalars. */
    memset(scalar, 0, sizeof scalar);
    KH_CHECK(!kh_privkey_from_secp256k1(&key, scalar, err, sizeof err));
    memset(scalar, 0xff, sizeof scalar);
    KH_CHECK(!kh_privkey_from_secp256k1(&key, scalar, err, sizeof err));
}

static void test_hex_base64(void)
{
    uint8_t buf[8];
    size_t len;
    char s[32];
    uint8_t *dec;
    char *enc;
    static const char *const cases[][2] = {
        { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
        { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
    };

    KH_CHECK(kh_hex_decode(buf, &len, sizeof buf, "00fFaB", 6) && len == 3);
    KH_CHECK(buf[0] == 0 && buf[1] == 0xff && buf[2] == 0xab);
    KH_CHECK(!kh_hex_decode(buf, &len, sizeof buf, "0g", 2));
    KH_CHECK(!kh_hex_decode(buf, &len, sizeof buf, "abc", 3));
    KH_CHECK(!kh_hex_decode(buf, &len, 1, "abcd", 4));
    buf[0] = 0x00;
    buf[1] = 0xff;
    KH_CHECK(!kh_hex_encode(s, 4, buf, 2));
    KH_CHECK(kh_hex_encode(s, 5, buf, 2) && strcmp(s, "00ff") == 0);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enc = kh_base64_encode((const uint8_t *)cases[i][0], strlen(cases[i][0]));
        KH_CHECK(enc && strcmp(enc, cases[i][1]) == 0);
        free(enc);
        dec = kh_base64_decode(cases[i][1], strlen(cases[i][1]), &len);
        KH_CHECK(dec && len == strlen(cases[i][0]) && memcmp(dec, cases[i][0], len) == 0);
        free(dec);
    }
    dec = kh_base64_decode("Zg", 2, &len);                /* padding optional */
    KH_CHECK(dec && len == 1 && dec[0] == 'f');
    free(dec);
    KH_CHECK(kh_base64_decode("Z", 1, &len) == NULL);
    KH_CHECK(kh_base64_decode("Zh==", 4, &len) == NULL); /* non-canonical */
    KH_CHECK(kh_base64_decode("Zm9v!", 5, &len) == NULL);
}

static void test_ec_params(void)
{
    static const uint8_t printable[] = {
        0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'
    };
    enum kh_keykind kinds[] = { KH_KEY_SECP256K1, KH_KEY_P256, KH_KEY_P384, KH_KEY_ED25519 };
    for (size_t i = 0; i < 4; i++) {
        const uint8_t *der;
        size_t len;
        KH_CHECK(kh_keykind_ec_params(kinds[i], &der, &len));
        KH_CHECK(kh_keykind_from_ec_params(der, len) == kinds[i]);
    }
    KH_CHECK(kh_keykind_from_ec_params(printable, sizeof printable) == KH_KEY_ED25519);
    KH_CHECK(!kh_keykind_ec_params(KH_KEY_RSA, &(const uint8_t *){ NULL }, &(size_t){ 0 }));
}

/* Generates a key with OpenSSL, writes it as PEM, and checks the import
 * parser and the public encodings against OpenSSL's own. */
static void check_pem_roundtrip(const char *alg, const char *param, enum kh_keykind kind)
{
    EVP_PKEY *pkey;
    BIO *bio = BIO_new(BIO_s_mem()), *pbio = BIO_new(BIO_s_mem());
    char *pem, *ppem, err[128], *mine;
    long len, plen;
    struct kh_privkey key;

    if (strcmp(alg, "RSA") == 0)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    else if (param)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, alg, param);
    else
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, alg);
    KH_CHECK(pkey != NULL);
    if (!pkey)
        return;
    KH_CHECK(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1);
    KH_CHECK(PEM_write_bio_PUBKEY(pbio, pkey) == 1);
    len = BIO_get_mem_data(bio, &pem);
    plen = BIO_get_mem_data(pbio, &ppem);

    KH_CHECK(kh_privkey_from_pem(&key, pem, (size_t)len, err, sizeof err));
    KH_CHECK(key.kind == kind && key.pub.kind == kind);
    if (kind == KH_KEY_RSA) {
        KH_CHECK(kh_pubkey_rsa_bits(&key.pub) == 2048);
        for (int i = 0; i < KH_RSA_NPARTS; i++)
            KH_CHECK(key.rsa[i] && key.rsa_len[i] > 0);
    } else {
        KH_CHECK(key.value_len == kh_keykind_field_len(kind));
    }
    mine = kh_pubkey_to_pem(&key.pub);
    KH_CHECK(mine && (long)strlen(mine) == plen && memcmp(mine, ppem, (size_t)plen) == 0);
    free(mine);

    if (kind != KH_KEY_RSA) {
        /* CKA_EC_POINT as a DER OCTET STRING parses to the same point. */
        struct kh_pubkey pub = { 0 };
        uint8_t der[200];
        size_t dlen = 0;
        der[dlen++] = 0x04;
        der[dlen++] = (uint8_t)key.pub.point_len;
        memcpy(der + dlen, key.pub.point, key.pub.point_len);
        dlen += key.pub.point_len;
        pub.kind = kind;
        KH_CHECK(kh_pubkey_set_ec_point(&pub, der, dlen));
        KH_CHECK(pub.point_len == key.pub.point_len &&
                 memcmp(pub.point, key.pub.point, pub.point_len) == 0);
        KH_CHECK(kh_pubkey_set_ec_point(&pub, key.pub.point, key.pub.point_len));
        KH_CHECK(!kh_pubkey_set_ec_point(&pub, der, dlen - 1));
        kh_pubkey_clear(&pub);
    }
    mine = kh_pubkey_to_ssh(&key.pub, "c");
    KH_CHECK((mine != NULL) == (kind != KH_KEY_SECP256K1));
    free(mine);

    kh_privkey_clear(&key);
    BIO_free(bio);
    BIO_free(pbio);
    EVP_PKEY_free(pkey);
}

static void test_pem_import(void)
{
    char err[128];
    struct kh_privkey key;

    check_pem_roundtrip("EC", "P-256", KH_KEY_P256);
    check_pem_roundtrip("EC", "P-384", KH_KEY_P384);
    check_pem_roundtrip("EC", "secp256k1", KH_KEY_SECP256K1);
    check_pem_roundtrip("ED25519", NULL, KH_KEY_ED25519);
    check_pem_roundtrip("RSA", NULL, KH_KEY_RSA);
    KH_CHECK(!kh_privkey_from_pem(&key, "garbage", 7, err, sizeof err));
    KH_CHECK(key.value == NULL);
}

static void test_ssh_ed25519_vector(void)
{
    /* RFC 8032 test 1 public key; the line as ssh-keygen prints it. */
    struct kh_pubkey pub = { 0 };
    size_t len;
    uint8_t *pk = kh_test_unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", &len);
    char *line;

    pub.kind = KH_KEY_ED25519;
    KH_CHECK(kh_pubkey_set_ec_point(&pub, pk, len));
    line = kh_pubkey_to_ssh(&pub, NULL);
    KH_CHECK(line && strcmp(line, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea") == 0);
    free(line);
    kh_pubkey_clear(&pub);
    free(pk);
}

static void test_uri(void)
{
    struct kh_p11_token tok;
    struct kh_p11_uri u;
    char err[128], *uri;
    const uint8_t id[] = { 0x01, 0xab, 0x20 };
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG n;
    CK_OBJECT_CLASS cls;

    memset(&tok, 0, sizeof tok);
    strcpy(tok.label, "my token;a/b");
    strcpy(tok.manufacturer, "keyhold");
    strcpy(tok.serial, "0000000000000001");
    strcpy(tok.model, "vault");
    uri = kh_p11_uri_build(&tok, "key %1 é", id, sizeof id, CKO_PRIVATE_KEY);
    KH_CHECK(uri != NULL);
    if (!uri)
        return;
    if (strcmp(uri, "pkcs11:token=my%20token%3Ba%2Fb;manufacturer=keyhold;serial=0000000000000001;"
                    "model=vault;object=key%20%251%20%C3%A9;id=%01%AB%20;type=private") != 0)
        kh_test_fail(__FILE__, __LINE__, "uri %s", uri);

    KH_CHECK(kh_p11_uri_parse(&u, uri, err, sizeof err));
    KH_CHECK(u.token && strcmp(u.token, "my token;a/b") == 0);
    KH_CHECK(u.object && strcmp(u.object, "key %1 é") == 0);
    KH_CHECK(u.has_id && u.id_len == 3 && memcmp(u.id, id, 3) == 0);
    KH_CHECK(u.has_class && u.cls == CKO_PRIVATE_KEY);
    KH_CHECK(kh_p11_uri_match_token(&u, &tok));
    kh_p11_uri_template(&u, tmpl, &n, &cls);
    KH_CHECK(n == 3);
    tok.serial[0] = '9';
    KH_CHECK(!kh_p11_uri_match_token(&u, &tok));
    kh_p11_uri_clear(&u);
    free(uri);

    KH_CHECK(kh_p11_uri_parse(&u, "pkcs11:object=a?pin-value=12%334&module-path=/x.so", err, sizeof err));
    KH_CHECK(u.pin_value && strcmp(u.pin_value, "1234") == 0);
    KH_CHECK(u.module_path && strcmp(u.module_path, "/x.so") == 0);
    kh_p11_uri_clear(&u);
    KH_CHECK(!kh_p11_uri_parse(&u, "pkcs11:bogus=1", err, sizeof err));
    KH_CHECK(!kh_p11_uri_parse(&u, "pkcs11:object=a;object=b", err, sizeof err));
    KH_CHECK(!kh_p11_uri_parse(&u, "pkcs11:id=%zz", err, sizeof err));
    KH_CHECK(!kh_p11_uri_parse(&u, "pkcs11:id=%0", err, sizeof err));
    KH_CHECK(!kh_p11_uri_parse(&u, "pkcs11:type=secret", err, sizeof err));
    KH_CHECK(!kh_p11_uri_parse(&u, "http:object=a", err, sizeof err));
    KH_CHECK(kh_p11_uri_parse(&u, "pkcs11:", err, sizeof err));
    kh_p11_uri_clear(&u);
}

/* Writes text into a fresh file; returns its path (static buffer). */
static const char *write_file(const char *name, const char *text)
{
    static char path[4400];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", kh_test_tmpdir(), name);
    f = fopen(path, "w");
    KH_CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

/* pin_from <uri>: the PIN kh_pin_from_uri gets (malloc'd), or NULL with
 * *r set to its return value. */
static char *pin_from(const char *uri, int *r, char *err, size_t errlen)
{
    struct kh_p11_uri u;
    char *pin = NULL;

    *r = -2;
    if (!kh_p11_uri_parse(&u, uri, err, errlen))
        return NULL;
    *r = kh_pin_from_uri(&pin, &u, err, errlen);
    kh_p11_uri_clear(&u);
    return pin;
}

static void test_pin_from_uri(void)
{
    char uri[4600], err[256], *pin;
    const char *path = write_file("pin", "4321\nsecond line\n");
    int r;

    pin = pin_from("pkcs11:object=a?pin-value=12%334", &r, err, sizeof err);
    KH_CHECK(r == 0 && pin && strcmp(pin, "1234") == 0);
    kh_pin_free(pin);
    pin = pin_from("pkcs11:object=a", &r, err, sizeof err);
    KH_CHECK(r == 1 && pin == NULL);

    static const char *const forms[] = { "file:", "file://", "file://localhost", "" };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        snprintf(uri, sizeof uri, "pkcs11:object=a?pin-source=%s%s", forms[i], path);
        pin = pin_from(uri, &r, err, sizeof err);
        if (r != 0 || !pin || strcmp(pin, "4321") != 0)
            kh_test_fail(__FILE__, __LINE__, "pin-source form %zu: r=%d (%s)", i, r, r ? err : "");
        kh_pin_free(pin);
    }

    static const struct { const char *uri; const char *why; } bad[] = {
        { "pkcs11:object=a?pin-value=1&pin-source=/x", "both" },
        { "pkcs11:object=a?pin-value=", "empty PIN" },
        { "pkcs11:object=a?pin-source=%7C/bin/echo", "unsupported pin-source" },
        { "pkcs11:object=a?pin-source=builtin-dialog", "unsupported pin-source" },
        { "pkcs11:object=a?pin-source=file://host/etc/pin", "remote host" },
        { "pkcs11:object=a?pin-source=file://host", "remote host or no path" },
        { "pkcs11:object=a?pin-source=-", "names no file" },
        { "pkcs11:object=a?pin-source=file:", "names no file" },
        { "pkcs11:object=a?pin-source=/nonexistent/keyhold/pin", "cannot open PIN file" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pin = pin_from(bad[i].uri, &r, err, sizeof err);
        if (r != -1 || pin)
            kh_test_fail(__FILE__, __LINE__, "bad %zu: r=%d", i, r);
        else if (!strstr(err, bad[i].why))
            kh_test_fail(__FILE__, __LINE__, "bad %zu: '%s' lacks '%s'", i, err, bad[i].why);
        kh_pin_free(pin);
    }
    path = write_file("empty", "\n");
    snprintf(uri, sizeof uri, "pkcs11:object=a?pin-source=%s", path);
    pin = pin_from(uri, &r, err, sizeof err);
    KH_CHECK(r == -1 && !pin && strstr(err, "empty PIN"));
}

/* A fake function list for kh_p11_sign: C_Sign reports fake_len on the
 * length query, then asks for fake_grow more bytes fake_too_small times. */
static CK_ULONG fake_len, fake_grow;
static int fake_too_small, fake_sign_calls;
static bool fake_active;

static CK_RV fake_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    if (fake_active)
        return CKR_OPERATION_ACTIVE;
    fake_active = true;
    return m && m->mechanism == CKM_EDDSA && k == 7 ? CKR_OK : CKR_MECHANISM_INVALID;
}

static CK_RV fake_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR sig, CK_ULONG_PTR sl)
{
    fake_sign_calls++;
    if (!fake_active)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (!sig) {
        *sl = fake_len;
        return CKR_OK;
    }
    if (fake_too_small > 0) {
        fake_too_small--;
        fake_len += fake_grow;
        *sl = fake_len;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (*sl < fake_len)
        return CKR_BUFFER_TOO_SMALL;
    for (CK_ULONG i = 0; i < fake_len; i++)
        sig[i] = (CK_BYTE)(d[i % dl] ^ i);
    *sl = fake_len;
    fake_active = false;
    return CKR_OK;
}

static void test_p11_sign(void)
{
    CK_FUNCTION_LIST fl;
    struct kh_p11 p;
    CK_MECHANISM m = { CKM_EDDSA, NULL, 0 };
    uint8_t *sig;
    size_t len;

    memset(&fl, 0, sizeof fl);
    memset(&p, 0, sizeof p);
    fl.C_SignInit = fake_SignInit;
    fl.C_Sign = fake_Sign;
    p.f = &fl;

    fake_len = 64, fake_grow = 0, fake_too_small = 0, fake_sign_calls = 0, fake_active = false;
    KH_CHECK_RV(kh_p11_sign(&p, 1, &m, 7, (const uint8_t *)"abc", 3, &sig, &len), CKR_OK);
    KH_CHECK(sig && len == 64 && sig[0] == 'a' && sig[4] == ('b' ^ 4));
    KH_CHECK(fake_sign_calls == 2 && !fake_active);
    free(sig);

    /* The module moves its length once: retried with the new size. */
    fake_len = 64, fake_grow = 8, fake_too_small = 1, fake_sign_calls = 0;
    KH_CHECK_RV(kh_p11_sign(&p, 1, &m, 7, (const uint8_t *)"abc", 3, &sig, &len), CKR_OK);
    KH_CHECK(sig && len == 72 && fake_sign_calls == 3);
    free(sig);

    /* Twice: given up with CKR_BUFFER_TOO_SMALL, nothing returned. */
    fake_len = 64, fake_grow = 8, fake_too_small = 2, fake_sign_calls = 0, fake_active = false;
    KH_CHECK_RV(kh_p11_sign(&p, 1, &m, 7, (const uint8_t *)"abc", 3, &sig, &len), CKR_BUFFER_TOO_SMALL);
    KH_CHECK(sig == NULL && len == 0);

    /* C_SignInit's error comes back; C_Sign is not called. */
    fake_active = false, fake_sign_calls = 0;
    m.mechanism = CKM_ECDSA;
    KH_CHECK_RV(kh_p11_sign(&p, 1, &m, 7, (const uint8_t *)"abc", 3, &sig, &len), CKR_MECHANISM_INVALID);
    KH_CHECK(sig == NULL && fake_sign_calls == 0);
}

static void test_rv_names(void)
{
    KH_CHECK(strcmp(kh_rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT") == 0);
    KH_CHECK(strcmp(kh_rv_name(CKR_KH_STORE_ERROR), "CKR_KH_STORE_ERROR") == 0);
    KH_CHECK(strcmp(kh_rv_name(0x12345678UL), "CKR_0x12345678") == 0);
}

int main(int argc, char **argv)
{
    kh_test_register("/tools/keccak/vectors", test_keccak_vectors);
    kh_test_register("/tools/bech32/nip19", test_bech32_nip19);
    kh_test_register("/tools/bech32/roundtrip", test_bech32_roundtrip);
    kh_test_register("/tools/bech32/rejects", test_bech32_rejects);
    kh_test_register("/tools/encode/eth-address", test_eth_address);
    kh_test_register("/tools/encode/hex-base64", test_hex_base64);
    kh_test_register("/tools/encode/ec-params", test_ec_params);
    kh_test_register("/tools/encode/pem-import", test_pem_import);
    kh_test_register("/tools/encode/ssh-ed25519", test_ssh_ed25519_vector);
    kh_test_register("/tools/p11/uri", test_uri);
    kh_test_register("/tools/p11/rv-names", test_rv_names);
    kh_test_register("/tools/p11/pin-from-uri", test_pin_from_uri);
    kh_test_register("/tools/p11/sign", test_p11_sign);
    return kh_test_run(argc, argv);
}
