/* The attribute-policy table (policy.c). */
#ifndef KH_MODULE_POLICY_H
#define KH_MODULE_POLICY_H

#include <stdbool.h>

#include "keyhold.h"

enum kh_attr_kind { KH_AK_BOOL = 1, KH_AK_ULONG, KH_AK_BYTES, KH_AK_DATE, KH_AK_MECHS };

#define KH_AF_CREATE       (1u << 0) /* may be given to C_CreateObject / C_GenerateKeyPair */
#define KH_AF_MODIFY       (1u << 1) /* may be changed by C_SetAttributeValue */
#define KH_AF_SECRET       (1u << 2) /* private value: sealed, never stored in clear, never returned */
#define KH_AF_ONLY_TRUE    (1u << 3) /* only CK_TRUE accepted (CKA_SENSITIVE) */
#define KH_AF_ONLY_FALSE   (1u << 4) /* only CK_FALSE accepted (CKA_EXTRACTABLE) */
#define KH_AF_GENERATE_PUB (1u << 5) /* a key-generation parameter (public template) */

typedef struct kh_attr_rule {
    CK_ATTRIBUTE_TYPE type;
    unsigned classes;
    unsigned keys;      /* 0: every key type */
    enum kh_attr_kind kind;
    unsigned flags;
} kh_attr_rule;

enum kh_policy_use { KH_USE_CREATE, KH_USE_GENERATE, KH_USE_SET };

bool kh_policy_class_supported(CK_OBJECT_CLASS cls);
/* The rule for type on an object of cls/kt, or NULL (CKR_ATTRIBUTE_TYPE_INVALID). */
const kh_attr_rule *kh_policy_rule(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_ATTRIBUTE_TYPE type);
CK_RV kh_policy_check_value(const kh_attr_rule *r, const CK_ATTRIBUTE *a);
/* Check every attribute of a template for the given use. */
CK_RV kh_policy_check_template(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               enum kh_policy_use use);

#endif
