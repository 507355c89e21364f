/*
 * keccak.h - Keccak-256 as used by Ethereum (original Keccak padding 0x01,
 * not the FIPS 202 SHA3-256 padding 0x06).
 */
#ifndef KH_TOOLS_KECCAK_H
#define KH_TOOLS_KECCAK_H

#include <stddef.h>
#include <stdint.h>

#define KH_KECCAK256_LEN 32

/*
 * Computes Keccak-256 of a message in one call.
 *
 * Out: out: the 32-byte digest.
 * In:  data: the message (may be NULL when len is 0).
 *      len:  its length in bytes.
 */
void kh_keccak256(uint8_t out[KH_KECCAK256_LEN], const uint8_t *data, size_t len);

#endif
