/*
 * test-signd-policy.c - keyhold-signd's configuration file, per-key
 * transaction policy and token bucket (with a synthetic clock).
 */
#include "testutil.h"

#include "signd-eth.h"
#include "signd-policy.h"

#include <json-c/json.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FRAME_MAX (1024u * 1024u)

static const char full_config[] =
    "{\n"
    "  \"default_key\": \"hot\",\n"
    "  \"max_connections\": 8,\n"
    "  \"idle_timeout_ms\": 5000,\n"
    "  \"io_timeout_ms\": 2000,\n"
    "  \"max_frame\": 65536,\n"
    "  \"attestation\": {\"tcti\": \"swtpm:port=2321\", \"pcrs\": \"sha256:0,7\"},\n"
    "  \"keys\": {\n"
    "    \"hot\": {\n"
    "      \"methods\": [\"address\", \"sign_transaction\"],\n"
    "      \"chain_ids\": [1, \"0xaa36a7\"],\n"
    "      \"to\": [\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\"],\n"
    "      \"selectors\": [\"0xa9059cbb\"],\n"
    "      \"max_value\": \"1000000000000000000\",\n"
    "      \"rate_per_second\": 2.5\n"
    "    },\n"
    "    \"cold\": {\"algorithms\": [\"ecdsa\", \"bip340\"]}\n"
    "  }\n"
    "}\n";

static bool parse(struct kh_signd_config *c, const char *json, char *err, size_t errlen)
{
    kh_signd_config_init(c, FRAME_MAX);
    return kh_signd_config_parse(c, json, strlen(json), err, errlen);
}

static void test_config_full(void)
{
    struct kh_signd_config c;
    const struct kh_signd_key_policy *p;
    char err[256];

    if (!parse(&c, full_config, err, sizeof err))
        kh_test_fail(__FILE__, __LINE__, "refused: %s", err);
    KH_CHECK(strcmp(c.default_key, "hot") == 0);
    KH_CHECK(c.max_connections == 8 && c.idle_timeout_ms == 5000 && c.io_timeout_ms == 2000);
    KH_CHECK(c.max_frame == 65536);
    KH_CHECK(strcmp(c.tpm_tcti, "swtpm:port=2321") == 0 && strcmp(c.tpm_pcrs, "sha256:0,7") == 0);
    KH_CHECK(c.has_keys && c.nkeys == 2);
    p = kh_signd_config_key(&c, "hot");
    KH_CHECK(p != NULL);
    KH_CHECK(p->methods == (KH_SIGND_M_ADDRESS | KH_SIGND_M_SIGN_TRANSACTION));
    KH_CHECK(p->has_chain_ids && p->nchain_ids == 2);
    KH_CHECK(p->chain_ids[1].b[29] == 0xaa && p->chain_ids[1].b[30] == 0x36 && p->chain_ids[1].b[31] == 0xa7);
    KH_CHECK(p->has_to && p->nto == 1 && p->to[0][0] == 0x5a);
    KH_CHECK(p->has_selectors && p->nselectors == 1 && p->selectors[0][0] == 0xa9);
    KH_CHECK(p->allow_empty_data);
    KH_CHECK(p->has_max_value);
    KH_CHECK(p->rate == 2.5 && p->burst == 3);
    p = kh_signd_config_key(&c, "cold");
    KH_CHECK(p != NULL && p->methods == KH_SIGND_M_ALL && !p->has_to && p->rate == 0);
    KH_CHECK(p->algorithms == ((1u << KH_SIGND_ALG_ECDSA) | (1u << KH_SIGND_ALG_BIP340)));
    KH_CHECK(kh_signd_config_key(&c, "hot")->algorithms == KH_SIGND_ALG_ALL);
    KH_CHECK(kh_signd_config_key(&c, "none") == NULL);
    kh_signd_config_clear(&c);

    /* Empty object: the defaults, every key served. */
    KH_CHECK(parse(&c, "{}", err, sizeof err));
    KH_CHECK(!c.has_keys && c.max_connections == KH_SIGND_DEF_MAX_CONN);
    KH_CHECK(c.max_frame == FRAME_MAX && c.default_key == NULL);
    KH_CHECK(!c.skip_verify);                    /* signatures are checked by default */
    kh_signd_config_clear(&c);

    /* The signature check, off and explicitly on. */
    KH_CHECK(parse(&c, "{\"verify_signatures\": false}", err, sizeof err));
    KH_CHECK(c.skip_verify);
    kh_signd_config_clear(&c);
    KH_CHECK(parse(&c, "{\"verify_signatures\": true}", err, sizeof err));
    KH_CHECK(!c.skip_verify);
    kh_signd_config_clear(&c);
}

