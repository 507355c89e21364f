/*
 * The process's one TPM connection (see tpm.h for the locking rules).
 *
 * Connecting: the TCTI comes from the configuration (`tcti`, KEYHOLD_TCTI;
 * default device:/dev/tpmrm0) through Tss2_TctiLdr, on first use: nothing
 * is touched at C_Initialize. swtpm is the exception: tpm2-tss 3.2's swtpm
 * TCTI waits for swtpm without a deadline, so "swtpm:..." configurations use
 * keyhold's own swtpm TCTI (tcti.c), which has one. Every command runs asynchronously and is
 * awaited here against a deadline (tpm_timeout), because the synchronous
 * ESYS calls retry a silent TPM forever; a command that misses its deadline
 * or loses its transport drops the whole connection (ESYS context and
 * TCTI), and the next call connects again. Objects loaded before are then
 * forgotten, not flushed: after a TPM restart their handles mean nothing.
 *
 * Parents: keys are created under the persistent primary (tpm_primary,
 * default 0x81000001) when it holds a storage key, else under a primary
 * made from the TCG SRK template, which is the same key after every reboot.
 * Blobs remember their parent's Name, so a key is always loaded under the
 * parent it was made under, or not at all.
 *
 * Loaded objects: an LRU of at most `limit` objects (tpm_handles, else
 * TPM_PT_HR_TRANSIENT_AVAIL when first needed minus one slot kept free for the
 * loads themselves). Without a resource manager, other processes share the
 * TPM's few slots: on TPM_RC_OBJECT_MEMORY we evict our own least recently
 * used object and lower our limit, and for the next KH_TPM_SHARED_MS we keep
 * nothing loaded between operations (so the others find room too); with
 * nothing of ours left we wait a little for others to finish, then flush one
 * transient object that is not ours (a leftover of a tool, or another
 * process's key, which that process reloads). A handle of ours that someone else flushed (or that now holds
 * another object) shows up as a handle or auth error, or as a signature
 * that does not verify (keys.c): the object is reloaded.
 *
 * Fork: the child forgets the parent's connection without sending anything
 * (the parent's objects stay loaded) and connects afresh on first use.
 * C_Finalize flushes every object this process loaded and disconnects.
 */
#include "tpm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tss2/tss2_rc.h>

/* Poll granularity of a receive: the TCTI returns TRY_AGAIN this often, so
 * the deadline is checked. */
#define KH_TPM_POLL_MS 100
/* Longest we keep retrying TPM_RC_OBJECT_MEMORY (waits, evictions, flushes). */
#define KH_TPM_ROOM_TRIES 40
/* Waits for other processes before a foreign object is flushed. */
#define KH_TPM_GRACE_TRIES 8
/* Most objects we track; tpm_handles is capped to it. */
#define KH_TPM_MAX_OBJS 64
/* After the TPM was found full, this long (ms) the process keeps nothing
 * loaded between operations, so that other processes sharing the TPM find
 * room without flushing ours. */
#define KH_TPM_SHARED_MS 5000
/* Persistent parents remembered per connection (the configured one first). */
#define KH_TPM_MAX_PERSISTENT 4

typedef struct tpm_obj {
    ESYS_TR tr;
    TPM2_HANDLE handle;
    uint8_t id[32];             /* SHA-256 of the TPM2B_PRIVATE; zero for the SRK */
    bool srk;
    uint64_t used;
} tpm_obj;

typedef struct tpm_persistent {
    uint32_t handle;
    bool checked, ok;
    ESYS_TR tr;
    TPM2B_NAME name;
} tpm_persistent;

static struct {
    kh_mutex *lock;
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *esys;
    bool broken;
    bool timed_out;             /* the connection was dropped at a deadline */
    bool caps_read;
    kh_tpm_caps caps;
    unsigned limit;             /* objects we keep loaded (0: not computed yet) */
    tpm_persistent pers[KH_TPM_MAX_PERSISTENT];
    size_t npers;
    bool srk_known;
    TPM2B_NAME srk_name;
    tpm_obj objs[KH_TPM_MAX_OBJS];
    size_t nobjs;
    uint64_t clock;
    double contended_ms;        /* when TPM_RC_OBJECT_MEMORY was last seen (0: never) */
} T;

/* A forked child's inherited connection: kept reachable, never used. */
static struct { TSS2_TCTI_CONTEXT *tcti; ESYS_CONTEXT *esys; kh_mutex *lock; } kh_tpm_abandoned[8];
static size_t kh_tpm_nabandoned;

/* ---- the translator ---- */

static const char *tpm_rc_text(TSS2_RC rc)
{
    const char *s = Tss2_RC_Decode(rc);
    return s ? s : "?";
}

