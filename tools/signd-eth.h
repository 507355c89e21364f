/*
 * signd-eth.h - Ethereum encodings for keyhold-signd: 256-bit quantities,
 * RLP, EIP-55 addresses, the EIP-191 message hash, and transactions (legacy
 * with EIP-155 replay protection, EIP-2930 type 1, EIP-1559 type 2) read from
 * the usual JSON field dict, with their signing hashes and signed encodings.
 *
 * Nothing here signs: the caller signs the hash (CKM_KH_ECDSA_RECOVERABLE)
 * and hands r||s||recid back to kh_eth_tx_encode_signed.
 */
#ifndef KH_SIGND_ETH_H
#define KH_SIGND_ETH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

/* ---- reasons ----------------------------------------------------------- */

/*
 * Writes a printf-style reason into err, the "char *err, size_t errlen" out
 * parameter of keyhold-signd's units (this file is the lowest of them).
 * Out: err (truncated to errlen - 1 bytes; nothing when err is NULL or
 *      errlen is 0).
 */
void kh_signd_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- 256-bit unsigned quantities --------------------------------------- */

/* A 256-bit unsigned integer, 32 bytes big-endian. */
typedef struct kh_u256 {
    uint8_t b[32];
} kh_u256;

/* Sets out to v. */
void kh_u256_from_u64(kh_u256 *out, uint64_t v);

/* Returns: true when a fits in 64 bits (then *out = a). */
bool kh_u256_to_u64(uint64_t *out, const kh_u256 *a);

/* Returns: <0, 0, >0 as a <, ==, > b. */
int kh_u256_cmp(const kh_u256 *a, const kh_u256 *b);

/* Returns: true when a is zero. */
bool kh_u256_is_zero(const kh_u256 *a);

/*
 * Computes out = a * m + add.
 * Returns: false (out unchanged) when the result does not fit 256 bits.
 */
bool kh_u256_mul_add(kh_u256 *out, const kh_u256 *a, uint32_t m, uint32_t add);

/*
 * Parses a quantity written as "0x" + hex digits (either case, leading zeros
 * allowed, "0x" alone is 0) or as decimal digits.
 * Returns: true on success; false with a reason in err (no sign, no blanks,
 *          at most 256 bits).
 */
bool kh_u256_parse(kh_u256 *out, const char *s, char *err, size_t errlen);

/*
 * Reads a quantity from a JSON value: a string as kh_u256_parse takes, or a
 * JSON integer in [0, 2^64 - 2] (json-c turns larger integers into
 * 2^64 - 1, so that value is refused as ambiguous: give big values as hex).
 * Returns: true on success; false with a reason in err.
 */
bool kh_u256_from_json(kh_u256 *out, struct json_object *v, char *err, size_t errlen);

/* Writes a as decimal into out (at least 79 bytes). */
void kh_u256_to_dec(char *out, size_t outlen, const kh_u256 *a);

/* ---- RLP --------------------------------------------------------------- */

/*
 * An RLP writer into a growing buffer that never exceeds max bytes. A
 * failure (out of memory, over max, unbalanced list) sets failed and makes
 * every later call a no-op, so callers check once at the end.
 */
struct kh_rlp {
    uint8_t *p;
    size_t len;
    size_t cap;
    size_t max;
    bool failed;
};

/* Starts an empty writer whose output may not exceed max bytes. */
void kh_rlp_init(struct kh_rlp *r, size_t max);

/* Frees the buffer; safe on a zeroed or already freed writer. */
void kh_rlp_free(struct kh_rlp *r);

/* Appends len bytes as-is (not RLP: e.g. a typed transaction's type byte). */
void kh_rlp_raw(struct kh_rlp *r, const uint8_t *data, size_t len);

/* Appends a byte string. */
void kh_rlp_bytes(struct kh_rlp *r, const uint8_t *data, size_t len);

/* Appends an integer: big-endian without leading zeros (0 is the empty string). */
void kh_rlp_uint(struct kh_rlp *r, const kh_u256 *v);

/* Appends a 64-bit integer (as kh_rlp_uint). */
void kh_rlp_u64(struct kh_rlp *r, uint64_t v);

/* Opens a list. Returns: a mark to hand to kh_rlp_list_end. */
size_t kh_rlp_list_begin(struct kh_rlp *r);

/* Closes the list opened at mark: its items become one RLP list. */
void kh_rlp_list_end(struct kh_rlp *r, size_t mark);

/* ---- addresses and messages -------------------------------------------- */

#define KH_ETH_ADDR_LEN 20

