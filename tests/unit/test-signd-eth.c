/*
 * test-signd-eth.c - keyhold-signd's Ethereum encodings against published
 * vectors: the RLP examples of the Ethereum wiki / yellow paper and
 * ethereum/tests rlptest.json, the EIP-155 example transaction, go-ethereum's
 * EIP-2930 transaction test, and ethereumjs's EIP-1559 vectors; plus the
 * JSON field dict's refusals.
 *
 * Signatures made here use libsecp256k1 directly with its default RFC 6979
 * nonce, as the vault does, so they can be compared byte for byte with the
 * published signed transactions.
 */
#include "testutil.h"

#include "encode.h"
#include "keccak.h"
#include "signd-eth.h"

#include <json-c/json.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include <stdlib.h>
#include <string.h>

static void check_hex(const uint8_t *got, size_t len, const char *want)
{
    char *hex = malloc(2 * len + 1);

    KH_CHECK(hex != NULL);
    KH_CHECK(kh_hex_encode(hex, 2 * len + 1, got, len));
    if (strcmp(hex, want) != 0)
        kh_test_fail(__FILE__, __LINE__, "got %s, want %s", hex, want);
    free(hex);
}

/* Checks a finished writer's output and frees it. */
static void check_rlp(struct kh_rlp *r, const char *want)
{
    KH_CHECK(!r->failed);
    check_hex(r->p, r->len, want);
    kh_rlp_free(r);
}

static void rlp_str(struct kh_rlp *r, const char *s)
{
    kh_rlp_bytes(r, (const uint8_t *)s, strlen(s));
}

static void rlp_dec(struct kh_rlp *r, const char *dec)
{
    kh_u256 v;
    char err[128];

    KH_CHECK(kh_u256_parse(&v, dec, err, sizeof err));
    kh_rlp_uint(r, &v);
}

/* The examples of the RLP specification (ethereum.org, "Recursive-length
 * prefix") and ethereum/tests RLPTests/rlptest.json. */