CK_RV kh_tpm_rv(TSS2_RC rc, kh_tpm_use use, const char *what)
{
    if (rc == TSS2_RC_SUCCESS)
        return CKR_OK;
    TSS2_RC base = kh_tpm_rc_base(rc);
    CK_RV rv;
    enum kh_log_level lvl = KH_LOG_ERROR;

    if (rc == KH_TPM_RC_NO_PARENT) {
        kh_log(KH_LOG_ERROR, "tpm: %s: the parent key of this object is not on this TPM "
               "(made on another TPM, or the TPM was cleared)", what);
        return CKR_FUNCTION_FAILED;
    }
    if (rc == KH_TPM_RC_STALE) {
        kh_log(KH_LOG_ERROR, "tpm: %s: the TPM signed with another key than the object's", what);
        return CKR_DEVICE_ERROR;
    }
    switch (rc & TSS2_RC_LAYER_MASK) {
    case TSS2_TPM_RC_LAYER:
        switch (base) {
        case TPM2_RC_LOCKOUT:
            rv = CKR_PIN_LOCKED;
            lvl = KH_LOG_WARN;
            break;
        case TPM2_RC_AUTH_FAIL:
        case TPM2_RC_BAD_AUTH:
            rv = use == KH_TPM_USE_PIN ? CKR_PIN_INCORRECT
                : use == KH_TPM_USE_IMPORT ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_DEVICE_ERROR;
            lvl = use == KH_TPM_USE_PIN ? KH_LOG_INFO : KH_LOG_ERROR;
            break;
        case TPM2_RC_POLICY_FAIL:
        case TPM2_RC_PCR_CHANGED:
            /* a key's PCR policy; a PIN-seal object's policy fails only when
             * another object keeps taking its handle */
            rv = use == KH_TPM_USE_PIN ? CKR_DEVICE_ERROR : CKR_KEY_FUNCTION_NOT_PERMITTED;
            lvl = KH_LOG_WARN;
            break;
        case TPM2_RC_OBJECT_MEMORY:
        case TPM2_RC_SESSION_MEMORY:
        case TPM2_RC_MEMORY:
        case TPM2_RC_NV_SPACE:
            rv = CKR_DEVICE_MEMORY;
            break;
        case TPM2_RC_CURVE:
            rv = CKR_CURVE_NOT_SUPPORTED;
            break;
        case TPM2_RC_KEY_SIZE:
            rv = CKR_KEY_SIZE_RANGE;
            break;
        case TPM2_RC_HASH:
        case TPM2_RC_SCHEME:
        case TPM2_RC_ASYMMETRIC:
        case TPM2_RC_SYMMETRIC:
            rv = CKR_MECHANISM_INVALID;
            break;
        case TPM2_RC_SIZE:
            rv = use == KH_TPM_USE_IMPORT ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_DATA_LEN_RANGE;
            break;
        case TPM2_RC_INTEGRITY:
        case TPM2_RC_BINDING:
        case TPM2_RC_KEY:
        case TPM2_RC_TYPE:
        case TPM2_RC_ATTRIBUTES:
        case TPM2_RC_VALUE:
        case TPM2_RC_SENSITIVE:
        case TPM2_RC_AUTH_UNAVAILABLE:
            rv = use == KH_TPM_USE_IMPORT ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_FUNCTION_FAILED;
            break;
        default:
            rv = CKR_DEVICE_ERROR; /* RETRY, TESTING, NV_RATE, INITIALIZE, FAILURE, ... */
            break;
        }
        break;
    case TSS2_TCTI_RC_LAYER:
        rv = CKR_DEVICE_ERROR;
        break;
    default: /* ESYS, SYS, MU, TCTI loader */
        switch (rc & ~TSS2_RC_LAYER_MASK) {
        case TSS2_BASE_RC_MEMORY:
            rv = CKR_HOST_MEMORY;
            break;
        case TSS2_BASE_RC_IO_ERROR:
        case TSS2_BASE_RC_NO_CONNECTION:
        case TSS2_BASE_RC_TRY_AGAIN:
        case TSS2_BASE_RC_MALFORMED_RESPONSE:
        case TSS2_BASE_RC_INSUFFICIENT_RESPONSE:
        case TSS2_BASE_RC_NOT_IMPLEMENTED:
            rv = CKR_DEVICE_ERROR;
            break;
        case TSS2_BASE_RC_BAD_SIZE:
        case TSS2_BASE_RC_BAD_VALUE:
        case TSS2_BASE_RC_INSUFFICIENT_BUFFER:
            rv = use == KH_TPM_USE_IMPORT ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_GENERAL_ERROR;
            break;
        default:
            rv = CKR_DEVICE_ERROR;
            break;
        }
        break;
    }
    kh_log(lvl, "tpm: %s: 0x%08x (%s)", what, (unsigned)rc, tpm_rc_text(rc));
    return rv;
}

/* ---- response-code classes ---- */

/* The transport failed: the connection is unusable. */
static bool rc_transport(TSS2_RC rc)
{
    TSS2_RC layer = rc & TSS2_RC_LAYER_MASK, b = rc & ~TSS2_RC_LAYER_MASK;
    if (rc == TSS2_RC_SUCCESS || layer == TSS2_TPM_RC_LAYER || layer == TSS2_RC_LAYER(0x4B))
        return false;
    if (layer == TSS2_TCTI_RC_LAYER)
        return b != TSS2_BASE_RC_TRY_AGAIN;
    return b == TSS2_BASE_RC_IO_ERROR || b == TSS2_BASE_RC_NO_CONNECTION ||
           b == TSS2_BASE_RC_MALFORMED_RESPONSE || b == TSS2_BASE_RC_INSUFFICIENT_RESPONSE ||
           b == TSS2_BASE_RC_BAD_SEQUENCE;
}

