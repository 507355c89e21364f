/*
 * signd-eth.c - Ethereum encodings for keyhold-signd (see signd-eth.h).
 *
 * RLP follows the Ethereum yellow paper, appendix B; transaction layouts
 * follow EIP-155, EIP-2718, EIP-2930 and EIP-1559. Every length is checked
 * before it is used, and the writer never grows past its maximum.
 */
#include "signd-eth.h"

#include "encode.h"
#include "keccak.h"

#include <json-c/json.h>

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- reasons ----------------------------------------------------------- */

void kh_signd_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- 256-bit unsigned quantities --------------------------------------- */

void kh_u256_from_u64(kh_u256 *out, uint64_t v)
{
    memset(out->b, 0, sizeof out->b);
    for (int i = 0; i < 8; i++)
        out->b[31 - i] = (uint8_t)(v >> (8 * i));
}

bool kh_u256_to_u64(uint64_t *out, const kh_u256 *a)
{
    uint64_t v = 0;

    for (int i = 0; i < 24; i++)
        if (a->b[i])
            return false;
    for (int i = 24; i < 32; i++)
        v = (v << 8) | a->b[i];
    *out = v;
    return true;
}

int kh_u256_cmp(const kh_u256 *a, const kh_u256 *b)
{
    return memcmp(a->b, b->b, sizeof a->b);
}

bool kh_u256_is_zero(const kh_u256 *a)
{
    for (size_t i = 0; i < sizeof a->b; i++)
        if (a->b[i])
            return false;
    return true;
}

bool kh_u256_mul_add(kh_u256 *out, const kh_u256 *a, uint32_t m, uint32_t add)
{
    kh_u256 r;
    uint64_t carry = add;

    for (int i = 31; i >= 0; i--) {
        uint64_t t = (uint64_t)a->b[i] * m + carry;
        r.b[i] = (uint8_t)t;
        carry = t >> 8;
    }
    if (carry)
        return false;
    *out = r;
    return true;
}

bool kh_u256_parse(kh_u256 *out, const char *s, char *err, size_t errlen)
{
    kh_u256 v;
    size_t n;

    memset(&v, 0, sizeof v);
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        const char *d = s + 2;
        char digits[2 * sizeof v.b];
        size_t got;
        n = strlen(d);
        for (size_t i = 0; i < n; i++)
            if (!isxdigit((unsigned char)d[i])) {
                kh_signd_errf(err, errlen, "'%c' is not a hex digit", d[i]);
                return false;
            }
        while (n > 0 && *d == '0') {
            d++;
            n--;
        }
        if (n > sizeof digits) {
            kh_signd_errf(err, errlen, "more than 256 bits");
            return false;
        }
        /* Right-aligned in 64 digits (an odd count is fine for a quantity). */
        memset(digits, '0', sizeof digits - n);
        memcpy(digits + sizeof digits - n, d, n);
        if (!kh_hex_decode(v.b, &got, sizeof v.b, digits, sizeof digits)) {
            kh_signd_errf(err, errlen, "not hex");   /* cannot happen: checked above */
            return false;
        }
        *out = v;
        return true;
    }
    n = strlen(s);
    if (n == 0) {
        kh_signd_errf(err, errlen, "empty");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            kh_signd_errf(err, errlen, "not a number (\"0x\" + hex digits, or decimal digits)");
            return false;
        }
        if (!kh_u256_mul_add(&v, &v, 10, (uint32_t)(s[i] - '0'))) {
            kh_signd_errf(err, errlen, "more than 256 bits");
            return false;
        }
    }
    *out = v;
    return true;
}

bool kh_u256_from_json(kh_u256 *out, struct json_object *v, char *err, size_t errlen)
{
    switch (json_object_get_type(v)) {
    case json_type_string:
        return kh_u256_parse(out, json_object_get_string(v), err, errlen);
    case json_type_int: {
        int64_t i = json_object_get_int64(v);
        uint64_t u;
        if (i < 0) {
            kh_signd_errf(err, errlen, "negative");
            return false;
        }
        u = i == INT64_MAX ? json_object_get_uint64(v) : (uint64_t)i;
        if (u == UINT64_MAX) {
            kh_signd_errf(err, errlen, "JSON integer too large; give it as a \"0x\" hex string");
            return false;
        }
        kh_u256_from_u64(out, u);
        return true;
    }
    case json_type_double:
        kh_signd_errf(err, errlen, "not an integer (write it as a hex string or an integer)");
        return false;
    default:
        kh_signd_errf(err, errlen, "must be a hex string or an integer");
        return false;
    }
}

