/*
 * Readers for the shared test vector files (../shared/testvectors), used by
 * the crypto-layer tests (test-crypto.c) and the PKCS#11-level tests
 * (test-vectors.c).
 *
 * Wycheproof: kh_vec_wycheproof() walks every group and case of one file,
 * calling back to build the group's key and to verify each case, and keeps
 * the verdict contract: "valid" must give CKR_OK, "invalid" a clean
 * rejection (CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE; anything else,
 * e.g. CKR_GENERAL_ERROR, fails), "acceptable" either (counted).
 *
 * kh_vec_wp_key() and kh_vec_wp_data() read a signature file's groups and
 * cases into what module/crypto.h takes (test-crypto.c, test-verifier.c).
 *
 * BIP-340: kh_vec_bip340_next() reads bip340_test_vectors.csv row by row.
 */
#ifndef KH_VECTORS_H
#define KH_VECTORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>

#include "crypto.h"
#include "pkcs11.h"

/* Member k of object o: a string, an object, or NULL when absent. */
const char *kh_vec_jstr(json_object *o, const char *k);
json_object *kh_vec_jobj(json_object *o, const char *k);

/* Hex to a fixed buffer; returns the length (0 and a test failure when the hex
 * is malformed or longer than cap). */
size_t kh_vec_unhex_to(uint8_t *out, size_t cap, const char *hex);

/* ---- Wycheproof ---- */

struct kh_vec_count {
    unsigned total, valid, valid_ok, invalid, invalid_rej, acceptable, acceptable_ok;
    unsigned keys_refused;   /* groups whose key was refused (all their cases invalid) */
};

enum kh_vec_group {
    KH_VEC_GROUP_OK,            /* key built: run the cases */
    KH_VEC_GROUP_BAD,           /* group not understood: a failure */
    KH_VEC_GROUP_KEY_REFUSED,   /* key refused: a failure unless every case is invalid */
};

struct kh_vec_wp_ops {
    /* Build the key and parameters of group g (the "testGroups" element). */
    enum kh_vec_group (*group)(void *ctx, json_object *g);
    /* Verify one case: the verdict (CKR_OK accepts). */
    CK_RV (*verify)(void *ctx, int tc_id, const uint8_t *msg, size_t msg_len,
                    const uint8_t *sig, size_t sig_len);
    /* Optional: release what group() built (called after a group's cases
     * whenever group() returned KH_VEC_GROUP_OK). */
    void (*group_end)(void *ctx);
};

/* Run every case of one Wycheproof file; failures are reported through the
 * harness, the counts printed ("# file: ...") and returned in *c (may be NULL). */
void kh_vec_wycheproof(const char *file, const struct kh_vec_wp_ops *ops, void *ctx,
                       struct kh_vec_count *c);

/* The Wycheproof signature files every verifier is checked against. */
struct kh_vec_wp_file {
    const char *name;      /* the case's last path element, e.g. "ecdsa-p256" */
    const char *file;      /* in ../shared/testvectors */
    kh_sigop op;
    kh_alg alg;
};

/* Register a case "<prefix>/<name>" per file of kh_vec_wp_files, run as fn(file). */
void kh_vec_wp_register(const char *prefix, void (*fn)(const void *file));

/* One group of a Wycheproof signature file as module/crypto.h takes it. */
struct kh_vec_wp_key {
    kh_sigop op;           /* ECDSA, EDDSA, RSA_PKCS (over a DigestInfo) or RSA_PSS */
    kh_pubkey pub;
    kh_hash hash;          /* the group's "sha" (KH_HASH_NONE for EdDSA) */
    kh_sigparams pss;      /* RSA_PSS: the group's hash, MGF1 hash and salt length */
};

/* Build *k from group g of a file signed with op over alg keys. Returns false
 * when the group is not understood (no key, no known hash, not MGF1). */
bool kh_vec_wp_key(struct kh_vec_wp_key *k, json_object *g, kh_sigop op, kh_alg alg);

/* The parameters to verify with k->op: &k->pss for RSA_PSS, NULL otherwise. */
const kh_sigparams *kh_vec_wp_params(const struct kh_vec_wp_key *k);

#define KH_VEC_WP_DATA_MAX (19 + 64)   /* a DigestInfo of SHA-512 */

/* The data k->op verifies for a case's message: the message itself (EdDSA),
 * its digest (ECDSA, PSS) or its DigestInfo (PKCS#1 v1.5), the last two
 * written to buf. Out: *len. */
const uint8_t *kh_vec_wp_data(const struct kh_vec_wp_key *k, uint8_t buf[KH_VEC_WP_DATA_MAX],
                              const uint8_t *msg, size_t msg_len, size_t *len);

/* ---- BIP-340 ---- */

/* One row of bip340_test_vectors.csv: index, secret key, public key, aux_rand,
 * message, signature, verification result, comment. */
struct kh_vec_bip340_row {
    char line[2048];
    const char *index, *comment;   /* point into line */
    uint8_t sk[32], pk[32], aux[32], sig[64];
    size_t sk_len;                 /* 0: no secret key */
    uint8_t msg[256];
    size_t msg_len;
    bool expect;                   /* verification result TRUE */
};

/* The next data row (header and blank lines skipped); false at end of file.
 * A malformed row is a test failure and is skipped. */
bool kh_vec_bip340_next(FILE *f, struct kh_vec_bip340_row *row);

#endif