bool kh_tpm_rc_stale(TSS2_RC rc)
{
    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER)
        return false;
    TSS2_RC base = kh_tpm_rc_base(rc);
    if (base == TPM2_RC_REFERENCE_H0 || base == TPM2_RC_HANDLE || base == TPM2_RC_BAD_AUTH ||
        base == TPM2_RC_AUTH_FAIL || base == TPM2_RC_AUTH_UNAVAILABLE)
        return true;
    /* any other format-one error about handle 1 (not a parameter, not a session) */
    return (rc & TPM2_RC_FMT1) && !(rc & TPM2_RC_P) && !(rc & TPM2_RC_S) &&
           (rc & 0xF00) == TPM2_RC_1;
}

/* ---- connection ---- */

unsigned kh_tpm_timeout_ms(void)
{
    return kh_mod.cfg.tpm_timeout_ms ? kh_mod.cfg.tpm_timeout_ms : 10000;
}

static const char *tcti_conf(void)
{
    return kh_mod.cfg.tcti[0] ? kh_mod.cfg.tcti : KH_TPM_TCTI_DEFAULT;
}

static void objs_forget_locked(void)
{
    T.nobjs = 0;
    T.npers = 0;
    T.srk_known = false;
    T.caps_read = false;
}

/* Drop the connection (transport lost or deadline missed). Nothing is sent. */
static void conn_break_locked(void)
{
    if (T.esys)
        Esys_Finalize(&T.esys);
    kh_tpm_tcti_close(T.tcti);
    T.tcti = NULL;
    T.esys = NULL;
    T.broken = true;
    objs_forget_locked();
}


static CK_RV conn_open_locked(void)
{
    TSS2_RC rc = kh_tpm_tcti_open(&T.tcti, tcti_conf(), kh_tpm_timeout_ms());
    if (rc != TSS2_RC_SUCCESS) {
        kh_log(KH_LOG_ERROR, "tpm: cannot open TCTI '%s'", tcti_conf());
        return kh_tpm_rv(rc, KH_TPM_USE_OTHER, "Tss2_TctiLdr_Initialize");
    }
    rc = Esys_Initialize(&T.esys, T.tcti, NULL);
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_SetTimeout(T.esys, KH_TPM_POLL_MS);
    if (rc != TSS2_RC_SUCCESS) {
        conn_break_locked();
        return kh_tpm_rv(rc, KH_TPM_USE_OTHER, "Esys_Initialize");
    }
    T.broken = false;
    T.timed_out = false;
    objs_forget_locked();
    kh_log(KH_LOG_DEBUG, "tpm: connected through '%s'", tcti_conf());
    return CKR_OK;
}

CK_RV kh_tpm_lock(void)
{
    if (!T.lock)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    kh_mutex_lock(T.lock);
    if (!T.esys) {
        CK_RV rv = conn_open_locked();
        if (rv != CKR_OK) {
            kh_mutex_unlock(T.lock);
            return rv;
        }
    }
    return CKR_OK;
}

/* Shared without a resource manager: another process needed the slots lately. */
static bool shared_locked(void)
{
    return T.contended_ms > 0 && kh_tpm_now_ms() - T.contended_ms < KH_TPM_SHARED_MS;
}

void kh_tpm_unlock(void)
{
    /* A TPM shared with other processes: leave nothing loaded between operations. */
    while (T.esys && T.nobjs > 0 && shared_locked())
        kh_tpm_flush_locked(T.objs[T.nobjs - 1].tr);
    kh_mutex_unlock(T.lock);
}

ESYS_CONTEXT *kh_tpm_esys_locked(void)
{
    return T.esys;
}

bool kh_tpm_broken_locked(void)
{
    return T.esys == NULL;
}

bool kh_tpm_retry_locked(void)
{
    return T.esys == NULL && !T.timed_out;
}

CK_RV kh_tpm_reconnect_locked(void)
{
    if (T.esys)
        return CKR_OK;
    return conn_open_locked();
}

TSS2_RC kh_tpm_run_locked(TSS2_RC async_rc, kh_tpm_fin *fin, void *arg, unsigned timeout_ms, const char *what)
{
    bool late = false;
    TSS2_RC rc = async_rc;
    if (rc == TSS2_RC_SUCCESS)
        rc = kh_tpm_await(T.esys, &late, fin, arg, timeout_ms);
    if (late) {
        kh_log(KH_LOG_ERROR, "tpm: %s: no answer within %u ms; dropping the connection", what, timeout_ms);
        conn_break_locked();
        T.timed_out = true;
    } else if (rc_transport(rc)) {
        conn_break_locked();
    }
    return rc;
}

/* ---- command finishers used only here (the shared ones: tpmutil.h) ---- */

static TSS2_RC fin_load(ESYS_CONTEXT *e, void *arg)
{
    return Esys_Load_Finish(e, arg);
}

static TSS2_RC fin_testparms(ESYS_CONTEXT *e, void *arg)
{
    (void)arg;
    return Esys_TestParms_Finish(e);
}