void kh_u256_to_dec(char *out, size_t outlen, const kh_u256 *a)
{
    char tmp[80];
    size_t n = 0;
    kh_u256 v = *a;

    if (outlen == 0)
        return;
    /* Repeated division by 10, most significant byte first. */
    do {
        unsigned rem = 0;
        for (int i = 0; i < 32; i++) {
            unsigned cur = (rem << 8) | v.b[i];
            v.b[i] = (uint8_t)(cur / 10);
            rem = cur % 10;
        }
        tmp[n++] = (char)('0' + rem);
    } while (!kh_u256_is_zero(&v) && n < sizeof tmp);
    if (n + 1 > outlen) {
        out[0] = '\0';
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

/* ---- RLP --------------------------------------------------------------- */

void kh_rlp_init(struct kh_rlp *r, size_t max)
{
    memset(r, 0, sizeof *r);
    r->max = max;
}

void kh_rlp_free(struct kh_rlp *r)
{
    free(r->p);
    r->p = NULL;
    r->len = r->cap = 0;
}

/* Makes room for n more bytes. Returns: false (and sets failed) if it cannot. */
static bool kh_rlp_reserve(struct kh_rlp *r, size_t n)
{
    size_t want, cap;
    uint8_t *p;

    if (r->failed)
        return false;
    if (n > r->max || r->len > r->max - n) {
        r->failed = true;
        return false;
    }
    want = r->len + n;
    if (want <= r->cap)
        return true;
    cap = r->cap ? r->cap : 128;
    while (cap < want)
        cap = cap > r->max / 2 ? r->max : cap * 2;
    p = realloc(r->p, cap);
    if (!p) {
        r->failed = true;
        return false;
    }
    r->p = p;
    r->cap = cap;
    return true;
}

/* Bytes needed for len as a big-endian integer without leading zeros. */
static size_t kh_rlp_len_bytes(size_t len)
{
    size_t n = 0;

    while (len) {
        n++;
        len >>= 8;
    }
    return n;
}

/* Writes the header for a payload of len bytes with short base 0x80 / 0xc0
 * into hdr. Returns: the header size (1..9). */
static size_t kh_rlp_header(uint8_t hdr[9], uint8_t base, size_t len)
{
    size_t nb;

    if (len <= 55) {
        hdr[0] = (uint8_t)(base + len);
        return 1;
    }
    nb = kh_rlp_len_bytes(len);
    hdr[0] = (uint8_t)(base + 55 + nb);
    for (size_t i = 0; i < nb; i++)
        hdr[1 + i] = (uint8_t)(len >> (8 * (nb - 1 - i)));
    return 1 + nb;
}

void kh_rlp_raw(struct kh_rlp *r, const uint8_t *data, size_t len)
{
    if (!kh_rlp_reserve(r, len))
        return;
    if (len)
        memcpy(r->p + r->len, data, len);
    r->len += len;
}

void kh_rlp_bytes(struct kh_rlp *r, const uint8_t *data, size_t len)
{
    uint8_t hdr[9];
    size_t h;

    if (len == 1 && data[0] < 0x80) {
        kh_rlp_raw(r, data, 1);
        return;
    }
    h = kh_rlp_header(hdr, 0x80, len);
    if (len > r->max || !kh_rlp_reserve(r, h + len))
        return;
    kh_rlp_raw(r, hdr, h);
    kh_rlp_raw(r, data, len);
}

void kh_rlp_uint(struct kh_rlp *r, const kh_u256 *v)
{
    size_t i = 0;

    while (i < sizeof v->b && v->b[i] == 0)
        i++;
    kh_rlp_bytes(r, v->b + i, sizeof v->b - i);
}

void kh_rlp_u64(struct kh_rlp *r, uint64_t v)
{
    kh_u256 u;

    kh_u256_from_u64(&u, v);
    kh_rlp_uint(r, &u);
}

size_t kh_rlp_list_begin(struct kh_rlp *r)
{
    return r->len;
}

void kh_rlp_list_end(struct kh_rlp *r, size_t mark)
{
    uint8_t hdr[9];
    size_t h, payload;

    if (r->failed)
        return;
    if (mark > r->len) {
        r->failed = true;
        return;
    }
    payload = r->len - mark;
    h = kh_rlp_header(hdr, 0xc0, payload);
    if (!kh_rlp_reserve(r, h))
        return;
    if (payload)
        memmove(r->p + mark + h, r->p + mark, payload);
    memcpy(r->p + mark, hdr, h);
    r->len += h;
}

/* ---- addresses and messages -------------------------------------------- */

void kh_eth_checksum_address(char out[43], const uint8_t addr[KH_ETH_ADDR_LEN])
{
    kh_eip55_encode(out, addr);
}

bool kh_eth_parse_address(uint8_t addr[KH_ETH_ADDR_LEN], const char *s, char *err,
                          size_t errlen)
{
    bool has_lower = false, has_upper = false;
    size_t n;
    char want[43];

    if (s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) {
        kh_signd_errf(err, errlen, "an address starts with 0x");
        return false;
    }
    n = strlen(s + 2);
    if (n != 40 || !kh_hex_decode(addr, &n, KH_ETH_ADDR_LEN, s + 2, 40)) {
        kh_signd_errf(err, errlen, "an address is 0x + 40 hex digits");
        return false;
    }
    for (size_t i = 2; i < 42; i++) {
        has_lower |= s[i] >= 'a' && s[i] <= 'f';
        has_upper |= s[i] >= 'A' && s[i] <= 'F';
    }
    if (has_lower && has_upper) {
        kh_eth_checksum_address(want, addr);
        if (strcmp(want + 2, s + 2) != 0) {
            kh_signd_errf(err, errlen, "bad EIP-55 checksum (mixed case)");
            memset(addr, 0, KH_ETH_ADDR_LEN);
            return false;
        }
    }
    return true;
}

bool kh_eth_parse_hex_data(uint8_t **out, size_t *len, size_t max, const char *s,
                           char *err, size_t errlen)
{
    size_t n, got;
    uint8_t *p;

    *out = NULL;
    *len = 0;
    if (s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) {
        kh_signd_errf(err, errlen, "hex data starts with 0x");
        return false;
    }
    n = strlen(s + 2);
    if (n % 2) {
        kh_signd_errf(err, errlen, "odd number of hex digits");
        return false;
    }
    if (n / 2 > max) {
        kh_signd_errf(err, errlen, "longer than %zu bytes", max);
        return false;
    }
    if (n == 0)
        return true;
    p = malloc(n / 2);
    if (!p) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    if (!kh_hex_decode(p, &got, n / 2, s + 2, n)) {
        free(p);
        kh_signd_errf(err, errlen, "not hex");
        return false;
    }
    *out = p;
    *len = got;
    return true;
}

void kh_eth_hash_defunct32(uint8_t out[32], const uint8_t msg[32])
{
    static const char prefix[] = "\x19" "Ethereum Signed Message:\n32";
    uint8_t buf[sizeof prefix - 1 + 32];

    memcpy(buf, prefix, sizeof prefix - 1);
    memcpy(buf + sizeof prefix - 1, msg, 32);
    kh_keccak256(out, buf, sizeof buf);
}

/* ---- transactions: reading the JSON dict ------------------------------- */

void kh_eth_tx_clear(struct kh_eth_tx *tx)
{
    free(tx->data);
    for (size_t i = 0; i < tx->naccess; i++)
        free(tx->access[i].keys);
    free(tx->access);
    memset(tx, 0, sizeof *tx);
}

/* A quantity field. Returns false with "field 'name': why" in err. */
static bool kh_tx_u256(kh_u256 *out, struct json_object *v, const char *name, char *err,
                       size_t errlen)
{
    char why[160];

    if (!kh_u256_from_json(out, v, why, sizeof why)) {
        kh_signd_errf(err, errlen, "field '%s': %s", name, why);
        return false;
    }
    return true;
}

static bool kh_tx_u64(uint64_t *out, struct json_object *v, const char *name, uint64_t max,
                      char *err, size_t errlen)
{
    kh_u256 u;

    if (!kh_tx_u256(&u, v, name, err, errlen))
        return false;
    if (!kh_u256_to_u64(out, &u) || *out > max) {
        kh_signd_errf(err, errlen, "field '%s': too large", name);
        return false;
    }
    return true;
}

static bool kh_tx_address(uint8_t out[KH_ETH_ADDR_LEN], struct json_object *v, const char *name,
                          char *err, size_t errlen)
{
    char why[160];

    if (!json_object_is_type(v, json_type_string)) {
        kh_signd_errf(err, errlen, "field '%s': must be a string", name);
        return false;
    }
    if (!kh_eth_parse_address(out, json_object_get_string(v), why, sizeof why)) {
        kh_signd_errf(err, errlen, "field '%s': %s", name, why);
        return false;
    }
    return true;
}

/* accessList: [{"address": A, "storageKeys": [K, ...]}, ...]. */
static bool kh_tx_access_list(struct kh_eth_tx *tx, struct json_object *v, char *err,
                              size_t errlen)
{
    size_t n;

    if (!json_object_is_type(v, json_type_array)) {
        kh_signd_errf(err, errlen, "field 'accessList': must be an array");
        return false;
    }
    n = json_object_array_length(v);
    if (n == 0)
        return true;
    tx->access = calloc(n, sizeof *tx->access);
    if (!tx->access) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(v, i), *addr, *keys;
        struct kh_eth_access_entry *ent = &tx->access[i];
        size_t nk;

        tx->naccess = i + 1;
        if (!json_object_is_type(e, json_type_object) ||
            !json_object_object_get_ex(e, "address", &addr) ||
            !json_object_object_get_ex(e, "storageKeys", &keys) ||
            json_object_object_length(e) != 2) {
            kh_signd_errf(err, errlen,
                          "field 'accessList': entry %zu must be {\"address\", \"storageKeys\"}", i);
            return false;
        }
        if (!kh_tx_address(ent->address, addr, "accessList.address", err, errlen))
            return false;
        if (!json_object_is_type(keys, json_type_array)) {
            kh_signd_errf(err, errlen,
                          "field 'accessList': storageKeys of entry %zu must be an array", i);
            return false;
        }
        nk = json_object_array_length(keys);
        if (nk == 0)
            continue;
        ent->keys = calloc(nk, sizeof *ent->keys);
        if (!ent->keys) {
            kh_signd_errf(err, errlen, "out of memory");
            return false;
        }
        for (size_t k = 0; k < nk; k++) {
            struct json_object *kv = json_object_array_get_idx(keys, k);
            const char *s = json_object_get_string(kv);
            size_t got;

            ent->nkeys = k + 1;
            if (!json_object_is_type(kv, json_type_string) || s[0] != '0' ||
                (s[1] != 'x' && s[1] != 'X') || strlen(s + 2) != 64 ||
                !kh_hex_decode(ent->keys[k], &got, 32, s + 2, 64)) {
                kh_signd_errf(err, errlen,
                              "field 'accessList': storage key %zu of entry %zu is not 0x + 64 hex digits",
                              k, i);
                return false;
            }
        }
    }
    return true;
}

/* The fields a transaction dict may carry. */
enum kh_tx_field {
    KH_TXF_TYPE, KH_TXF_CHAIN_ID, KH_TXF_NONCE, KH_TXF_GAS, KH_TXF_GAS_LIMIT,
    KH_TXF_GAS_PRICE, KH_TXF_MAX_FEE, KH_TXF_MAX_PRIORITY, KH_TXF_TO, KH_TXF_VALUE,
    KH_TXF_DATA, KH_TXF_INPUT, KH_TXF_ACCESS_LIST, KH_TXF_FROM, KH_TXF_COUNT
};

static const char *const kh_tx_field_names[KH_TXF_COUNT] = {
    [KH_TXF_TYPE] = "type",
    [KH_TXF_CHAIN_ID] = "chainId",
    [KH_TXF_NONCE] = "nonce",
    [KH_TXF_GAS] = "gas",
    [KH_TXF_GAS_LIMIT] = "gasLimit",
    [KH_TXF_GAS_PRICE] = "gasPrice",
    [KH_TXF_MAX_FEE] = "maxFeePerGas",
    [KH_TXF_MAX_PRIORITY] = "maxPriorityFeePerGas",
    [KH_TXF_TO] = "to",
    [KH_TXF_VALUE] = "value",
    [KH_TXF_DATA] = "data",
    [KH_TXF_INPUT] = "input",
    [KH_TXF_ACCESS_LIST] = "accessList",
    [KH_TXF_FROM] = "from",
};

bool kh_eth_tx_from_json(struct kh_eth_tx *tx, struct json_object *obj, char *err,
                         size_t errlen)
{
    struct json_object *f[KH_TXF_COUNT] = { 0 };
    struct json_object_iterator it, end;
    struct json_object *gas, *data;
    kh_u256 u;

    memset(tx, 0, sizeof *tx);
    if (!json_object_is_type(obj, json_type_object)) {
        kh_signd_errf(err, errlen, "tx must be a JSON object");
        return false;
    }
    it = json_object_iter_begin(obj);
    end = json_object_iter_end(obj);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *name = json_object_iter_peek_name(&it);
        int i;

        for (i = 0; i < KH_TXF_COUNT; i++)
            if (strcmp(name, kh_tx_field_names[i]) == 0)
                break;
        if (i == KH_TXF_COUNT) {
            kh_signd_errf(err, errlen, "unknown field '%.64s'", name);
            return false;
        }
        f[i] = json_object_iter_peek_value(&it);
    }

    /* type: given, or inferred from the fee fields and the access list. */
    if (f[KH_TXF_TYPE] && !json_object_is_type(f[KH_TXF_TYPE], json_type_null)) {
        if (!kh_tx_u256(&u, f[KH_TXF_TYPE], "type", err, errlen))
            return false;
        uint64_t t;
        if (!kh_u256_to_u64(&t, &u) || t > 2) {
            kh_signd_errf(err, errlen, "field 'type': only 0 (legacy), 1 (EIP-2930) and 2 (EIP-1559)");
            return false;
        }
        tx->type = (enum kh_eth_tx_type)t;
    } else if (f[KH_TXF_MAX_FEE] || f[KH_TXF_MAX_PRIORITY]) {
        tx->type = KH_ETH_TX_DYNAMIC_FEE;
    } else if (f[KH_TXF_ACCESS_LIST]) {
        tx->type = KH_ETH_TX_ACCESS_LIST;
    } else {
        tx->type = KH_ETH_TX_LEGACY;
    }

    if (!f[KH_TXF_CHAIN_ID]) {
        kh_signd_errf(err, errlen, "field 'chainId' is required");
        return false;
    }
    if (!kh_tx_u256(&tx->chain_id, f[KH_TXF_CHAIN_ID], "chainId", err, errlen))
        return false;
    if (kh_u256_is_zero(&tx->chain_id)) {
        kh_signd_errf(err, errlen, "field 'chainId': must not be 0");
        return false;
    }
    if (tx->type == KH_ETH_TX_LEGACY) {
        /* v = chainId * 2 + 36 at most must fit 256 bits. */
        kh_u256 v;
        if (!kh_u256_mul_add(&v, &tx->chain_id, 2, 36)) {
            kh_signd_errf(err, errlen, "field 'chainId': too large for a legacy transaction's v");
            return false;
        }
    }

    if (!f[KH_TXF_NONCE]) {
        kh_signd_errf(err, errlen, "field 'nonce' is required");
        return false;
    }
    if (!kh_tx_u64(&tx->nonce, f[KH_TXF_NONCE], "nonce", UINT64_MAX - 1, err, errlen))
        return false;

    if (f[KH_TXF_GAS] && f[KH_TXF_GAS_LIMIT]) {
        kh_signd_errf(err, errlen, "give 'gas' or 'gasLimit', not both");
        return false;
    }
    gas = f[KH_TXF_GAS] ? f[KH_TXF_GAS] : f[KH_TXF_GAS_LIMIT];
    if (!gas) {
        kh_signd_errf(err, errlen, "field 'gas' is required");
        return false;
    }
    if (!kh_tx_u64(&tx->gas, gas, f[KH_TXF_GAS] ? "gas" : "gasLimit", UINT64_MAX, err, errlen))
        return false;

    if (tx->type == KH_ETH_TX_DYNAMIC_FEE) {
        if (f[KH_TXF_GAS_PRICE]) {
            kh_signd_errf(err, errlen, "field 'gasPrice' does not belong in a type 2 transaction");
            return false;
        }
        if (!f[KH_TXF_MAX_FEE] || !f[KH_TXF_MAX_PRIORITY]) {
            kh_signd_errf(err, errlen,
                          "a type 2 transaction needs 'maxFeePerGas' and 'maxPriorityFeePerGas'");
            return false;
        }
        if (!kh_tx_u256(&tx->max_fee, f[KH_TXF_MAX_FEE], "maxFeePerGas", err, errlen) ||
            !kh_tx_u256(&tx->max_priority_fee, f[KH_TXF_MAX_PRIORITY], "maxPriorityFeePerGas",
                        err, errlen))
            return false;
        if (kh_u256_cmp(&tx->max_priority_fee, &tx->max_fee) > 0) {
            kh_signd_errf(err, errlen, "'maxPriorityFeePerGas' exceeds 'maxFeePerGas'");
            return false;
        }
    } else {
        if (f[KH_TXF_MAX_FEE] || f[KH_TXF_MAX_PRIORITY]) {
            kh_signd_errf(err, errlen, "'maxFeePerGas'/'maxPriorityFeePerGas' need type 2");
            return false;
        }
        if (!f[KH_TXF_GAS_PRICE]) {
            kh_signd_errf(err, errlen, "field 'gasPrice' is required for type %d", (int)tx->type);
            return false;
        }
        if (!kh_tx_u256(&tx->gas_price, f[KH_TXF_GAS_PRICE], "gasPrice", err, errlen))
            return false;
    }

    if (f[KH_TXF_TO] && !json_object_is_type(f[KH_TXF_TO], json_type_null) &&
        !(json_object_is_type(f[KH_TXF_TO], json_type_string) &&
          json_object_get_string_len(f[KH_TXF_TO]) == 0)) {
        if (!kh_tx_address(tx->to, f[KH_TXF_TO], "to", err, errlen))
            return false;
        tx->has_to = true;
    }
    if (f[KH_TXF_FROM] && !json_object_is_type(f[KH_TXF_FROM], json_type_null)) {
        if (!kh_tx_address(tx->from, f[KH_TXF_FROM], "from", err, errlen))
            return false;
        tx->has_from = true;
    }
    if (f[KH_TXF_VALUE] && !kh_tx_u256(&tx->value, f[KH_TXF_VALUE], "value", err, errlen))
        return false;

    if (f[KH_TXF_DATA] && f[KH_TXF_INPUT]) {
        kh_signd_errf(err, errlen, "give 'data' or 'input', not both");
        return false;
    }
    data = f[KH_TXF_DATA] ? f[KH_TXF_DATA] : f[KH_TXF_INPUT];
    if (data && !json_object_is_type(data, json_type_null)) {
        char why[160];
        if (!json_object_is_type(data, json_type_string) ||
            !kh_eth_parse_hex_data(&tx->data, &tx->data_len, KH_ETH_TX_MAX,
                                   json_object_get_string(data), why, sizeof why)) {
            if (!json_object_is_type(data, json_type_string))
                snprintf(why, sizeof why, "must be a hex string");
            kh_signd_errf(err, errlen, "field '%s': %s", f[KH_TXF_DATA] ? "data" : "input", why);
            return false;
        }
    }

    if (f[KH_TXF_ACCESS_LIST] && !json_object_is_type(f[KH_TXF_ACCESS_LIST], json_type_null)) {
        if (tx->type == KH_ETH_TX_LEGACY) {
            kh_signd_errf(err, errlen, "field 'accessList' needs type 1 or 2");
            return false;
        }
        if (!kh_tx_access_list(tx, f[KH_TXF_ACCESS_LIST], err, errlen))
            return false;
    }
    return true;
}

