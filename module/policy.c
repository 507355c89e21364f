/*
 * The attribute-policy table: which attributes exist for which object class
 * and key type, their value shape, and who may set them when. object.c
 * consults it for C_CreateObject, C_GenerateKeyPair, C_SetAttributeValue and
 * C_GetAttributeValue; nothing else encodes these rules.
 */
#include "policy.h"

#include <string.h>

#define C_DATA (1u << 0)
#define C_PUB (1u << 1)
#define C_PRIV (1u << 2)
#define C_KEYS (C_PUB | C_PRIV)
#define C_ALL (C_DATA | C_KEYS)

#define K_ANY 0u
#define K_EC (1u << 0)      /* CKK_EC and CKK_EC_EDWARDS */
#define K_RSA (1u << 1)

static const kh_attr_rule rules[] = {
    { .type = CKA_CLASS,            .classes = C_ALL,  .kind = KH_AK_ULONG, .flags = KH_AF_CREATE },
    { .type = CKA_TOKEN,            .classes = C_ALL,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE },
    { .type = CKA_PRIVATE,          .classes = C_ALL,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE },
    { .type = CKA_MODIFIABLE,       .classes = C_ALL,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE },
    { .type = CKA_COPYABLE,         .classes = C_ALL,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE },
    { .type = CKA_DESTROYABLE,      .classes = C_ALL,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE },
    { .type = CKA_LABEL,            .classes = C_ALL,  .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_UNIQUE_ID,        .classes = C_ALL,  .kind = KH_AK_BYTES, .flags = 0 },
    { .type = CKA_APPLICATION,      .classes = C_DATA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_OBJECT_ID,        .classes = C_DATA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_VALUE,            .classes = C_DATA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_KEY_TYPE,         .classes = C_KEYS, .kind = KH_AK_ULONG, .flags = KH_AF_CREATE },
    { .type = CKA_ID,               .classes = C_KEYS, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_START_DATE,       .classes = C_KEYS, .kind = KH_AK_DATE,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_END_DATE,         .classes = C_KEYS, .kind = KH_AK_DATE,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_DERIVE,           .classes = C_KEYS, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_LOCAL,            .classes = C_KEYS, .kind = KH_AK_BOOL,  .flags = 0 },
    { .type = CKA_KEY_GEN_MECHANISM, .classes = C_KEYS, .kind = KH_AK_ULONG, .flags = 0 },
    { .type = CKA_ALLOWED_MECHANISMS, .classes = C_KEYS, .kind = KH_AK_MECHS, .flags = KH_AF_CREATE },
    { .type = CKA_SUBJECT,          .classes = C_KEYS, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_ENCRYPT,          .classes = C_PUB,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_VERIFY,           .classes = C_PUB,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_VERIFY_RECOVER,   .classes = C_PUB,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_WRAP,             .classes = C_PUB,  .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_TRUSTED,          .classes = C_PUB,  .kind = KH_AK_BOOL,  .flags = 0 },
    { .type = CKA_PUBLIC_KEY_INFO,  .classes = C_KEYS, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
    { .type = CKA_DECRYPT,          .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_SIGN,             .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_SIGN_RECOVER,     .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_UNWRAP,           .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY },
    { .type = CKA_SENSITIVE,        .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY | KH_AF_ONLY_TRUE },
    { .type = CKA_EXTRACTABLE,      .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = KH_AF_CREATE | KH_AF_MODIFY | KH_AF_ONLY_FALSE },
    { .type = CKA_ALWAYS_SENSITIVE, .classes = C_PRIV, .kind = KH_AK_BOOL,  .flags = 0 },
    { .type = CKA_NEVER_EXTRACTABLE, .classes = C_PRIV, .kind = KH_AK_BOOL, .flags = 0 },
    { .type = CKA_WRAP_WITH_TRUSTED, .classes = C_PRIV, .kind = KH_AK_BOOL, .flags = KH_AF_CREATE | KH_AF_ONLY_FALSE },
    { .type = CKA_ALWAYS_AUTHENTICATE, .classes = C_PRIV, .kind = KH_AK_BOOL, .flags = KH_AF_CREATE | KH_AF_ONLY_FALSE },
    { .type = CKA_EC_PARAMS,        .classes = C_KEYS, .keys = K_EC,  .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_GENERATE_PUB },
    { .type = CKA_EC_POINT,         .classes = C_KEYS, .keys = K_EC,  .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
    { .type = CKA_MODULUS,          .classes = C_KEYS, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
    { .type = CKA_MODULUS_BITS,     .classes = C_KEYS,  .keys = K_RSA, .kind = KH_AK_ULONG, .flags = KH_AF_CREATE | KH_AF_GENERATE_PUB },
    { .type = CKA_PUBLIC_EXPONENT,  .classes = C_KEYS, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_GENERATE_PUB },
    /* private values: accepted at creation, sealed, never stored in clear or returned */
    { .type = CKA_VALUE,            .classes = C_PRIV, .keys = K_EC,  .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_PRIVATE_EXPONENT, .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_PRIME_1,          .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_PRIME_2,          .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_EXPONENT_1,       .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_EXPONENT_2,       .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_COEFFICIENT,      .classes = C_PRIV, .keys = K_RSA, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_KH_BACKEND,       .classes = C_PRIV, .kind = KH_AK_ULONG, .flags = KH_AF_CREATE },
    { .type = CKA_KH_REMOTE_REF,    .classes = C_PRIV, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
    /* tpm backend: adopting existing TPM keys, PCR policies */
    { .type = CKA_KH_TPM_PUBLIC,    .classes = C_PRIV, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
    { .type = CKA_KH_TPM_PRIVATE,   .classes = C_PRIV, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_KH_TPM_AUTH,      .classes = C_PRIV, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE | KH_AF_SECRET },
    { .type = CKA_KH_TPM_PARENT,    .classes = C_PRIV, .kind = KH_AK_ULONG, .flags = KH_AF_CREATE },
    { .type = CKA_KH_TPM_PCR_POLICY, .classes = C_PRIV, .kind = KH_AK_BYTES, .flags = KH_AF_CREATE },
};

static unsigned class_bit(CK_OBJECT_CLASS cls)
{
    switch (cls) {
    case CKO_DATA: return C_DATA;
    case CKO_PUBLIC_KEY: return C_PUB;
    case CKO_PRIVATE_KEY: return C_PRIV;
    default: return 0;
    }
}

static unsigned key_bit(CK_KEY_TYPE kt)
{
    switch (kt) {
    case CKK_EC:
    case CKK_EC_EDWARDS: return K_EC;
    case CKK_RSA: return K_RSA;
    default: return 0;
    }
}

bool kh_policy_class_supported(CK_OBJECT_CLASS cls)
{
    return class_bit(cls) != 0;
}

const kh_attr_rule *kh_policy_rule(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_ATTRIBUTE_TYPE type)
{
    unsigned cb = class_bit(cls), kb = key_bit(kt);
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        const kh_attr_rule *r = &rules[i];
        if (r->type != type || !(r->classes & cb))
            continue;
        if (r->keys && !(r->keys & kb))
            continue;
        return r;
    }
    return NULL;
}

CK_RV kh_policy_check_value(const kh_attr_rule *r, const CK_ATTRIBUTE *a)
{
    if (!a->pValue && a->ulValueLen)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    switch (r->kind) {
    case KH_AK_BOOL:
        if (a->ulValueLen != sizeof(CK_BBOOL))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        {
            CK_BBOOL b = *(const CK_BBOOL *)a->pValue;
            if (b != CK_TRUE && b != CK_FALSE)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if ((r->flags & KH_AF_ONLY_TRUE) && b != CK_TRUE)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if ((r->flags & KH_AF_ONLY_FALSE) && b != CK_FALSE)
                return CKR_ATTRIBUTE_VALUE_INVALID;
        }
        return CKR_OK;
    case KH_AK_ULONG:
        return a->ulValueLen == sizeof(CK_ULONG) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_AK_MECHS:
        return a->ulValueLen % sizeof(CK_MECHANISM_TYPE) == 0 ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_AK_DATE:
        return (a->ulValueLen == 0 || a->ulValueLen == sizeof(CK_DATE)) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_AK_BYTES:
        return a->ulValueLen <= (1u << 20) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    }
    return CKR_ATTRIBUTE_VALUE_INVALID;
}

CK_RV kh_policy_check_template(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               enum kh_policy_use use)
{
    for (CK_ULONG i = 0; i < n; i++) {
        const kh_attr_rule *r = kh_policy_rule(cls, kt, tmpl[i].type);
        if (!r)
            return CKR_ATTRIBUTE_TYPE_INVALID;
        unsigned need;
        switch (use) {
        case KH_USE_CREATE:
            need = KH_AF_CREATE;
            break;
        case KH_USE_GENERATE:
            need = KH_AF_CREATE | KH_AF_GENERATE_PUB;
            if (r->flags & KH_AF_SECRET)
                return CKR_TEMPLATE_INCONSISTENT;
            break;
        default:
            need = KH_AF_MODIFY;
            break;
        }
        if (!(r->flags & need)) {
            /* the class and key type are fixed once given; repeating them is fine */
            if (use != KH_USE_SET && (tmpl[i].type == CKA_CLASS || tmpl[i].type == CKA_KEY_TYPE))
                continue;
            return CKR_ATTRIBUTE_READ_ONLY;
        }
        CK_RV rv = kh_policy_check_value(r, &tmpl[i]);
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;
}