/* GetCapability of one kind. Out: *data (Esys_Free). */
static TSS2_RC get_cap_locked(TPMS_CAPABILITY_DATA **data, TPM2_CAP cap, UINT32 prop, UINT32 count)
{
    kh_tpm_cap_out a = { 0 };
    TSS2_RC rc = kh_tpm_run_locked(Esys_GetCapability_Async(T.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                                     cap, prop, count),
                            kh_tpm_fin_cap, &a, kh_tpm_timeout_ms(), "TPM2_GetCapability");
    *data = a.data;
    return rc;
}

static bool rsa_size_ok_locked(UINT16 bits)
{
    TPMT_PUBLIC_PARMS p;
    memset(&p, 0, sizeof p);
    p.type = TPM2_ALG_RSA;
    p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    p.parameters.rsaDetail.keyBits = bits;
    return kh_tpm_run_locked(Esys_TestParms_Async(T.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &p),
                      fin_testparms, NULL, kh_tpm_timeout_ms(), "TPM2_TestParms") == TSS2_RC_SUCCESS;
}

CK_RV kh_tpm_caps_locked(kh_tpm_caps *caps)
{
    if (T.caps_read) {
        *caps = T.caps;
        return CKR_OK;
    }
    kh_tpm_caps c;
    TPMS_CAPABILITY_DATA *d = NULL;
    memset(&c, 0, sizeof c);
    TSS2_RC rc = get_cap_locked(&d, TPM2_CAP_ALGS, TPM2_ALG_FIRST, TPM2_MAX_CAP_ALGS);
    if (rc == TSS2_RC_SUCCESS) {
        for (UINT32 i = 0; i < d->data.algorithms.count; i++) {
            switch (d->data.algorithms.algProperties[i].alg) {
            case TPM2_ALG_ECDSA: c.ecdsa = true; break;
            case TPM2_ALG_RSASSA: c.rsassa = true; break;
            case TPM2_ALG_RSAPSS: c.rsapss = true; break;
            case TPM2_ALG_SHA1: c.sha1 = true; break;
            case TPM2_ALG_SHA256: c.sha256 = true; break;
            case TPM2_ALG_SHA384: c.sha384 = true; break;
            case TPM2_ALG_SHA512: c.sha512 = true; break;
            default: break;
            }
        }
    }
    Esys_Free(d);
    d = NULL;
    if (rc == TSS2_RC_SUCCESS)
        rc = get_cap_locked(&d, TPM2_CAP_ECC_CURVES, TPM2_ECC_NONE, TPM2_MAX_ECC_CURVES);
    if (rc == TSS2_RC_SUCCESS) {
        for (UINT32 i = 0; i < d->data.eccCurves.count; i++) {
            if (d->data.eccCurves.eccCurves[i] == TPM2_ECC_NIST_P256)
                c.p256 = true;
            else if (d->data.eccCurves.eccCurves[i] == TPM2_ECC_NIST_P384)
                c.p384 = true;
        }
    }
    Esys_Free(d);
    if (rc != TSS2_RC_SUCCESS)
        return kh_tpm_rv(rc, KH_TPM_USE_OTHER, "TPM2_GetCapability");
    c.rsa2048 = rsa_size_ok_locked(2048);
    c.rsa3072 = T.esys && rsa_size_ok_locked(3072);
    c.rsa4096 = T.esys && rsa_size_ok_locked(4096);
    if (!T.esys)
        return CKR_DEVICE_ERROR;
    T.caps = c;
    T.caps_read = true;
    *caps = c;
    return CKR_OK;
}

CK_RV kh_tpm_lockout_locked(bool *locked)
{
    TPMS_CAPABILITY_DATA *d = NULL;
    TSS2_RC rc = get_cap_locked(&d, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_PERMANENT, 1);
    CK_RV rv = CKR_DEVICE_ERROR;
    if (rc == TSS2_RC_SUCCESS && d->data.tpmProperties.count == 1 &&
        d->data.tpmProperties.tpmProperty[0].property == TPM2_PT_PERMANENT) {
        *locked = (d->data.tpmProperties.tpmProperty[0].value & TPMA_PERMANENT_INLOCKOUT) != 0;
        rv = CKR_OK;
    } else if (rc != TSS2_RC_SUCCESS) {
        rv = kh_tpm_rv(rc, KH_TPM_USE_OTHER, "TPM2_GetCapability");
    }
    Esys_Free(d);
    return rv;
}

/* Objects we keep loaded: tpm_handles, else TPM_PT_HR_TRANSIENT_AVAIL - 1
 * (one slot stays free for the loads and creates themselves). Only that
 * property is read: this runs before the first load of every process. */
static unsigned limit_locked(void)
{
    if (T.limit)
        return T.limit;
    unsigned lim = kh_mod.cfg.tpm_handles;
    if (!lim) {
        TPMS_CAPABILITY_DATA *d = NULL;
        lim = 2;
        if (get_cap_locked(&d, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_HR_TRANSIENT_AVAIL, 1) == TSS2_RC_SUCCESS &&
            d->data.tpmProperties.count == 1 &&
            d->data.tpmProperties.tpmProperty[0].property == TPM2_PT_HR_TRANSIENT_AVAIL &&
            d->data.tpmProperties.tpmProperty[0].value > 0) {
            UINT32 avail = d->data.tpmProperties.tpmProperty[0].value;
            lim = avail > 1 ? avail - 1 : 1;
        }
        Esys_Free(d);
    }
    if (lim > KH_TPM_MAX_OBJS)
        lim = KH_TPM_MAX_OBJS;
    T.limit = lim;
    return lim;
}

