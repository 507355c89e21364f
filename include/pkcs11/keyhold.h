/*
 * keyhold.h - keyhold vendor extensions to PKCS #11.
 *
 * Every vendor value is CK*_VENDOR_DEFINED | KH_VENDOR_BASE | n, so it cannot
 * collide with a standard value and is recognisable as keyhold's.
 */
#ifndef KEYHOLD_KEYHOLD_H
#define KEYHOLD_KEYHOLD_H

#include "pkcs11.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Vendor base: the ASCII letters "KH" in bits 16..31 (0x4B 'K', 0x48 'H'). */
#define KH_VENDOR_BASE 0x4B480000UL

/*
 * The low bits n are allocated in ranges, per part of keyhold:
 * 0x01-0x0F core and vault, 0x10-0x1F tpm backend, 0x20-0x2F remote backend.
 */

/* Mechanisms */

/* BIP-340 Schnorr over a 32-byte message; optional parameter: 32-byte aux_rand. */
#define CKM_KH_BIP340_SCHNORR (CKM_VENDOR_DEFINED | KH_VENDOR_BASE | 0x01UL)
/* secp256k1 ECDSA over a 32-byte digest, low-S; output r||s||v (65 bytes, v = recovery id 0 or 1). */
#define CKM_KH_ECDSA_RECOVERABLE (CKM_VENDOR_DEFINED | KH_VENDOR_BASE | 0x02UL)

/* Attributes */

/* CK_ULONG: where the private key lives (one of CKV_KH_BACKEND_*). */
#define CKA_KH_BACKEND (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x01UL)
/* UTF-8 reference of a remote key. */
#define CKA_KH_REMOTE_REF (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x02UL)

/* Attributes of the tpm backend (private keys) */

/* Byte array: the key's TPM2B_PUBLIC in TPM wire format, as `tpm2_create -u`
 * writes it. With CKA_KH_TPM_PRIVATE in a C_CreateObject template it adopts
 * an existing TPM key; readable afterwards. */
#define CKA_KH_TPM_PUBLIC (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x10UL)
/* Byte array: the key's TPM2B_PRIVATE, as `tpm2_create -r` writes it.
 * C_CreateObject only; sealed under the token key, never returned. */
#define CKA_KH_TPM_PRIVATE (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x11UL)
/* Byte array: the adopted key's auth value (default: empty). C_CreateObject
 * only; sealed under the token key, never returned. */
#define CKA_KH_TPM_AUTH (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x12UL)
/* CK_ULONG: persistent handle of the storage key the adopted key was created
 * under (default: the configured primary, 0x81000001). */
#define CKA_KH_TPM_PARENT (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x13UL)
/* UTF-8: PCR selection ("sha256:7", "sha256:0,7", "sha1:7+sha256:7"); the key
 * generated with it signs only while those PCRs hold their values of that
 * moment. C_GenerateKeyPair (private key template); readable afterwards. */
#define CKA_KH_TPM_PCR_POLICY (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x14UL)

/* Values of CKA_KH_BACKEND */

/* The private key is held in keyhold's encrypted vault. */
#define CKV_KH_BACKEND_VAULT 1UL
/* The private key is held by a TPM. */
#define CKV_KH_BACKEND_TPM 2UL
/* The private key is held by a remote signer, named by CKA_KH_REMOTE_REF. */
#define CKV_KH_BACKEND_REMOTE 3UL

/* Return values */

/* The token store could not be read or written. */
#define CKR_KH_STORE_ERROR (CKR_VENDOR_DEFINED | KH_VENDOR_BASE | 0x01UL)

#ifdef __cplusplus
}
#endif

#endif /* KEYHOLD_KEYHOLD_H */
