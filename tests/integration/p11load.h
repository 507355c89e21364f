/*
 * p11load: what the integration programs share when they drive a PKCS#11
 * module the way an application does: dlopen a module path, get its function
 * list, find slots, make a token, generate keys, and check signatures with
 * OpenSSL independently of the module.
 *
 * Every function that acts returns CKR_OK or the CK_RV that stopped it and
 * prints one line of context to stderr on failure; predicates return bool.
 */
#ifndef KH_TEST_P11LOAD_H
#define KH_TEST_P11LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keyhold.h"

/* The key algorithms the tests generate. */
typedef enum p11l_alg {
    P11L_P256,
    P11L_SECP256K1,
    P11L_ED25519,
} p11l_alg;

/* Name of a CK_RV ("CKR_PIN_INCORRECT"), or "0x%08lx" in a static buffer. */
const char *p11l_rv_str(CK_RV rv);
/* Short name of an algorithm ("P-256"). */
const char *p11l_alg_str(p11l_alg alg);

/*
 * dlopen path (RTLD_NOW | RTLD_LOCAL) and call its C_GetFunctionList.
 * Out: *dl (p11l_unload() it after C_Finalize), *fl.
 * Returns CKR_OK, CKR_GENERAL_ERROR when the library or symbol is missing,
 * or what C_GetFunctionList returned.
 */
CK_RV p11l_load(void **dl, CK_FUNCTION_LIST_PTR *fl, const char *path);

/*
 * dlclose a module loaded by p11l_load (after C_Finalize). Under
 * AddressSanitizer the module stays loaded, so that leak reports can name its
 * functions.
 */
void p11l_unload(void *dl);

/* The module path from KEYHOLD_MODULE, or NULL (with a message) when unset. */
const char *p11l_module_path(void);

/*
 * Find the slot whose token label (blank-padded in CK_TOKEN_INFO) equals label.
 * Out: *slot. Returns CKR_OK, CKR_SLOT_ID_INVALID when no token has that label.
 */
CK_RV p11l_find_slot(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot, const char *label);

/*
 * Initialise a new token on the free (uninitialised) slot: C_InitToken with
 * so_pin and label, SO login on an R/W session, C_InitPIN with user_pin,
 * logout. Out: *slot, the slot of the new token (found again by label, since
 * the module may give the token a slot of its own).
 */
CK_RV p11l_make_token(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot, const char *label,
                      const char *so_pin, const char *user_pin);

/* C_Login as CKU_USER; CKR_USER_ALREADY_LOGGED_IN counts as success. */
CK_RV p11l_login(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, const char *user_pin);

/*
 * Generate a token key pair of alg labelled label with CKA_ID id (idlen bytes):
 * CKM_EC_KEY_PAIR_GEN for P-256/secp256k1 (CKA_EC_PARAMS as a DER OID),
 * CKM_EC_EDWARDS_KEY_PAIR_GEN for Ed25519. The private key is private,
 * sensitive and can sign; the public key can verify.
 * Out: *pub, *priv.
 */
CK_RV p11l_gen_keypair(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv,
                       CK_SESSION_HANDLE s, p11l_alg alg, const char *label,
                       const uint8_t *id, size_t idlen);

/*
 * Find objects of class cls matching one attribute (type, value, len).
 * Out: handles (up to max), *n the number of objects found, which may exceed
 * max (the find keeps going so that the count is exact).
 */
CK_RV p11l_find(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *handles, size_t max, size_t *n,
                CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                const void *value, size_t len);

/* Find exactly one object of class cls labelled label; CKR_GENERAL_ERROR (with a message) otherwise. */
CK_RV p11l_find_one(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *out, CK_SESSION_HANDLE s,
                    CK_OBJECT_CLASS cls, const char *label);

/*
 * Read one byte-string attribute (length query, then value).
 * Out: *value (malloc'd, free()), *len.
 */
CK_RV p11l_get_attr(CK_FUNCTION_LIST_PTR fl, uint8_t **value, size_t *len,
                    CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type);

/*
 * Check a raw PKCS#11 signature with OpenSSL, independently of the module.
 * ec_point is the public key's CKA_EC_POINT (DER OCTET STRING, or the raw
 * point). ECDSA: sig is r||s over the 32-byte digest msg. Ed25519: sig is the
 * 64-byte EdDSA signature over msg. Returns true when the signature verifies.
 */
bool p11l_ossl_verify(p11l_alg alg, const uint8_t *ec_point, size_t ec_point_len,
                      const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len);

/* Make a fresh store directory (mkdtemp under $TMPDIR or /tmp). Out: buf. */
bool p11l_tmpdir(char *buf, size_t buflen, const char *tag);
/* Remove a directory tree (the test's store); quiet if it does not exist. */
void p11l_rmtree(const char *dir);

/* Monotonic clock in microseconds. */
double p11l_now_us(void);

#endif