/* ---- the LRU ---- */

static tpm_obj *obj_find_tr(ESYS_TR tr)
{
    for (size_t i = 0; i < T.nobjs; i++)
        if (T.objs[i].tr == tr)
            return &T.objs[i];
    return NULL;
}

static void obj_remove(tpm_obj *o)
{
    size_t i = (size_t)(o - T.objs);
    T.objs[i] = T.objs[--T.nobjs];
}

static TSS2_RC obj_add_locked(ESYS_TR tr, const uint8_t id[32], bool srk)
{
    if (T.nobjs == KH_TPM_MAX_OBJS) {
        /* cannot happen: make_room keeps nobjs under limit <= KH_TPM_MAX_OBJS */
        kh_tpm_flush_locked(tr);
        return TSS2_ESYS_RC_MEMORY;
    }
    tpm_obj *o = &T.objs[T.nobjs++];
    memset(o, 0, sizeof *o);
    o->tr = tr;
    o->srk = srk;
    if (id)
        memcpy(o->id, id, 32);
    o->used = ++T.clock;
    if (Esys_TR_GetTpmHandle(T.esys, tr, &o->handle) != TSS2_RC_SUCCESS)
        o->handle = 0;
    return TSS2_RC_SUCCESS;
}

void kh_tpm_flush_locked(ESYS_TR tr)
{
    tpm_obj *o = obj_find_tr(tr);
    if (o)
        obj_remove(o);
    if (!T.esys || tr == ESYS_TR_NONE)
        return;
    TSS2_RC rc = kh_tpm_run_locked(Esys_FlushContext_Async(T.esys, tr), kh_tpm_fin_flush, NULL, kh_tpm_timeout_ms(),
                            "TPM2_FlushContext");
    if (rc != TSS2_RC_SUCCESS && T.esys) {
        kh_log(KH_LOG_DEBUG, "tpm: flush: 0x%08x (%s)", (unsigned)rc, tpm_rc_text(rc));
        Esys_TR_Close(T.esys, &tr);
    }
}

void kh_tpm_forget_locked(const TPM2B_PRIVATE *priv)
{
    uint8_t id[32];
    if (!T.esys || kh_hash_oneshot(id, KH_HASH_SHA256, priv->buffer, priv->size) != CKR_OK)
        return;
    for (size_t i = 0; i < T.nobjs; i++) {
        if (!T.objs[i].srk && memcmp(T.objs[i].id, id, sizeof id) == 0) {
            kh_tpm_obj_drop_locked(T.objs[i].tr);
            return;
        }
    }
}

void kh_tpm_obj_drop_locked(ESYS_TR tr)
{
    tpm_obj *o = obj_find_tr(tr);
    if (o)
        obj_remove(o);
    if (T.esys && tr != ESYS_TR_NONE)
        Esys_TR_Close(T.esys, &tr);
}

/* Evict our least recently used object other than keep. */
static bool evict_lru_locked(ESYS_TR keep)
{
    tpm_obj *victim = NULL;
    for (size_t i = 0; i < T.nobjs; i++)
        if (T.objs[i].tr != keep && (!victim || T.objs[i].used < victim->used))
            victim = &T.objs[i];
    if (!victim)
        return false;
    kh_tpm_flush_locked(victim->tr);
    return T.esys != NULL;
}

static bool handle_is_ours(TPM2_HANDLE h)
{
    for (size_t i = 0; i < T.nobjs; i++)
        if (T.objs[i].handle == h)
            return true;
    return false;
}

