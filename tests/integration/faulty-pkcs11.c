/*
 * faulty-pkcs11.c - a test-only PKCS#11 module that wraps a real one and
 * misbehaves on demand, for keyhold-sign's failure tests. Every call goes
 * to the real module (KH_FAULTY_TARGET) except where the environment asks
 * for a fault:
 *
 *   KH_FAULTY_TARGET=PATH       the real module (required)
 *   KH_FAULTY_HANG=WHERE        never return from WHERE: "load" (the
 *                               library constructor, i.e. inside dlopen),
 *                               C_Initialize, C_Login, C_FindObjectsInit,
 *                               C_SignInit, C_Sign or C_Finalize
 *   KH_FAULTY_RV=FN:HEX         FN returns the CK_RV HEX instead of calling
 *                               the real module (e.g. C_Sign:0x30)
 *   KH_FAULTY_HIDE_MECH=HEX     the mechanism HEX does not exist: left out of
 *                               C_GetMechanismList, CKR_MECHANISM_INVALID
 *                               from C_GetMechanismInfo and C_SignInit
 *
 * Nothing here is part of keyhold; it only lets the tests show that a hung
 * or failing module gives the documented exit code within the deadline.
 */
#include "pkcs11.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KH_FAULTY_EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST *faulty_real;
static CK_FUNCTION_LIST faulty_list;

/* Blocks the calling thread for good. */
static void faulty_hang_forever(void)
{
    for (;;)
        sleep(1000);
}

/* Hangs when WHERE is the configured place. */
static void faulty_maybe_hang(const char *where)
{
    const char *h = getenv("KH_FAULTY_HANG");

    if (h && strcmp(h, where) == 0)
        faulty_hang_forever();
}

/* Returns true (and the configured value in *rv) when fn must fail. */
static bool faulty_forced_rv(const char *fn, CK_RV *rv)
{
    const char *f = getenv("KH_FAULTY_RV");
    size_t n = strlen(fn);

    if (!f || strncmp(f, fn, n) != 0 || f[n] != ':')
        return false;
    *rv = strtoul(f + n + 1, NULL, 16);
    return true;
}

/* Prologue of every wrapped function: hang, or a forced return value. */
static bool faulty_enter(const char *fn, CK_RV *rv)
{
    faulty_maybe_hang(fn);
    return faulty_forced_rv(fn, rv);
}

static bool faulty_hidden(CK_MECHANISM_TYPE m)
{
    const char *h = getenv("KH_FAULTY_HIDE_MECH");

    return h && strtoul(h, NULL, 16) == m;
}

__attribute__((constructor)) static void faulty_load(void)
{
    faulty_maybe_hang("load");
}

static CK_RV faulty_C_Initialize(CK_VOID_PTR args)
{
    CK_RV rv;

    if (faulty_enter("C_Initialize", &rv))
        return rv;
    return faulty_real->C_Initialize(args);
}

static CK_RV faulty_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;

    if (faulty_enter("C_Finalize", &rv))
        return rv;
    return faulty_real->C_Finalize(reserved);
}

static CK_RV faulty_C_Login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_RV rv;

    if (faulty_enter("C_Login", &rv))
        return rv;
    return faulty_real->C_Login(s, user, pin, len);
}

static CK_RV faulty_C_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_RV rv;

    if (faulty_enter("C_FindObjectsInit", &rv))
        return rv;
    return faulty_real->C_FindObjectsInit(s, t, n);
}

static CK_RV faulty_C_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    CK_RV rv;

    if (faulty_enter("C_SignInit", &rv))
        return rv;
    if (m && faulty_hidden(m->mechanism))
        return CKR_MECHANISM_INVALID;
    return faulty_real->C_SignInit(s, m, k);
}

static CK_RV faulty_C_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR sig,
                           CK_ULONG_PTR sl)
{
    CK_RV rv;

    if (faulty_enter("C_Sign", &rv))
        return rv;
    return faulty_real->C_Sign(s, d, dl, sig, sl);
}

static CK_RV faulty_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE m, CK_MECHANISM_INFO_PTR info)
{
    if (faulty_hidden(m))
        return CKR_MECHANISM_INVALID;
    return faulty_real->C_GetMechanismInfo(slot, m, info);
}

static CK_RV faulty_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR n)
{
    CK_MECHANISM_TYPE *all;
    CK_ULONG total = 0, kept = 0;
    CK_RV rv = faulty_real->C_GetMechanismList(slot, NULL, &total);

    if (rv != CKR_OK)
        return rv;
    all = calloc(total ? total : 1, sizeof *all);
    if (!all)
        return CKR_HOST_MEMORY;
    rv = faulty_real->C_GetMechanismList(slot, all, &total);
    for (CK_ULONG i = 0; rv == CKR_OK && i < total; i++) {
        if (faulty_hidden(all[i]))
            continue;
        if (list && kept < *n)
            list[kept] = all[i];
        kept++;
    }
    free(all);
    if (rv != CKR_OK)
        return rv;
    if (list && kept > *n) {
        *n = kept;
        return CKR_BUFFER_TOO_SMALL;
    }
    *n = kept;
    return CKR_OK;
}

KH_FAULTY_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    const char *target = getenv("KH_FAULTY_TARGET");
    CK_C_GetFunctionList get;
    void *dl;
    CK_RV rv;

    if (!out)
        return CKR_ARGUMENTS_BAD;
    if (!faulty_real) {
        if (!target) {
            fprintf(stderr, "faulty-pkcs11: KH_FAULTY_TARGET is not set\n");
            return CKR_GENERAL_ERROR;
        }
        dl = dlopen(target, RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
            fprintf(stderr, "faulty-pkcs11: %s\n", dlerror());
            return CKR_GENERAL_ERROR;
        }
        *(void **)&get = dlsym(dl, "C_GetFunctionList");
        if (!get)
            return CKR_GENERAL_ERROR;
        rv = get(&faulty_real);
        if (rv != CKR_OK)
            return rv;
        faulty_list = *faulty_real;
        faulty_list.C_GetFunctionList = C_GetFunctionList;
        faulty_list.C_Initialize = faulty_C_Initialize;
        faulty_list.C_Finalize = faulty_C_Finalize;
        faulty_list.C_Login = faulty_C_Login;
        faulty_list.C_FindObjectsInit = faulty_C_FindObjectsInit;
        faulty_list.C_SignInit = faulty_C_SignInit;
        faulty_list.C_Sign = faulty_C_Sign;
        faulty_list.C_GetMechanismInfo = faulty_C_GetMechanismInfo;
        faulty_list.C_GetMechanismList = faulty_C_GetMechanismList;
    }
    *out = &faulty_list;
    return CKR_OK;
}
