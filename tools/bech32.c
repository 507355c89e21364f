/*
 * bech32.c - BIP-173 bech32 (not bech32m) encoding and decoding with the
 * 8-bit <-> 5-bit regrouping that NIP-19 applies to its payloads.
 */
#include "bech32.h"

#include <string.h>

static const char kh_bech32_charset[] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

static uint32_t kh_bech32_polymod_step(uint32_t pre)
{
    uint8_t b = (uint8_t)(pre >> 25);
    return ((pre & 0x1FFFFFFu) << 5) ^
           (-((b >> 0) & 1u) & 0x3b6a57b2u) ^
           (-((b >> 1) & 1u) & 0x26508e6du) ^
           (-((b >> 2) & 1u) & 0x1ea119fau) ^
           (-((b >> 3) & 1u) & 0x3d4233ddu) ^
           (-((b >> 4) & 1u) & 0x2a1462b3u);
}

static int kh_bech32_rev(char c)
{
    const char *p;
    if (c >= 'A' && c <= 'Z')
        c = (char)(c - 'A' + 'a');
    p = strchr(kh_bech32_charset, c);
    if (!p || c == '\0')
        return -1;
    return (int)(p - kh_bech32_charset);
}

/* Checksum state after the expanded hrp; hrp must be lowercase. */
static uint32_t kh_bech32_hrp_chk(const char *hrp, size_t hrplen)
{
    uint32_t chk = 1;
    for (size_t i = 0; i < hrplen; i++)
        chk = kh_bech32_polymod_step(chk) ^ ((uint8_t)hrp[i] >> 5);
    chk = kh_bech32_polymod_step(chk);
    for (size_t i = 0; i < hrplen; i++)
        chk = kh_bech32_polymod_step(chk) ^ ((uint8_t)hrp[i] & 0x1f);
    return chk;
}

bool kh_bech32_encode(char *out, size_t outlen, const char *hrp,
                      const uint8_t *data, size_t len)
{
    size_t hrplen = strlen(hrp);
    size_t n5 = (len * 8 + 4) / 5;
    size_t need = hrplen + 1 + n5 + 6 + 1;
    uint32_t chk, acc = 0;
    unsigned bits = 0;
    size_t pos;

    if (outlen)
        out[0] = '\0';
    if (hrplen == 0 || need > outlen || need > KH_BECH32_MAX + 1)
        return false;
    for (size_t i = 0; i < hrplen; i++)
        if (hrp[i] < 33 || hrp[i] > 126 || (hrp[i] >= 'A' && hrp[i] <= 'Z'))
            return false;

    chk = kh_bech32_hrp_chk(hrp, hrplen);
    memcpy(out, hrp, hrplen);
    pos = hrplen;
    out[pos++] = '1';
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | data[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            uint32_t v = (acc >> bits) & 0x1f;
            chk = kh_bech32_polymod_step(chk) ^ v;
            out[pos++] = kh_bech32_charset[v];
        }
    }
    if (bits) {
        uint32_t v = (acc << (5 - bits)) & 0x1f;
        chk = kh_bech32_polymod_step(chk) ^ v;
        out[pos++] = kh_bech32_charset[v];
    }
    for (int i = 0; i < 6; i++)
        chk = kh_bech32_polymod_step(chk);
    chk ^= 1;
    for (int i = 0; i < 6; i++)
        out[pos++] = kh_bech32_charset[(chk >> (5 * (5 - i))) & 0x1f];
    out[pos] = '\0';
    return true;
}

bool kh_bech32_decode(char *hrp, size_t hrplen, uint8_t *data, size_t *datalen,
                      size_t datamax, const char *str)
{
    size_t len = strlen(str), sep, n5;
    bool lower = false, upper = false;
    uint32_t chk, acc = 0;
    unsigned bits = 0;
    size_t outpos = 0;

    if (hrplen)
        hrp[0] = '\0';
    *datalen = 0;
    if (len < 8 || len > KH_BECH32_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = str[i];
        if (c < 33 || c > 126)
            return false;
        if (c >= 'a' && c <= 'z')
            lower = true;
        if (c >= 'A' && c <= 'Z')
            upper = true;
    }
    if (lower && upper)
        return false;
    {
        const char *p = strrchr(str, '1');
        if (!p)
            return false;
        sep = (size_t)(p - str);
    }
    if (sep == 0 || sep + 7 > len || sep + 1 > hrplen)
        return false;
    for (size_t i = 0; i < sep; i++) {
        char c = str[i];
        hrp[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    hrp[sep] = '\0';

    chk = kh_bech32_hrp_chk(hrp, sep);
    n5 = len - sep - 1;
    for (size_t i = 0; i < n5; i++) {
        int v = kh_bech32_rev(str[sep + 1 + i]);
        if (v < 0)
            goto fail;
        chk = kh_bech32_polymod_step(chk) ^ (uint32_t)v;
        if (i >= n5 - 6)
            continue;   /* checksum characters: not data */
        acc = ((acc << 5) | (uint32_t)v) & 0xfff;
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            if (outpos == datamax)
                goto fail;
            data[outpos++] = (uint8_t)(acc >> bits);
        }
    }
    if (chk != 1)
        goto fail;
    /* Leftover bits must be fewer than 5 and zero (BIP-173 convertbits). */
    if (bits >= 5 || (acc & ((1u << bits) - 1)) != 0)
        goto fail;
    *datalen = outpos;
    return true;

fail:
    if (hrplen)
        hrp[0] = '\0';
    memset(data, 0, datamax);
    *datalen = 0;
    return false;
}
