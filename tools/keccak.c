/*
 * keccak.c - Keccak-f[1600] and the Keccak-256 sponge (rate 136 bytes,
 * domain byte 0x01), as Ethereum uses for addresses.
 */
#include "keccak.h"

#include <string.h>

#define KH_KECCAK_RATE 136

static const uint64_t kh_keccak_rc[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL,
    0x8000000080008000ULL, 0x000000000000808bULL, 0x0000000080000001ULL,
    0x8000000080008081ULL, 0x8000000000008009ULL, 0x000000000000008aULL,
    0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL,
    0x8000000000008003ULL, 0x8000000000008002ULL, 0x8000000000000080ULL,
    0x000000000000800aULL, 0x800000008000000aULL, 0x8000000080008081ULL,
    0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

static const unsigned kh_keccak_rotc[24] = {
    1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14,
    27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44,
};

static const unsigned kh_keccak_piln[24] = {
    10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4,
    15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1,
};

static uint64_t kh_keccak_rotl(uint64_t x, unsigned n)
{
    return (x << n) | (x >> (64 - n));
}

static void kh_keccak_f1600(uint64_t st[25])
{
    uint64_t bc[5], t;

    for (int round = 0; round < 24; round++) {
        /* theta */
        for (int i = 0; i < 5; i++)
            bc[i] = st[i] ^ st[i + 5] ^ st[i + 10] ^ st[i + 15] ^ st[i + 20];
        for (int i = 0; i < 5; i++) {
            t = bc[(i + 4) % 5] ^ kh_keccak_rotl(bc[(i + 1) % 5], 1);
            for (int j = 0; j < 25; j += 5)
                st[j + i] ^= t;
        }
        /* rho and pi */
        t = st[1];
        for (int i = 0; i < 24; i++) {
            unsigned j = kh_keccak_piln[i];
            bc[0] = st[j];
            st[j] = kh_keccak_rotl(t, kh_keccak_rotc[i]);
            t = bc[0];
        }
        /* chi */
        for (int j = 0; j < 25; j += 5) {
            for (int i = 0; i < 5; i++)
                bc[i] = st[j + i];
            for (int i = 0; i < 5; i++)
                st[j + i] ^= (~bc[(i + 1) % 5]) & bc[(i + 2) % 5];
        }
        /* iota */
        st[0] ^= kh_keccak_rc[round];
    }
}

/* XORs one rate-sized block (little-endian lanes) into the state. */
static void kh_keccak_absorb(uint64_t st[25], const uint8_t block[KH_KECCAK_RATE])
{
    for (size_t i = 0; i < KH_KECCAK_RATE / 8; i++) {
        uint64_t lane = 0;
        for (size_t b = 0; b < 8; b++)
            lane |= (uint64_t)block[8 * i + b] << (8 * b);
        st[i] ^= lane;
    }
    kh_keccak_f1600(st);
}

void kh_keccak256(uint8_t out[KH_KECCAK256_LEN], const uint8_t *data, size_t len)
{
    uint64_t st[25];
    uint8_t block[KH_KECCAK_RATE];

    memset(st, 0, sizeof st);
    while (len >= KH_KECCAK_RATE) {
        kh_keccak_absorb(st, data);
        data += KH_KECCAK_RATE;
        len -= KH_KECCAK_RATE;
    }
    memset(block, 0, sizeof block);
    if (len)
        memcpy(block, data, len);
    block[len] ^= 0x01;
    block[KH_KECCAK_RATE - 1] ^= 0x80;
    kh_keccak_absorb(st, block);

    for (size_t i = 0; i < KH_KECCAK256_LEN; i++)
        out[i] = (uint8_t)(st[i / 8] >> (8 * (i % 8)));
}
