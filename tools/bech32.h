/*
 * bech32.h - BIP-173 bech32 strings over 8-bit data, as NIP-19 uses for
 * npub (public key) and nsec (secret key).
 */
#ifndef KH_TOOLS_BECH32_H
#define KH_TOOLS_BECH32_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest string these functions produce or accept (BIP-173 limit is 90;
 * NIP-19 TLV entities can be longer, so allow more). */
#define KH_BECH32_MAX 1024

/*
 * Encodes data as a lowercase bech32 string with human-readable part hrp.
 *
 * Returns: true on success; false if hrp is empty or not lowercase
 *          printable ASCII, or out is too small (out is then "").
 * Out: out:    the NUL-terminated string.
 * In:  outlen: size of out.
 *      hrp:    the human-readable part, e.g. "npub".
 *      data:   the payload bytes; len: their number.
 */
bool kh_bech32_encode(char *out, size_t outlen, const char *hrp,
                      const uint8_t *data, size_t len);

/*
 * Decodes a bech32 string (all lower or all upper case) and checks its
 * checksum and padding.
 *
 * Returns: true on success; false on any format, checksum or size error
 *          (outputs are then cleared).
 * Out: hrp:     the human-readable part in lowercase, NUL-terminated.
 *      data:    the payload bytes; datalen: their number.
 * In:  hrplen:  size of hrp.
 *      datamax: size of data.
 *      str:     the string to decode.
 */
bool kh_bech32_decode(char *hrp, size_t hrplen, uint8_t *data, size_t *datalen,
                      size_t datamax, const char *str);

#endif