/* Writes "0x" + EIP-55 mixed-case hex of a 20-byte address (43 bytes with NUL). */
void kh_eth_checksum_address(char out[43], const uint8_t addr[KH_ETH_ADDR_LEN]);

/*
 * Parses "0x" + 40 hex digits. All-lowercase and all-uppercase digits are
 * taken as they are; mixed case must be a valid EIP-55 checksum.
 * Returns: true on success; false with a reason in err.
 */
bool kh_eth_parse_address(uint8_t addr[KH_ETH_ADDR_LEN], const char *s, char *err,
                          size_t errlen);

/*
 * Parses "0x" + an even number of hex digits ("0x" alone: empty) of at
 * most max bytes.
 * Out: out: malloc'd (NULL when *len is 0); len.
 * Returns: true on success; false with a reason in err.
 */
bool kh_eth_parse_hex_data(uint8_t **out, size_t *len, size_t max, const char *s,
                           char *err, size_t errlen);

/* EIP-191 (version 0x45, "personal_sign") hash of a 32-byte message:
 * keccak256("\x19Ethereum Signed Message:\n32" || msg). */
void kh_eth_hash_defunct32(uint8_t out[32], const uint8_t msg[32]);

/* ---- transactions ------------------------------------------------------ */

enum kh_eth_tx_type {
    KH_ETH_TX_LEGACY = 0,       /* EIP-155: rlp([nonce, gasPrice, gas, to, value, data, v, r, s]) */
    KH_ETH_TX_ACCESS_LIST = 1,  /* EIP-2930: 0x01 || rlp([chainId, ..., accessList, yParity, r, s]) */
    KH_ETH_TX_DYNAMIC_FEE = 2,  /* EIP-1559: 0x02 || rlp([chainId, nonce, maxPriorityFee, maxFee, ...]) */
};

struct kh_eth_access_entry {
    uint8_t address[KH_ETH_ADDR_LEN];
    uint8_t (*keys)[32];
    size_t nkeys;
};

struct kh_eth_tx {
    enum kh_eth_tx_type type;
    kh_u256 chain_id;
    uint64_t nonce;             /* EIP-2681: below 2^64 - 1 */
    uint64_t gas;
    kh_u256 gas_price;          /* types 0 and 1 */
    kh_u256 max_priority_fee;   /* type 2 */
    kh_u256 max_fee;            /* type 2 */
    kh_u256 value;
    bool has_to;                /* false: contract creation */
    uint8_t to[KH_ETH_ADDR_LEN];
    bool has_from;              /* a "from" the caller expects to be the signer */
    uint8_t from[KH_ETH_ADDR_LEN];
    uint8_t *data;
    size_t data_len;
    struct kh_eth_access_entry *access;
    size_t naccess;
};

/* The largest transaction encoding kh_eth_tx_* produce (fits a wire frame). */
#define KH_ETH_TX_MAX (512u * 1024u)

/*
 * Reads a transaction from its JSON field dict: nonce, gas (or gasLimit),
 * gasPrice or maxFeePerGas + maxPriorityFeePerGas, to (absent, null or ""
 * for a contract creation), value, data (or input), chainId, accessList,
 * type (0, 1, 2; inferred when absent), from (optional). Quantities are hex
 * strings, decimal strings or JSON integers. Unknown fields are refused.
 * chainId is required (no unprotected transactions).
 *
 * Out: tx: filled in (clear with kh_eth_tx_clear, also on failure).
 * Returns: true on success; false with a reason in err.
 */
bool kh_eth_tx_from_json(struct kh_eth_tx *tx, struct json_object *obj, char *err,
                         size_t errlen);

/* Frees what kh_eth_tx_from_json allocated; safe on a zeroed struct. */
void kh_eth_tx_clear(struct kh_eth_tx *tx);

/*
 * The hash a transaction's signature covers: keccak256 of the EIP-155
 * payload (legacy) or of type || rlp(fields) (types 1, 2).
 * Returns: false when the encoding fails (out of memory, too large).
 */
bool kh_eth_tx_signing_hash(uint8_t hash[32], const struct kh_eth_tx *tx);

/*
 * The signed transaction, ready for eth_sendRawTransaction.
 * In: sig: r (32) || s (32) || recovery id (0 or 1).
 * Out: len: its length.
 * Returns: a malloc'd encoding, or NULL (bad recovery id, out of memory,
 *          v overflow).
 */
uint8_t *kh_eth_tx_encode_signed(const struct kh_eth_tx *tx, const uint8_t sig[65], size_t *len);

#endif