static void test_rlp_spec(void)
{
    static const char lorem55[] = "Lorem ipsum dolor sit amet, consectetur adipisicing eli";
    static const char lorem56[] = "Lorem ipsum dolor sit amet, consectetur adipisicing elit";
    struct kh_rlp r;
    size_t a, b, c;
    uint8_t one;

    kh_rlp_init(&r, 4096); rlp_str(&r, "dog"); check_rlp(&r, "83646f67");
    kh_rlp_init(&r, 4096);
    a = kh_rlp_list_begin(&r); rlp_str(&r, "cat"); rlp_str(&r, "dog"); kh_rlp_list_end(&r, a);
    check_rlp(&r, "c88363617483646f67");
    kh_rlp_init(&r, 4096); rlp_str(&r, ""); check_rlp(&r, "80");
    kh_rlp_init(&r, 4096); a = kh_rlp_list_begin(&r); kh_rlp_list_end(&r, a); check_rlp(&r, "c0");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 0); check_rlp(&r, "80");
    one = 0x00; kh_rlp_init(&r, 4096); kh_rlp_bytes(&r, &one, 1); check_rlp(&r, "00");
    one = 0x0f; kh_rlp_init(&r, 4096); kh_rlp_bytes(&r, &one, 1); check_rlp(&r, "0f");
    one = 0x80; kh_rlp_init(&r, 4096); kh_rlp_bytes(&r, &one, 1); check_rlp(&r, "8180");
    kh_rlp_init(&r, 4096); kh_rlp_bytes(&r, (const uint8_t *)"\x04\x00", 2); check_rlp(&r, "820400");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 1024); check_rlp(&r, "820400");

    /* The set-theoretic representation of three: [ [], [[]], [ [], [[]] ] ]. */
    kh_rlp_init(&r, 4096);
    a = kh_rlp_list_begin(&r);
    b = kh_rlp_list_begin(&r); kh_rlp_list_end(&r, b);
    b = kh_rlp_list_begin(&r); c = kh_rlp_list_begin(&r); kh_rlp_list_end(&r, c); kh_rlp_list_end(&r, b);
    b = kh_rlp_list_begin(&r);
    c = kh_rlp_list_begin(&r); kh_rlp_list_end(&r, c);
    c = kh_rlp_list_begin(&r);
    size_t d = kh_rlp_list_begin(&r); kh_rlp_list_end(&r, d);
    kh_rlp_list_end(&r, c);
    kh_rlp_list_end(&r, b);
    kh_rlp_list_end(&r, a);
    check_rlp(&r, "c7c0c1c0c3c0c1c0");

    /* Strings of 55 and 56 bytes: the short/long boundary. */
    kh_rlp_init(&r, 4096); rlp_str(&r, lorem55);
    KH_CHECK(r.len == 56 && r.p[0] == 0xb7 && memcmp(r.p + 1, lorem55, 55) == 0);
    kh_rlp_free(&r);
    kh_rlp_init(&r, 4096); rlp_str(&r, lorem56);
    KH_CHECK(r.len == 58 && r.p[0] == 0xb8 && r.p[1] == 0x38 && memcmp(r.p + 2, lorem56, 56) == 0);
    kh_rlp_free(&r);

    /* rlptest.json: integers. */
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 1); check_rlp(&r, "01");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 16); check_rlp(&r, "10");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 79); check_rlp(&r, "4f");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 127); check_rlp(&r, "7f");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 128); check_rlp(&r, "8180");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 1000); check_rlp(&r, "8203e8");
    kh_rlp_init(&r, 4096); kh_rlp_u64(&r, 100000); check_rlp(&r, "830186a0");
    kh_rlp_init(&r, 4096); rlp_dec(&r, "83729609699884896815286331701780722");
    check_rlp(&r, "8f102030405060708090a0b0c0d0e0f2");
    kh_rlp_init(&r, 4096);
    rlp_dec(&r, "105315505618206987246253880190783558935785933862974822347068935681");
    check_rlp(&r, "9c0100020003000400050006000700080009000a000b000c000d000e01");

    /* rlptest.json: shortListMax1 (55-byte payload) and longList1 (64). */
    static const char *const w[3] = { "asdf", "qwer", "zxcv" };
    kh_rlp_init(&r, 4096);
    a = kh_rlp_list_begin(&r);
    for (int i = 0; i < 11; i++)
        rlp_str(&r, w[i % 3]);
    kh_rlp_list_end(&r, a);
    check_rlp(&r, "f784617364668471776572847a78637684617364668471776572847a78637684617364668471"
                  "776572847a78637684617364668471776572");
    kh_rlp_init(&r, 4096);
    a = kh_rlp_list_begin(&r);
    for (int i = 0; i < 4; i++) {
        b = kh_rlp_list_begin(&r);
        for (int j = 0; j < 3; j++)
            rlp_str(&r, w[j]);
        kh_rlp_list_end(&r, b);
    }
    kh_rlp_list_end(&r, a);
    check_rlp(&r, "f840cf84617364668471776572847a786376cf84617364668471776572847a786376cf846173"
                  "64668471776572847a786376cf84617364668471776572847a786376");
}