/* ---- transactions: encoding -------------------------------------------- */

/* The fields both the signing payload and the signed encoding start with. */
static void kh_tx_put_fields(struct kh_rlp *r, const struct kh_eth_tx *tx)
{
    if (tx->type != KH_ETH_TX_LEGACY)
        kh_rlp_uint(r, &tx->chain_id);
    kh_rlp_u64(r, tx->nonce);
    if (tx->type == KH_ETH_TX_DYNAMIC_FEE) {
        kh_rlp_uint(r, &tx->max_priority_fee);
        kh_rlp_uint(r, &tx->max_fee);
    } else {
        kh_rlp_uint(r, &tx->gas_price);
    }
    kh_rlp_u64(r, tx->gas);
    kh_rlp_bytes(r, tx->to, tx->has_to ? KH_ETH_ADDR_LEN : 0);
    kh_rlp_uint(r, &tx->value);
    kh_rlp_bytes(r, tx->data, tx->data_len);
    if (tx->type != KH_ETH_TX_LEGACY) {
        size_t outer = kh_rlp_list_begin(r);
        for (size_t i = 0; i < tx->naccess; i++) {
            const struct kh_eth_access_entry *e = &tx->access[i];
            size_t entry = kh_rlp_list_begin(r), keys;
            kh_rlp_bytes(r, e->address, KH_ETH_ADDR_LEN);
            keys = kh_rlp_list_begin(r);
            for (size_t k = 0; k < e->nkeys; k++)
                kh_rlp_bytes(r, e->keys[k], 32);
            kh_rlp_list_end(r, keys);
            kh_rlp_list_end(r, entry);
        }
        kh_rlp_list_end(r, outer);
    }
}