static void test_config_refusals(void)
{
    static const char *const bad[] = {
        "", "[]", "{", "{} x", "{\"x\": 1}",
        "{\"max_connections\": 0}", "{\"max_connections\": \"8\"}",
        "{\"max_frame\": 2000000}", "{\"idle_timeout_ms\": -1}",
        "{\"default_key\": \"\"}", "{\"default_key\": \"a\", \"keys\": {\"b\": {}}}",
        "{\"keys\": []}", "{\"keys\": {\"\": {}}}", "{\"keys\": {\"a\": 1}}",
        "{\"keys\": {\"a\": {\"methods\": [\"status\"]}}}",
        "{\"keys\": {\"a\": {\"methods\": \"address\"}}}",
        "{\"keys\": {\"a\": {\"chain_ids\": [-1]}}}",
        "{\"keys\": {\"a\": {\"algorithms\": [\"ecdsa_sha256\"]}}}",
        "{\"keys\": {\"a\": {\"algorithms\": \"ecdsa\"}}}",
        "{\"keys\": {\"a\": {\"to\": [\"0x12\"]}}}",
        "{\"keys\": {\"a\": {\"to\": [\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\"]}}}",
        "{\"keys\": {\"a\": {\"selectors\": [\"0xa9059c\"]}}}",
        "{\"keys\": {\"a\": {\"selectors\": [\"a9059cbb\"]}}}",
        "{\"keys\": {\"a\": {\"rate_per_second\": -1}}}",
        "{\"keys\": {\"a\": {\"burst\": 5}}}",
        "{\"keys\": {\"a\": {\"rate_per_second\": 1, \"burst\": 0.5}}}",
        "{\"keys\": {\"a\": {\"allow_empty_data\": 1}}}",
        "{\"keys\": {\"a\": {\"chain\": [1]}}}",
        "{\"attestation\": {\"tcti\": \"x\", \"pcr\": \"y\"}}",
        "{\"default_key\": \"\xff\"}",
        "{\"verify_signatures\": 0}", "{\"verify_signatures\": \"false\"}",
    };
    struct kh_signd_config c;
    char err[256];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (parse(&c, bad[i], err, sizeof err))
            kh_test_fail(__FILE__, __LINE__, "accepted: %s", bad[i]);
        KH_CHECK(err[0] != '\0');
        kh_signd_config_clear(&c);
    }
}

