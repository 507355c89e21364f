/*
 * The backend table: which ops table serves each CKV_KH_BACKEND_* value.
 * Tests swap an entry (kh_backend_override) to inject faults or run the
 * module's logic on a mock backend.
 */
#include "backend.h"

#include <stddef.h>

static const kh_backend_ops *const builtin[] = {
    &kh_backend_vault,
    &kh_backend_remote,
    &kh_backend_tpm,
};

static const kh_backend_ops *overrides[4];

const kh_backend_ops *kh_backend_get(CK_ULONG id)
{
    if (id < sizeof overrides / sizeof overrides[0] && overrides[id])
        return overrides[id];
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
        if (builtin[i]->id == id)
            return builtin[i];
    return NULL;
}

const kh_backend_ops *const *kh_backends(size_t *n)
{
    *n = sizeof builtin / sizeof builtin[0];
    return builtin;
}

void kh_backend_override(CK_ULONG id, const kh_backend_ops *ops)
{
    if (id < sizeof overrides / sizeof overrides[0])
        overrides[id] = ops;
}