/* Starts an encoding: the type byte of a typed transaction, then the list. */
static size_t kh_tx_begin(struct kh_rlp *r, const struct kh_eth_tx *tx)
{
    if (tx->type != KH_ETH_TX_LEGACY) {
        uint8_t t = (uint8_t)tx->type;
        kh_rlp_raw(r, &t, 1);
    }
    return kh_rlp_list_begin(r);
}

bool kh_eth_tx_signing_hash(uint8_t hash[32], const struct kh_eth_tx *tx)
{
    struct kh_rlp r;
    size_t list;
    bool ok;

    kh_rlp_init(&r, KH_ETH_TX_MAX + 4096);
    list = kh_tx_begin(&r, tx);
    kh_tx_put_fields(&r, tx);
    if (tx->type == KH_ETH_TX_LEGACY) {
        /* EIP-155: (chainId, 0, 0) in place of (v, r, s). */
        kh_rlp_uint(&r, &tx->chain_id);
        kh_rlp_u64(&r, 0);
        kh_rlp_u64(&r, 0);
    }
    kh_rlp_list_end(&r, list);
    ok = !r.failed;
    if (ok)
        kh_keccak256(hash, r.p, r.len);
    kh_rlp_free(&r);
    return ok;
}

uint8_t *kh_eth_tx_encode_signed(const struct kh_eth_tx *tx, const uint8_t sig[65], size_t *len)
{
    struct kh_rlp r;
    kh_u256 rr, ss, v;
    size_t list;

    *len = 0;
    if (sig[64] > 1)
        return NULL;
    if (tx->type == KH_ETH_TX_LEGACY) {
        if (!kh_u256_mul_add(&v, &tx->chain_id, 2, 35u + sig[64]))
            return NULL;
    } else {
        kh_u256_from_u64(&v, sig[64]);
    }
    memcpy(rr.b, sig, 32);
    memcpy(ss.b, sig + 32, 32);

    kh_rlp_init(&r, KH_ETH_TX_MAX + 4096);
    list = kh_tx_begin(&r, tx);
    kh_tx_put_fields(&r, tx);
    kh_rlp_uint(&r, &v);
    kh_rlp_uint(&r, &rr);
    kh_rlp_uint(&r, &ss);
    kh_rlp_list_end(&r, list);
    if (r.failed) {
        kh_rlp_free(&r);
        return NULL;
    }
    *len = r.len;
    return r.p;
}
