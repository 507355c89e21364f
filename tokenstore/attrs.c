/*
 * The attribute blob of an object row: a versioned TLV.
 *
 *   byte 0        KH_ATTRS_V1 (magic and version in one byte)
 *   then, per attribute:
 *     u64 LE      type
 *     u64 LE      value length
 *     bytes       value
 *
 * Values are stored as the caller gave them (CK_ULONG and CK_BBOOL in host
 * form), so a store is tied to the ABI it was written on (LP64 here).
 * Attributes whose length is CK_UNAVAILABLE_INFORMATION are not stored.
 * Decoding is strict: any truncation, trailing byte, duplicate type or
 * unknown version is CKR_KH_STORE_ERROR.
 */
#include "store.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define KH_ATTRS_V1 0xA1
#define KH_ATTRS_HDR 16 /* type + length */

static void kh_attrs_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t kh_attrs_get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Predicate: attributes whose value is an array of CK_ATTRIBUTE (pointers inside). */
static bool kh_attrs_is_template(CK_ATTRIBUTE_TYPE type)
{
    return type == CKA_WRAP_TEMPLATE || type == CKA_UNWRAP_TEMPLATE ||
           type == CKA_DERIVE_TEMPLATE;
}

CK_RV kh_attrs_encode(uint8_t **out, size_t *out_len, const CK_ATTRIBUTE *attrs, size_t n)
{
    size_t len = 1;
    uint8_t *buf, *p;

    if (!out || !out_len || (!attrs && n))
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    *out_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (attrs[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        if (kh_attrs_is_template(attrs[i].type))
            return CKR_ATTRIBUTE_TYPE_INVALID;
        if (!attrs[i].pValue && attrs[i].ulValueLen)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        for (size_t j = 0; j < i; j++) {
            if (attrs[j].type == attrs[i].type &&
                attrs[j].ulValueLen != CK_UNAVAILABLE_INFORMATION)
                return CKR_TEMPLATE_INCONSISTENT;
        }
        if (attrs[i].ulValueLen > SIZE_MAX - KH_ATTRS_HDR - len)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        len += KH_ATTRS_HDR + attrs[i].ulValueLen;
    }
    buf = malloc(len);
    if (!buf)
        return CKR_HOST_MEMORY;
    p = buf;
    *p++ = KH_ATTRS_V1;
    for (size_t i = 0; i < n; i++) {
        if (attrs[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        kh_attrs_put_u64(p, (uint64_t)attrs[i].type);
        kh_attrs_put_u64(p + 8, (uint64_t)attrs[i].ulValueLen);
        p += KH_ATTRS_HDR;
        if (attrs[i].ulValueLen)
            memcpy(p, attrs[i].pValue, attrs[i].ulValueLen);
        p += attrs[i].ulValueLen;
    }
    *out = buf;
    *out_len = len;
    return CKR_OK;
}

void kh_attrs_free(CK_ATTRIBUTE *attrs, size_t n)
{
    if (!attrs)
        return;
    for (size_t i = 0; i < n; i++) {
        kh_wipe(attrs[i].pValue, attrs[i].pValue ? attrs[i].ulValueLen : 0);
        free(attrs[i].pValue);
    }
    free(attrs);
}

/* Walk the blob once to validate it and count entries. */
static CK_RV kh_attrs_scan(size_t *count, const uint8_t *blob, size_t len)
{
    size_t off = 1, n = 0;

    if (len < 1 || blob[0] != KH_ATTRS_V1)
        return CKR_KH_STORE_ERROR;
    while (off < len) {
        if (len - off < KH_ATTRS_HDR)
            return CKR_KH_STORE_ERROR;
        uint64_t type = kh_attrs_get_u64(blob + off);
        uint64_t vlen = kh_attrs_get_u64(blob + off + 8);
        off += KH_ATTRS_HDR;
#if ULONG_MAX < UINT64_MAX
        if (type > ULONG_MAX) /* CK_ATTRIBUTE_TYPE is an unsigned long */
            return CKR_KH_STORE_ERROR;
#else
        (void)type;
#endif
        if (vlen > len - off || vlen >= (uint64_t)CK_UNAVAILABLE_INFORMATION)
            return CKR_KH_STORE_ERROR;
        off += (size_t)vlen;
        n++;
    }
    *count = n;
    return CKR_OK;
}

CK_RV kh_attrs_decode(CK_ATTRIBUTE **out, size_t *n, const uint8_t *blob, size_t len)
{
    CK_ATTRIBUTE *attrs = NULL;
    size_t count = 0, off = 1, i;
    CK_RV rv;

    if (!out || !n || (!blob && len))
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    *n = 0;
    rv = kh_attrs_scan(&count, blob, len);
    if (rv != CKR_OK)
        return rv;
    attrs = calloc(count ? count : 1, sizeof *attrs);
    if (!attrs)
        return CKR_HOST_MEMORY;
    for (i = 0; i < count; i++) {
        CK_ATTRIBUTE_TYPE type = (CK_ATTRIBUTE_TYPE)kh_attrs_get_u64(blob + off);
        size_t vlen = (size_t)kh_attrs_get_u64(blob + off + 8);
        off += KH_ATTRS_HDR;
        for (size_t j = 0; j < i; j++) {
            if (attrs[j].type == type) {
                rv = CKR_KH_STORE_ERROR;
                goto out_free;
            }
        }
        attrs[i].type = type;
        attrs[i].ulValueLen = (CK_ULONG)vlen;
        if (vlen) {
            attrs[i].pValue = malloc(vlen);
            if (!attrs[i].pValue) {
                rv = CKR_HOST_MEMORY;
                goto out_free;
            }
            memcpy(attrs[i].pValue, blob + off, vlen);
        }
        off += vlen;
    }
    *out = attrs;
    *n = count;
    return CKR_OK;

out_free:
    kh_attrs_free(attrs, i);
    return rv;
}