/* Flush one transient object that is not ours. */
static bool steal_one_locked(void)
{
    TPMS_CAPABILITY_DATA *d = NULL;
    bool done = false;
    TSS2_RC rc = get_cap_locked(&d, TPM2_CAP_HANDLES, KH_TPM_TRANSIENT_FIRST, TPM2_MAX_CAP_HANDLES);
    if (rc != TSS2_RC_SUCCESS) {
        Esys_Free(d);
        return false;
    }
    for (UINT32 i = 0; i < d->data.handles.count && !done; i++) {
        TPM2_HANDLE h = d->data.handles.handle[i];
        if (handle_is_ours(h))
            continue;
        ESYS_TR tr = ESYS_TR_NONE;
        rc = kh_tpm_run_locked(Esys_TR_FromTPMPublic_Async(T.esys, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                        kh_tpm_fin_from_public, &tr, kh_tpm_timeout_ms(), "TPM2_ReadPublic");
        if (rc != TSS2_RC_SUCCESS) {
            if (!T.esys)
                break;
            done = true; /* gone meanwhile: that freed a slot too */
            continue;
        }
        kh_log(KH_LOG_WARN, "tpm: the TPM is full; flushing transient object 0x%08x that this "
               "process did not load (no resource manager?)", (unsigned)h);
        rc = kh_tpm_run_locked(Esys_FlushContext_Async(T.esys, tr), kh_tpm_fin_flush, NULL, kh_tpm_timeout_ms(),
                        "TPM2_FlushContext");
        if (rc != TSS2_RC_SUCCESS && T.esys)
            Esys_TR_Close(T.esys, &tr);
        done = T.esys != NULL;
    }
    Esys_Free(d);
    return done;
}

bool kh_tpm_make_room_locked(ESYS_TR keep, bool full, unsigned attempt)
{
    if (!T.esys)
        return false;
    if (!full) {
        unsigned lim = limit_locked();
        while (T.nobjs >= lim && evict_lru_locked(keep))
            ;
        return T.esys != NULL;
    }
    if (attempt >= KH_TPM_ROOM_TRIES)
        return false;
    if (!shared_locked())
        kh_log(KH_LOG_INFO, "tpm: the TPM is full: keeping nothing loaded between operations for %d s",
               KH_TPM_SHARED_MS / 1000);
    T.contended_ms = kh_tpm_now_ms();
    size_t before = T.nobjs;
    if (evict_lru_locked(keep)) {
        /* Someone else holds the rest: keep no more than we had, less one. */
        unsigned share = before > 1 ? (unsigned)before - 1 : 1;
        if (limit_locked() > share) {
            kh_log(KH_LOG_INFO, "tpm: TPM shared with others: keeping at most %u loaded objects", share);
            T.limit = share;
        }
        return true;
    }
    if (!T.esys)
        return false;
    if (attempt < KH_TPM_GRACE_TRIES) {
        /* Other processes hold every slot; they usually let go within a command or two. */
        unsigned ms = 1u << (attempt < 5 ? attempt : 5);
        struct timespec ts = { 0, (long)(ms + (unsigned)(getpid() % 3)) * 1000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return true;
    }
    return steal_one_locked();
}

/* ---- parents ---- */

/* Read the persistent object at p->handle: is it a storage key? */
static TSS2_RC persistent_check_locked(tpm_persistent *p)
{
    if (p->checked)
        return TSS2_RC_SUCCESS;
    ESYS_TR tr = ESYS_TR_NONE;
    TSS2_RC rc = kh_tpm_run_locked(Esys_TR_FromTPMPublic_Async(T.esys, p->handle, ESYS_TR_NONE, ESYS_TR_NONE,
                                                        ESYS_TR_NONE),
                            kh_tpm_fin_from_public, &tr, kh_tpm_timeout_ms(), "TPM2_ReadPublic");
    if (rc != TSS2_RC_SUCCESS) {
        if (!T.esys)
            return rc;
        if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER) {
            /* TPM2_RC_HANDLE: nothing there */
            kh_log(KH_LOG_DEBUG, "tpm: no object at 0x%08x (0x%08x)", (unsigned)p->handle, (unsigned)rc);
            p->checked = true;
            p->ok = false;
            return TSS2_RC_SUCCESS;
        }
        return rc;
    }
    kh_tpm_readpub_out a = { 0 };
    rc = kh_tpm_run_locked(Esys_ReadPublic_Async(T.esys, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                    kh_tpm_fin_readpub, &a, kh_tpm_timeout_ms(), "TPM2_ReadPublic");
    if (rc != TSS2_RC_SUCCESS) {
        if (T.esys)
            Esys_TR_Close(T.esys, &tr);
        return rc;
    }
    if (kh_tpm_is_storage_key(&a.pub->publicArea)) {
        p->ok = true;
        p->tr = tr;
        p->name = *a.name;
    } else {
        kh_log(KH_LOG_WARN, "tpm: 0x%08x is not a storage key with an empty password; not used as "
               "a parent", (unsigned)p->handle);
        p->ok = false;
        Esys_TR_Close(T.esys, &tr);
    }
    p->checked = true;
    Esys_Free(a.pub);
    Esys_Free(a.name);
    Esys_Free(a.qname);
    return TSS2_RC_SUCCESS;
}

static tpm_persistent *persistent_slot_locked(uint32_t h)
{
    for (size_t i = 0; i < T.npers; i++)
        if (T.pers[i].handle == h)
            return &T.pers[i];
    if (T.npers == KH_TPM_MAX_PERSISTENT) {
        /* forget the oldest extra one (never the configured one at 0) */
        tpm_persistent *old = &T.pers[1];
        if (old->ok && T.esys)
            Esys_TR_Close(T.esys, &old->tr);
        memmove(&T.pers[1], &T.pers[2], (T.npers - 2) * sizeof T.pers[0]);
        T.npers--;
    }
    tpm_persistent *p = &T.pers[T.npers++];
    memset(p, 0, sizeof *p);
    p->handle = h;
    return p;
}

static uint32_t primary_handle(void)
{
    return kh_mod.cfg.tpm_primary ? kh_mod.cfg.tpm_primary : KH_TPM_PRIMARY_DEFAULT;
}

/* The configured persistent primary (always T.pers[0]). */
static TSS2_RC configured_locked(tpm_persistent **out)
{
    if (T.npers == 0) {
        T.npers = 1;
        memset(&T.pers[0], 0, sizeof T.pers[0]);
        T.pers[0].handle = primary_handle();
    }
    *out = &T.pers[0];
    return persistent_check_locked(&T.pers[0]);
}

TSS2_RC kh_tpm_parent_persistent_locked(ESYS_TR *tr, TPM2B_NAME *name, uint32_t h)
{
    tpm_persistent *p;
    TSS2_RC rc = configured_locked(&p);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    p = persistent_slot_locked(h);
    rc = persistent_check_locked(p);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    if (!p->ok)
        return KH_TPM_RC_NO_PARENT;
    *tr = p->tr;
    *name = p->name;
    return TSS2_RC_SUCCESS;
}

/* The SRK-template primary, created if it is not loaded. */
static TSS2_RC srk_locked(ESYS_TR *out)
{
    for (size_t i = 0; i < T.nobjs; i++) {
        if (T.objs[i].srk) {
            T.objs[i].used = ++T.clock;
            *out = T.objs[i].tr;
            return TSS2_RC_SUCCESS;
        }
    }
    TPM2B_PUBLIC tmpl;
    TPM2B_SENSITIVE_CREATE sens;
    TPM2B_DATA outside;
    TPML_PCR_SELECTION pcrs;
    TSS2_RC rc;
    kh_tpm_srk_template(&tmpl);
    memset(&sens, 0, sizeof sens);
    memset(&outside, 0, sizeof outside);
    memset(&pcrs, 0, sizeof pcrs);
    kh_tpm_make_room_locked(ESYS_TR_NONE, false, 0);
    for (unsigned attempt = 0;; attempt++) {
        kh_tpm_primary_out a = { .tr = ESYS_TR_NONE };
        if (!T.esys)
            return TSS2_TCTI_RC_IO_ERROR;
        rc = kh_tpm_run_locked(Esys_CreatePrimary_Async(T.esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                                 ESYS_TR_NONE, &sens, &tmpl, &outside, &pcrs),
                        kh_tpm_fin_primary, &a, kh_tpm_timeout_ms(), "TPM2_CreatePrimary");
        kh_tpm_primary_out_free(&a);
        if (rc == TSS2_RC_SUCCESS) {
            TPM2B_NAME *name = NULL;
            rc = Esys_TR_GetName(T.esys, a.tr, &name);
            if (rc == TSS2_RC_SUCCESS) {
                T.srk_name = *name;
                T.srk_known = true;
                rc = obj_add_locked(a.tr, NULL, true);
            } else {
                kh_tpm_flush_locked(a.tr);
            }
            Esys_Free(name);
            if (rc == TSS2_RC_SUCCESS)
                *out = a.tr;
            return rc;
        }
        if (kh_tpm_rc_base(rc) == TPM2_RC_OBJECT_MEMORY &&
            kh_tpm_make_room_locked(ESYS_TR_NONE, true, attempt))
            continue;
        return rc;
    }
}

TSS2_RC kh_tpm_parent_default_locked(ESYS_TR *tr, TPM2B_NAME *name)
{
    tpm_persistent *p;
    TSS2_RC rc = configured_locked(&p);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    if (p->ok) {
        *tr = p->tr;
        *name = p->name;
        return TSS2_RC_SUCCESS;
    }
    rc = srk_locked(tr);
    if (rc == TSS2_RC_SUCCESS)
        *name = T.srk_name;
    return rc;
}

/* The storage key named name among all persistent objects of the TPM: the
 * parent of a key adopted under a persistent key other than tpm_primary
 * (CKA_KH_TPM_PARENT), which a new connection does not know yet. */
static TSS2_RC persistent_find_locked(ESYS_TR *tr, const TPM2B_NAME *name)
{
    TPMS_CAPABILITY_DATA *d = NULL;
    TSS2_RC rc = get_cap_locked(&d, TPM2_CAP_HANDLES, KH_TPM_PERSISTENT_FIRST, TPM2_MAX_CAP_HANDLES);
    for (UINT32 i = 0; rc == TSS2_RC_SUCCESS && i < d->data.handles.count; i++) {
        tpm_persistent *p = persistent_slot_locked(d->data.handles.handle[i]);
        rc = persistent_check_locked(p);
        if (rc == TSS2_RC_SUCCESS && p->ok && kh_tpm_name_eq(&p->name, name)) {
            *tr = p->tr;
            Esys_Free(d);
            return TSS2_RC_SUCCESS;
        }
    }
    Esys_Free(d);
    return rc == TSS2_RC_SUCCESS ? KH_TPM_RC_NO_PARENT : rc;
}

TSS2_RC kh_tpm_parent_find_locked(ESYS_TR *tr, const TPM2B_NAME *name)
{
    for (int pass = 0; pass < 2; pass++) {
        tpm_persistent *p;
        TSS2_RC rc = configured_locked(&p);
        if (rc != TSS2_RC_SUCCESS)
            return rc;
        for (size_t i = 0; i < T.npers; i++) {
            if (T.pers[i].ok && kh_tpm_name_eq(&T.pers[i].name, name)) {
                *tr = T.pers[i].tr;
                return TSS2_RC_SUCCESS;
            }
        }
        if (!T.srk_known) {
            ESYS_TR srk;
            rc = srk_locked(&srk);
            if (rc != TSS2_RC_SUCCESS)
                return rc;
        }
        if (kh_tpm_name_eq(&T.srk_name, name))
            return srk_locked(tr);
        if (pass == 0) {
            /* The persistent objects may have changed since we looked: look again. */
            for (size_t i = 0; i < T.npers; i++) {
                if (T.pers[i].ok && T.esys)
                    Esys_TR_Close(T.esys, &T.pers[i].tr);
                T.pers[i].ok = T.pers[i].checked = false;
            }
        }
    }
    return persistent_find_locked(tr, name);
}

/* Forget the SRK after its handle went stale (TPM restart, flushed by someone). */
static void srk_drop_locked(void)
{
    for (size_t i = 0; i < T.nobjs; i++) {
        if (T.objs[i].srk) {
            kh_tpm_obj_drop_locked(T.objs[i].tr);
            return;
        }
    }
}

bool kh_tpm_srk_loaded_locked(void)
{
    for (size_t i = 0; i < T.nobjs; i++)
        if (T.objs[i].srk)
            return true;
    return false;
}

void kh_tpm_srk_flush_locked(void)
{
    for (size_t i = 0; i < T.nobjs; i++) {
        if (T.objs[i].srk) {
            kh_tpm_flush_locked(T.objs[i].tr);
            return;
        }
    }
}

static bool tr_is_srk(ESYS_TR tr)
{
    tpm_obj *o = obj_find_tr(tr);
    return o && o->srk;
}

bool kh_tpm_srk_drop_if_locked(ESYS_TR parent)
{
    if (!T.esys || !tr_is_srk(parent))
        return false;
    srk_drop_locked();
    return true;
}

TSS2_RC kh_tpm_obj_get_locked(ESYS_TR *tr, bool *cached, const TPM2B_NAME *parent,
                              const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv)
{
    uint8_t id[32];
    if (kh_hash_oneshot(id, KH_HASH_SHA256, priv->buffer, priv->size) != CKR_OK)
        return TSS2_ESYS_RC_MEMORY;
    for (size_t i = 0; i < T.nobjs; i++) {
        if (!T.objs[i].srk && memcmp(T.objs[i].id, id, sizeof id) == 0) {
            T.objs[i].used = ++T.clock;
            *tr = T.objs[i].tr;
            *cached = true;
            return TSS2_RC_SUCCESS;
        }
    }
    *cached = false;
    unsigned stale_parent = 0;
    for (unsigned attempt = 0;; attempt++) {
        ESYS_TR ptr = ESYS_TR_NONE, obj = ESYS_TR_NONE;
        if (!T.esys)
            return TSS2_TCTI_RC_IO_ERROR;
        TSS2_RC rc = kh_tpm_parent_find_locked(&ptr, parent);
        if (rc != TSS2_RC_SUCCESS)
            return rc;
        if (!kh_tpm_make_room_locked(ptr, false, 0))
            return TSS2_TCTI_RC_IO_ERROR;
        rc = kh_tpm_run_locked(Esys_Load_Async(T.esys, ptr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, priv, pub),
                        fin_load, &obj, kh_tpm_timeout_ms(), "TPM2_Load");
        if (rc == TSS2_RC_SUCCESS) {
            rc = obj_add_locked(obj, id, false);
            if (rc == TSS2_RC_SUCCESS)
                *tr = obj;
            return rc;
        }
        if (!T.esys)
            return rc;
        TSS2_RC base = kh_tpm_rc_base(rc);
        if (base == TPM2_RC_OBJECT_MEMORY && kh_tpm_make_room_locked(ptr, true, attempt))
            continue;
        /* The SRK's handle went stale (a restart, another process flushed it,
         * maybe another object sits there now: a load under it then fails on
         * handle 1 or its authorization): make it again. */
        if (kh_tpm_rc_stale(rc) && tr_is_srk(ptr) && stale_parent++ < 3) {
            srk_drop_locked();
            continue;
        }
        return rc;
    }
}

/* ---- backend life cycle ---- */

CK_RV kh_tpm_conn_init(void)
{
    memset(&T, 0, sizeof T);
    return kh_mutex_new(&T.lock);
}

void kh_tpm_conn_finalize(void)
{
    if (!T.lock)
        return;
    kh_mutex_lock(T.lock);
    while (T.esys && T.nobjs > 0)
        kh_tpm_flush_locked(T.objs[T.nobjs - 1].tr);
    if (T.esys)
        Esys_Finalize(&T.esys);
    kh_tpm_tcti_close(T.tcti);
    kh_mutex_unlock(T.lock);
    kh_mutex_free(T.lock);
    memset(&T, 0, sizeof T);
}

void kh_tpm_conn_forked(void)
{
    /* The parent's context: its socket or device file is shared with the
     * parent, and its objects are the parent's. Keep it, untouched. */
    if ((T.esys || T.tcti || T.lock) &&
        kh_tpm_nabandoned < sizeof kh_tpm_abandoned / sizeof kh_tpm_abandoned[0]) {
        kh_tpm_abandoned[kh_tpm_nabandoned].esys = T.esys;
        kh_tpm_abandoned[kh_tpm_nabandoned].tcti = T.tcti;
        kh_tpm_abandoned[kh_tpm_nabandoned].lock = T.lock;
        kh_tpm_nabandoned++;
    }
    bool had_lock = T.lock != NULL;
    memset(&T, 0, sizeof T);
    if (had_lock && kh_mutex_new(&T.lock) != CKR_OK)
        T.lock = NULL;
}