/* The writer refuses to grow past its maximum and stays failed. */
static void test_rlp_bounds(void)
{
    struct kh_rlp r;
    uint8_t buf[300];
    size_t a;

    memset(buf, 0x61, sizeof buf);
    kh_rlp_init(&r, 10);
    kh_rlp_bytes(&r, buf, 9);     /* header + 9 = 10: fits */
    KH_CHECK(!r.failed && r.len == 10);
    kh_rlp_bytes(&r, buf, 1);
    KH_CHECK(r.failed);
    kh_rlp_u64(&r, 1);
    KH_CHECK(r.failed && r.len == 10);
    kh_rlp_free(&r);

    /* A list header that no longer fits. */
    kh_rlp_init(&r, 258);
    a = kh_rlp_list_begin(&r);
    kh_rlp_bytes(&r, buf, 255);   /* b8 ff + 255 = 257 */
    KH_CHECK(!r.failed && r.len == 257);
    kh_rlp_list_end(&r, a);       /* f9 0101: 3 more bytes, over 258 */
    KH_CHECK(r.failed);
    kh_rlp_free(&r);

    /* Two-byte length: 256-byte string. */
    kh_rlp_init(&r, 4096);
    kh_rlp_bytes(&r, buf, 256);
    KH_CHECK(!r.failed && r.len == 259 && r.p[0] == 0xb9 && r.p[1] == 0x01 && r.p[2] == 0x00);
    kh_rlp_free(&r);

    /* A mark past the end is refused. */
    kh_rlp_init(&r, 4096);
    kh_rlp_list_end(&r, 5);
    KH_CHECK(r.failed);
    kh_rlp_free(&r);
}