static void test_config_file(void)
{
    struct kh_signd_config c;
    char path[512], err[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/signd.json", kh_test_tmpdir());
    f = fopen(path, "w");
    KH_CHECK(f != NULL);
    fputs(full_config, f);
    fclose(f);
    kh_signd_config_init(&c, FRAME_MAX);
    KH_CHECK(kh_signd_config_load(&c, path, err, sizeof err));
    KH_CHECK(c.nkeys == 2);
    kh_signd_config_clear(&c);

    kh_signd_config_init(&c, FRAME_MAX);
    snprintf(path, sizeof path, "%s/missing.json", kh_test_tmpdir());
    KH_CHECK(!kh_signd_config_load(&c, path, err, sizeof err));
    KH_CHECK(strstr(err, "missing.json") != NULL);
    kh_signd_config_clear(&c);

    kh_signd_config_init(&c, FRAME_MAX);
    KH_CHECK(!kh_signd_config_load(&c, kh_test_tmpdir(), err, sizeof err));
    kh_signd_config_clear(&c);
}

static bool tx_ok(const struct kh_signd_key_policy *p, const char *json, char *why, size_t whylen)
{
    struct json_object *j = json_tokener_parse(json);
    struct kh_eth_tx tx;
    char err[256];
    bool ok;

    KH_CHECK(j != NULL);
    if (!kh_eth_tx_from_json(&tx, j, err, sizeof err))
        kh_test_fail(__FILE__, __LINE__, "tx refused by the parser: %s", err);
    why[0] = '\0';
    ok = kh_signd_policy_check_tx(p, &tx, why, whylen);
    kh_eth_tx_clear(&tx);
    json_object_put(j);
    return ok;
}

#define TX(chain, to, data, value) \
    "{\"chainId\": " chain ", \"nonce\": 0, \"gas\": 21000, \"gasPrice\": 1, \"to\": " to \
    ", \"data\": \"" data "\", \"value\": \"" value "\"}"
#define ALLOWED "\"0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed\""
#define OTHER "\"0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359\""

static void test_policy_tx(void)
{
    struct kh_signd_config c;
    const struct kh_signd_key_policy *p;
    struct kh_signd_key_policy open;
    char err[256], why[256];

    KH_CHECK(parse(&c, full_config, err, sizeof err));
    p = kh_signd_config_key(&c, "hot");

    KH_CHECK(tx_ok(p, TX("1", ALLOWED, "0xa9059cbb0000", "0"), why, sizeof why));
    KH_CHECK(tx_ok(p, TX("11155111", ALLOWED, "0xa9059cbb", "1000000000000000000"), why, sizeof why));
    KH_CHECK(tx_ok(p, TX("1", ALLOWED, "0x", "5"), why, sizeof why));   /* plain transfer */

    KH_CHECK(!tx_ok(p, TX("5", ALLOWED, "0xa9059cbb", "0"), why, sizeof why));
    KH_CHECK(strstr(why, "chain id 5") != NULL);
    KH_CHECK(!tx_ok(p, TX("1", OTHER, "0xa9059cbb", "0"), why, sizeof why));
    KH_CHECK(strstr(why, "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359") != NULL);
    KH_CHECK(!tx_ok(p, TX("1", "null", "0xa9059cbb", "0"), why, sizeof why));
    KH_CHECK(strstr(why, "contract creation") != NULL);
    KH_CHECK(!tx_ok(p, TX("1", ALLOWED, "0x095ea7b3", "0"), why, sizeof why));
    KH_CHECK(strstr(why, "0x095ea7b3") != NULL);
    KH_CHECK(!tx_ok(p, TX("1", ALLOWED, "0xa905", "0"), why, sizeof why));
    KH_CHECK(!tx_ok(p, TX("1", ALLOWED, "0x", "1000000000000000001"), why, sizeof why));
    KH_CHECK(strstr(why, "max_value") != NULL);
    kh_signd_config_clear(&c);

    KH_CHECK(parse(&c, "{\"keys\": {\"k\": {\"selectors\": [\"0xa9059cbb\"], \"allow_empty_data\": false}}}",
                   err, sizeof err));
    p = kh_signd_config_key(&c, "k");
    KH_CHECK(!tx_ok(p, TX("1", OTHER, "0x", "0"), why, sizeof why));
    KH_CHECK(tx_ok(p, TX("7", OTHER, "0xa9059cbbff", "0"), why, sizeof why));
    KH_CHECK(tx_ok(p, TX("7", "null", "0xa9059cbbff", "0"), why, sizeof why));
    kh_signd_config_clear(&c);

    /* An empty allow-list allows nothing. */
    KH_CHECK(parse(&c, "{\"keys\": {\"k\": {\"chain_ids\": []}}}", err, sizeof err));
    KH_CHECK(!tx_ok(kh_signd_config_key(&c, "k"), TX("1", OTHER, "0x", "0"), why, sizeof why));
    kh_signd_config_clear(&c);

    kh_signd_policy_open(&open);
    KH_CHECK(tx_ok(&open, TX("99", "null", "0x01", "0xffff"), why, sizeof why));
}

static void test_bucket(void)
{
    struct kh_bucket b;
    uint64_t t = 1000000;
    int n = 0;

    /* 2 per second, burst 3: three at once, then one per 500 ms. */
    kh_bucket_init(&b, 2, 3, t);
    while (kh_bucket_take(&b, t))
        n++;
    KH_CHECK(n == 3);
    KH_CHECK(!kh_bucket_take(&b, t + 499));
    KH_CHECK(kh_bucket_take(&b, t + 500));
    KH_CHECK(!kh_bucket_take(&b, t + 500));
    /* A long pause refills only up to the burst. */
    n = 0;
    while (kh_bucket_take(&b, t + 100000))
        n++;
    KH_CHECK(n == 3);
    /* A clock that goes back does not add tokens. */
    KH_CHECK(!kh_bucket_take(&b, t));
    kh_bucket_destroy(&b);

    /* rate 0: unlimited. */
    kh_bucket_init(&b, 0, 1, t);
    for (int i = 0; i < 1000; i++)
        KH_CHECK(kh_bucket_take(&b, t));
    kh_bucket_destroy(&b);
}

static void test_method_bits(void)
{
    enum kh_signd_alg alg;

    KH_CHECK(kh_signd_alg_parse(&alg, "rsa_pss") && alg == KH_SIGND_ALG_RSA_PSS);
    KH_CHECK(strcmp(kh_signd_alg_name(KH_SIGND_ALG_ECDSA_RECOVERABLE), "ecdsa_recoverable") == 0);
    KH_CHECK(!kh_signd_alg_parse(&alg, "ECDSA"));
    KH_CHECK(kh_signd_method_bit("address") == KH_SIGND_M_ADDRESS);
    KH_CHECK(kh_signd_method_bit("sign") == KH_SIGND_M_SIGN);
    KH_CHECK(kh_signd_method_bit("status") == 0);
    KH_CHECK(kh_signd_method_bit("keys") == 0);
    KH_CHECK(kh_signd_method_bit("Address") == 0);
}

int main(int argc, char **argv)
{
    kh_test_register("/signd/policy/config-full", test_config_full);
    kh_test_register("/signd/policy/config-refusals", test_config_refusals);
    kh_test_register("/signd/policy/config-file", test_config_file);
    kh_test_register("/signd/policy/tx", test_policy_tx);
    kh_test_register("/signd/policy/bucket", test_bucket);
    kh_test_register("/signd/policy/method-bits", test_method_bits);
    return kh_test_run(argc, argv);
}