static void test_u256(void)
{
    kh_u256 v, w;
    char err[128], dec[80];
    uint64_t u;

    KH_CHECK(kh_u256_parse(&v, "0x", err, sizeof err) && kh_u256_is_zero(&v));
    KH_CHECK(kh_u256_parse(&v, "0x0000ff", err, sizeof err));
    KH_CHECK(kh_u256_to_u64(&u, &v) && u == 255);
    KH_CHECK(kh_u256_parse(&v, "1000000000000000000", err, sizeof err));
    KH_CHECK(kh_u256_to_u64(&u, &v) && u == 1000000000000000000ULL);
    KH_CHECK(kh_u256_parse(&w, "0xDE0B6B3A7640000", err, sizeof err) && kh_u256_cmp(&v, &w) == 0);
    /* 2^256 - 1 in hex and decimal; 2^256 is refused both ways. */
    KH_CHECK(kh_u256_parse(&v, "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                           err, sizeof err));
    KH_CHECK(kh_u256_parse(&w,
        "115792089237316195423570985008687907853269984665640564039457584007913129639935",
        err, sizeof err));
    KH_CHECK(kh_u256_cmp(&v, &w) == 0);
    kh_u256_to_dec(dec, sizeof dec, &v);
    KH_CHECK(strcmp(dec, "115792089237316195423570985008687907853269984665640564039457584007913129639935") == 0);
    KH_CHECK(!kh_u256_parse(&v, "0x10000000000000000000000000000000000000000000000000000000000000000",
                            err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v,
        "115792089237316195423570985008687907853269984665640564039457584007913129639936",
        err, sizeof err));
    KH_CHECK(kh_u256_parse(&v, "0x0000000000000000000000000000000000000000000000000000000000000000001",
                           err, sizeof err));   /* leading zeros do not count */
    KH_CHECK(!kh_u256_parse(&v, "", err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v, "-1", err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v, "+1", err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v, " 1", err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v, "0x1g", err, sizeof err));
    KH_CHECK(!kh_u256_parse(&v, "12a", err, sizeof err));
    kh_u256_from_u64(&v, 0);
    kh_u256_to_dec(dec, sizeof dec, &v);
    KH_CHECK(strcmp(dec, "0") == 0);

    /* mul_add overflow. */
    KH_CHECK(kh_u256_parse(&v, "0x8000000000000000000000000000000000000000000000000000000000000000",
                           err, sizeof err));
    KH_CHECK(!kh_u256_mul_add(&w, &v, 2, 0));
    KH_CHECK(kh_u256_parse(&v, "0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffee",
                           err, sizeof err));
    KH_CHECK(kh_u256_mul_add(&w, &v, 2, 35));  /* 2^256 - 2 - 36 + 35 = 2^256 - 3 */
    KH_CHECK(!kh_u256_mul_add(&w, &v, 2, 38));

    /* JSON values. */
    struct json_object *j;
    static const struct { const char *json; bool ok; } cases[] = {
        { "0", true }, { "21000", true }, { "18446744073709551614", true },
        { "18446744073709551615", false },   /* could be json-c's clamp */
        { "123456789012345678901234567890", false }, { "-1", false }, { "1.5", false },
        { "1e18", false }, { "true", false }, { "null", false }, { "[1]", false },
        { "\"0x5208\"", true }, { "\"21000\"", true }, { "\"-1\"", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        j = json_tokener_parse(cases[i].json);
        KH_CHECK(j != NULL || strcmp(cases[i].json, "null") == 0);
        if (kh_u256_from_json(&v, j, err, sizeof err) != cases[i].ok)
            kh_test_fail(__FILE__, __LINE__, "JSON %s: want %s", cases[i].json,
                         cases[i].ok ? "accepted" : "refused");
        json_object_put(j);
    }
}

static void test_address(void)
{
    uint8_t a[20];
    char out[43], err[128];

    /* EIP-55's own examples. */
    static const char *const eip55[] = {
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    };
    for (size_t i = 0; i < 4; i++) {
        KH_CHECK(kh_eth_parse_address(a, eip55[i], err, sizeof err));
        kh_eth_checksum_address(out, a);
        KH_CHECK(strcmp(out, eip55[i]) == 0);
    }
    KH_CHECK(kh_eth_parse_address(a, "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", err, sizeof err));
    KH_CHECK(kh_eth_parse_address(a, "0X5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED", err, sizeof err));
    KH_CHECK(!kh_eth_parse_address(a, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", err, sizeof err));
    KH_CHECK(!kh_eth_parse_address(a, "0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea", err, sizeof err));
    KH_CHECK(!kh_eth_parse_address(a, "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", err, sizeof err));
    KH_CHECK(!kh_eth_parse_address(a, "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaedaa", err, sizeof err));
    KH_CHECK(!kh_eth_parse_address(a, "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaeg", err, sizeof err));
}

/* EIP-191 personal_sign over a 32-byte hash: keccak of the prefix and the
 * hash (the integration test checks it against ethers' hashMessage). */
static void test_defunct(void)
{
    uint8_t msg[32], h[32], want[32], buf[60];

    for (int i = 0; i < 32; i++)
        msg[i] = (uint8_t)(0xa0 + i);
    kh_eth_hash_defunct32(h, msg);
    memcpy(buf, "\x19" "Ethereum Signed Message:\n32", 28);
    memcpy(buf + 28, msg, 32);
    kh_keccak256(want, buf, 60);
    KH_CHECK_MEM(h, want, 32);
}

static struct json_object *jparse(const char *s)
{
    struct json_object *j = json_tokener_parse(s);

    if (!j)
        kh_test_fail(__FILE__, __LINE__, "test JSON does not parse: %s", s);
    return j;
}

/* Signs hash with a 32-byte key by libsecp256k1 (RFC 6979 nonce): r||s||recid. */
static void sign_recoverable(uint8_t sig[65], const uint8_t hash[32], const char *key_hex)
{
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    secp256k1_ecdsa_recoverable_signature rs;
    size_t klen;
    uint8_t *key = kh_test_unhex(key_hex, &klen);
    int recid;

    KH_CHECK(klen == 32);
    KH_CHECK(secp256k1_ecdsa_sign_recoverable(ctx, &rs, hash, key, NULL, NULL) == 1);
    KH_CHECK(secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx, sig, &recid, &rs) == 1);
    sig[64] = (uint8_t)recid;
    free(key);
    secp256k1_context_destroy(ctx);
}

/* Parses tx_json, checks the signing hash (when want_hash is not NULL),
 * signs with key_hex and checks the signed encoding. */
static void check_tx(const char *tx_json, const char *want_hash, const char *key_hex,
                     const char *want_raw)
{
    struct json_object *j = jparse(tx_json);
    struct kh_eth_tx tx;
    uint8_t hash[32], sig[65], *raw;
    size_t len;
    char err[256];

    if (!kh_eth_tx_from_json(&tx, j, err, sizeof err))
        kh_test_fail(__FILE__, __LINE__, "tx refused: %s", err);
    KH_CHECK(kh_eth_tx_signing_hash(hash, &tx));
    if (want_hash)
        check_hex(hash, 32, want_hash);
    sign_recoverable(sig, hash, key_hex);
    raw = kh_eth_tx_encode_signed(&tx, sig, &len);
    KH_CHECK(raw != NULL);
    check_hex(raw, len, want_raw);
    free(raw);
    kh_eth_tx_clear(&tx);
    json_object_put(j);
}

/* EIP-155's example: signing data, hash and signed transaction. */
static void test_tx_eip155(void)
{
    static const char key[] = "4646464646464646464646464646464646464646464646464646464646464646";
    static const char want_raw[] =
        "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764"
        "00008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cb"
        "e9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";
    static const char want_hash[] = "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53";
    uint8_t want_payload[64];
    struct kh_rlp r;

    /* The EIP's "signing data", written out with the RLP writer. */
    kh_rlp_init(&r, 4096);
    size_t l = kh_rlp_list_begin(&r);
    kh_rlp_u64(&r, 9);
    kh_rlp_u64(&r, 20000000000ULL);
    kh_rlp_u64(&r, 21000);
    memset(want_payload, 0x35, 20);
    kh_rlp_bytes(&r, want_payload, 20);
    kh_rlp_u64(&r, 1000000000000000000ULL);
    kh_rlp_bytes(&r, NULL, 0);
    kh_rlp_u64(&r, 1);
    kh_rlp_u64(&r, 0);
    kh_rlp_u64(&r, 0);
    kh_rlp_list_end(&r, l);
    KH_CHECK(!r.failed);
    check_hex(r.p, r.len, "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6"
                          "b3a764000080018080");
    uint8_t h[32];
    kh_keccak256(h, r.p, r.len);
    check_hex(h, 32, want_hash);
    kh_rlp_free(&r);

    /* Integers, hex strings and decimal strings give the same transaction. */
    check_tx("{\"nonce\": 9, \"gasPrice\": 20000000000, \"gas\": 21000,"
             " \"to\": \"0x3535353535353535353535353535353535353535\","
             " \"value\": \"1000000000000000000\", \"data\": \"0x\", \"chainId\": 1}",
             want_hash, key, want_raw);
    check_tx("{\"nonce\": \"0x9\", \"gasPrice\": \"0x4a817c800\", \"gasLimit\": \"0x5208\","
             " \"to\": \"0x3535353535353535353535353535353535353535\","
             " \"value\": \"0xde0b6b3a7640000\", \"chainId\": \"0x1\", \"type\": 0}",
             want_hash, key, want_raw);
}

/* go-ethereum core/types transaction_test.go: emptyEip2718Tx signed with
 * the signature given there, and the signing hash of an empty
 * AccessListTx (chain 1, nonce 1: a contract creation). */
static void test_tx_eip2930(void)
{
    struct json_object *j;
    struct kh_eth_tx tx;
    uint8_t hash[32], sig[65], *raw, *s;
    size_t len;
    char err[256];

    j = jparse("{\"type\": 1, \"chainId\": 1, \"nonce\": 3,"
               " \"to\": \"0xb94f5374fce5edbc8e2a8697c15331677e6ebf0b\", \"value\": 10,"
               " \"gas\": 25000, \"gasPrice\": 1, \"data\": \"0x5544\", \"accessList\": []}");
    KH_CHECK(kh_eth_tx_from_json(&tx, j, err, sizeof err));
    KH_CHECK(tx.type == KH_ETH_TX_ACCESS_LIST);
    KH_CHECK(kh_eth_tx_signing_hash(hash, &tx));
    check_hex(hash, 32, "49b486f0ec0a60dfbbca2d30cb07c9e8ffb2a2ff41f29a1ab6737475f6ff69f3");
    s = kh_test_unhex("c9519f4f2b30335884581971573fadf60c6204f59a911df35ee8a540456b2660"
                      "32f1e8e2c5dd761f9e4f88f41c8310aeaba26a8bfcdacfedfa12ec3862d3752101", &len);
    KH_CHECK(len == 65);
    memcpy(sig, s, 65);
    free(s);
    raw = kh_eth_tx_encode_signed(&tx, sig, &len);
    KH_CHECK(raw != NULL);
    check_hex(raw, len, "01f8630103018261a894b94f5374fce5edbc8e2a8697c15331677e6ebf0b0a825544c001"
                        "a0c9519f4f2b30335884581971573fadf60c6204f59a911df35ee8a540456b2660a032f1"
                        "e8e2c5dd761f9e4f88f41c8310aeaba26a8bfcdacfedfa12ec3862d37521");
    free(raw);
    sig[64] = 2;
    KH_CHECK(kh_eth_tx_encode_signed(&tx, sig, &len) == NULL);
    kh_eth_tx_clear(&tx);
    json_object_put(j);

    j = jparse("{\"type\": \"0x1\", \"chainId\": 1, \"nonce\": 1, \"gas\": 0, \"gasPrice\": 0,"
               " \"to\": null}");
    KH_CHECK(kh_eth_tx_from_json(&tx, j, err, sizeof err));
    KH_CHECK(!tx.has_to);
    KH_CHECK(kh_eth_tx_signing_hash(hash, &tx));
    check_hex(hash, 32, "846ad7672f2a3a40c1f959cd4a8ad21786d620077084d84c8d7c077714caa139");
    kh_eth_tx_clear(&tx);
    json_object_put(j);
}

/* ethereumjs-monorepo packages/tx/test/json/eip1559.json (chain 7822 =
 * 0x1e8e, empty data and access list); the file wraps each transaction in
 * an RLP string, the typed encoding is its content. */
static void test_tx_eip1559(void)
{
    static const char key[] = "8f2a55949038a9610f50fb23b5883af3b4ecb3c3bb792cbcefbd1542c692be63";
    static const struct {
        unsigned nonce, value, gas, tip, fee;
        const char *raw;
    } v[] = {
        { 819, 43203529, 35552, 75853, 121212,
          "02f870821e8e8203338301284d8301d97c828ae094000000000000000000000000000000000000aaaa8402933bc9"
          "80c080a0d067f2167008c59219652f91cbf8788dbca5f771f6e91e2b7657e85b78b472e0a01d305af9fe81fdba43"
          "f0dfcd400ed24dcace0a7e30d4e85701dcaaf484cd079e" },
        { 353, 61901619, 32593, 38850, 136295,
          "02f86f821e8e8201618297c283021467827f5194000000000000000000000000000000000000aaaa8403b08b3380"
          "c001a004205678f13fc1d7b10feea6513dfa76e24418b6e08097d95c6f93a3b64e536da01d45ad61bfece43862de"
          "2cce7d2575a8c1d08c26c87f3cb5f26d7b0be54a91b2" },
        { 119, 65456115, 62341, 24721, 107729,
          "02f86d821e8e778260918301a4d182f38594000000000000000000000000000000000000aaaa8403e6c7f380c001"
          "a0e38e239770801eb995498c821e55ac9c19ae09184bb27b34be105e02fe3b7615a067c64ca6bd6d9107e85fd581"
          "ab2e70a14b637eb36505bb40861ef9d6e800cab6" },
    };
    char json[512];

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        snprintf(json, sizeof json,
                 "{\"chainId\": 7822, \"nonce\": %u, \"value\": %u, \"gasLimit\": %u,"
                 " \"maxPriorityFeePerGas\": %u, \"maxFeePerGas\": %u,"
                 " \"to\": \"0x000000000000000000000000000000000000aaaa\"}",
                 v[i].nonce, v[i].value, v[i].gas, v[i].tip, v[i].fee);
        check_tx(json, NULL, key, v[i].raw);
    }
}

/* An access list goes into the signing payload and the encoding. */
static void test_tx_access_list(void)
{
    struct json_object *j = jparse(
        "{\"chainId\": 5, \"nonce\": 0, \"gas\": 30000, \"maxFeePerGas\": 2,"
        " \"maxPriorityFeePerGas\": 1, \"to\": \"0x0000000000000000000000000000000000000001\","
        " \"accessList\": [{\"address\": \"0x0000000000000000000000000000000000000002\","
        " \"storageKeys\": [\"0x0000000000000000000000000000000000000000000000000000000000000003\"]},"
        " {\"address\": \"0x0000000000000000000000000000000000000004\", \"storageKeys\": []}]}");
    struct kh_eth_tx tx;
    uint8_t hash[32], sig[65] = { 0 }, *raw;
    size_t len;
    char err[256];

    KH_CHECK(kh_eth_tx_from_json(&tx, j, err, sizeof err));
    KH_CHECK(tx.type == KH_ETH_TX_DYNAMIC_FEE && tx.naccess == 2);
    KH_CHECK(tx.access[0].nkeys == 1 && tx.access[0].keys[0][31] == 3);
    KH_CHECK(tx.access[1].nkeys == 0 && tx.access[1].address[19] == 4);
    KH_CHECK(kh_eth_tx_signing_hash(hash, &tx));
    sig[0] = 1;
    sig[32] = 2;
    raw = kh_eth_tx_encode_signed(&tx, sig, &len);
    KH_CHECK(raw != NULL);
    /* 02 || rlp([5, 0, 1, 2, 30000, to, 0, "", [[a2, [k3]], [a4, []]], 0, r, s]),
     * computed by a separate Python RLP encoder written from the yellow paper. */
    check_hex(raw, len,
              "02f8b2058001028275309400000000000000000000000000000000000000018080"
              "f84ff7940000000000000000000000000000000000000002e1a0000000000000"
              "0000000000000000000000000000000000000000000000000003d69400000000"
              "00000000000000000000000000000004c080"
              "a00100000000000000000000000000000000000000000000000000000000000000"
              "a00200000000000000000000000000000000000000000000000000000000000000");
    free(raw);
    kh_eth_tx_clear(&tx);
    json_object_put(j);
}

static void test_tx_refusals(void)
{
    static const char *const bad[] = {
        "[]",
        "{\"nonce\": 0, \"gas\": 1, \"gasPrice\": 1}",                       /* no chainId */
        "{\"chainId\": 0, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1}",
        "{\"chainId\": 1, \"gas\": 1, \"gasPrice\": 1}",                     /* no nonce */
        "{\"chainId\": 1, \"nonce\": 0, \"gasPrice\": 1}",                   /* no gas */
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1}",                        /* no fee */
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasLimit\": 1, \"gasPrice\": 1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"maxFeePerGas\": 1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"maxFeePerGas\": 1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"maxFeePerGas\": 1, \"maxPriorityFeePerGas\": 2}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"type\": 3}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"type\": 0, \"accessList\": []}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"blah\": 1}",
        "{\"chainId\": 1, \"nonce\": \"0xffffffffffffffff\", \"gas\": 1, \"gasPrice\": 1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": \"0x10000000000000000\", \"gasPrice\": 1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"to\": \"0x12\"}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1,"
        " \"to\": \"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\"}",             /* bad checksum */
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"data\": \"0x1\"}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"data\": \"12\"}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"data\": 12}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"data\": \"0x\", \"input\": \"0x\"}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"value\": -1}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"value\": 1.5}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"accessList\": {}}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"accessList\": [{}]}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"accessList\":"
        " [{\"address\": \"0x0000000000000000000000000000000000000002\", \"storageKeys\": [\"0x01\"]}]}",
        "{\"chainId\": 1, \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"accessList\":"
        " [{\"address\": \"0x0000000000000000000000000000000000000002\", \"storageKeys\": [], \"x\": 1}]}",
        /* Legacy v = chainId * 2 + 35 + recid must fit 256 bits. */
        "{\"chainId\": \"0x8000000000000000000000000000000000000000000000000000000000000000\","
        " \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1}",
    };
    struct kh_eth_tx tx;
    char err[256];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct json_object *j = jparse(bad[i]);
        err[0] = '\0';
        if (kh_eth_tx_from_json(&tx, j, err, sizeof err))
            kh_test_fail(__FILE__, __LINE__, "accepted: %s", bad[i]);
        KH_CHECK(err[0] != '\0');
        kh_eth_tx_clear(&tx);
        json_object_put(j);
    }

    /* The same huge chain id is fine in a typed transaction. */
    struct json_object *j = jparse(
        "{\"chainId\": \"0x8000000000000000000000000000000000000000000000000000000000000000\","
        " \"nonce\": 0, \"gas\": 1, \"gasPrice\": 1, \"type\": 1}");
    KH_CHECK(kh_eth_tx_from_json(&tx, j, err, sizeof err));
    kh_eth_tx_clear(&tx);
    json_object_put(j);
}

/* A large data field goes through (bounded by KH_ETH_TX_MAX) and a larger
 * one is refused. */
static void test_tx_big_data(void)
{
    size_t n = 100000;
    size_t cap = 2 * n + 256;
    char *json = malloc(cap + 2 * KH_ETH_TX_MAX);
    struct kh_eth_tx tx;
    uint8_t hash[32], sig[65] = { 0 }, *raw;
    size_t len, off;
    char err[256];
    struct json_object *j;

    KH_CHECK(json != NULL);
    off = (size_t)sprintf(json, "{\"chainId\": 1, \"nonce\": 1, \"gas\": 1, \"gasPrice\": 1, \"data\": \"0x");
    memset(json + off, 'a', 2 * n);
    strcpy(json + off + 2 * n, "\"}");
    j = jparse(json);
    KH_CHECK(kh_eth_tx_from_json(&tx, j, err, sizeof err));
    KH_CHECK(tx.data_len == n && tx.data[n - 1] == 0xaa);
    KH_CHECK(kh_eth_tx_signing_hash(hash, &tx));
    raw = kh_eth_tx_encode_signed(&tx, sig, &len);
    KH_CHECK(raw != NULL && len > n);
    free(raw);
    kh_eth_tx_clear(&tx);
    json_object_put(j);

    n = KH_ETH_TX_MAX + 1;
    memset(json + off, 'b', 2 * n);
    strcpy(json + off + 2 * n, "\"}");
    j = json_tokener_parse(json);
    KH_CHECK(j != NULL);
    KH_CHECK(!kh_eth_tx_from_json(&tx, j, err, sizeof err));
    kh_eth_tx_clear(&tx);
    json_object_put(j);
    free(json);
}

int main(int argc, char **argv)
{
    kh_test_register("/signd/eth/rlp-spec", test_rlp_spec);
    kh_test_register("/signd/eth/rlp-bounds", test_rlp_bounds);
    kh_test_register("/signd/eth/u256", test_u256);
    kh_test_register("/signd/eth/address", test_address);
    kh_test_register("/signd/eth/defunct", test_defunct);
    kh_test_register("/signd/eth/tx-eip155", test_tx_eip155);
    kh_test_register("/signd/eth/tx-eip2930", test_tx_eip2930);
    kh_test_register("/signd/eth/tx-eip1559", test_tx_eip1559);
    kh_test_register("/signd/eth/tx-access-list", test_tx_access_list);
    kh_test_register("/signd/eth/tx-refusals", test_tx_refusals);
    kh_test_register("/signd/eth/tx-big-data", test_tx_big_data);
    return kh_test_run(argc, argv);
}
