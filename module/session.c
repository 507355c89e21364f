/*
 * Sessions: a table of handle -> kh_session. Callers take a reference with
 * kh_session_get() so a concurrent C_CloseSession cannot free a session in
 * use; the last kh_session_put() frees it.
 *
 * Every Cryptoki call on a session looks it up and releases it, twice per
 * signature, so the lookup must not serialise threads that each use their
 * own session: the buckets are guarded by KH_SESSION_STRIPES stripe locks
 * (bucket b by stripe b % KH_SESSION_STRIPES). A lookup and a reference
 * change take the session's stripe alone; adding or removing a session takes
 * the global lock (for the token's session counts) and then the stripe.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define KH_SESSION_BUCKETS 1024
#define KH_SESSION_STRIPES 64

typedef struct kh_session_node {
    kh_session *s;
    struct kh_session_node *next;
} kh_session_node;

static kh_session_node *buckets[KH_SESSION_BUCKETS];
static kh_mutex *stripes[KH_SESSION_STRIPES];
static CK_SESSION_HANDLE next_handle = 1;

static size_t bucket_of(CK_SESSION_HANDLE h)
{
    return (size_t)(h % KH_SESSION_BUCKETS);
}

static kh_mutex *stripe_of(CK_SESSION_HANDLE h)
{
    return stripes[bucket_of(h) % KH_SESSION_STRIPES];
}

CK_RV kh_sessions_init(void)
{
    for (size_t i = 0; i < KH_SESSION_STRIPES; i++) {
        CK_RV rv = kh_mutex_new(&stripes[i]);
        if (rv != CKR_OK) {
            while (i > 0) {
                kh_mutex_free(stripes[--i]);
                stripes[i] = NULL;
            }
            return rv;
        }
    }
    return CKR_OK;
}

static void session_free(kh_session *s)
{
    kh_sign_ops_reset(s);
    kh_find_op_reset(s);
    kh_mutex_free(s->lock);
    free(s);
}

CK_RV kh_session_get(kh_session **out, CK_SESSION_HANDLE h)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    rv = CKR_SESSION_HANDLE_INVALID;
    kh_mutex *l = stripe_of(h);
    kh_mutex_lock(l);
    for (kh_session_node *n = buckets[bucket_of(h)]; n; n = n->next) {
        if (n->s->handle == h && !n->s->closed) {
            n->s->refs++;
            *out = n->s;
            rv = CKR_OK;
            break;
        }
    }
    kh_mutex_unlock(l);
    return rv;
}

void kh_session_put(kh_session *s)
{
    kh_mutex *l = stripe_of(s->handle);
    kh_mutex_lock(l);
    bool last = --s->refs == 0;
    kh_mutex_unlock(l);
    if (last)
        session_free(s);
}

CK_STATE kh_session_state(const kh_session *s)
{
    bool rw = s->flags & CKF_RW_SESSION;
    kh_mutex_lock(s->tok->lock);
    CK_USER_TYPE login = s->tok->login;
    kh_mutex_unlock(s->tok->lock);
    if (login == CKU_SO)
        return CKS_RW_SO_FUNCTIONS;
    if (login == CKU_USER)
        return rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
    return rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
}

CK_RV kh_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                     CK_SESSION_HANDLE_PTR phSession)
{
    (void)pApplication;
    (void)Notify; /* no callbacks are ever made */
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!phSession)
        return CKR_ARGUMENTS_BAD;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    kh_token *tok;
    rv = kh_token_get(&tok, slotID, true);
    if (rv != CKR_OK)
        return rv;
    if (!(flags & CKF_RW_SESSION)) {
        kh_mutex_lock(tok->lock);
        bool so = tok->login == CKU_SO;
        kh_mutex_unlock(tok->lock);
        if (so)
            return CKR_SESSION_READ_WRITE_SO_EXISTS;
    }
    kh_session *s = calloc(1, sizeof *s);
    kh_session_node *node = calloc(1, sizeof *node);
    if (!s || !node) {
        free(s);
        free(node);
        return CKR_HOST_MEMORY;
    }
    rv = kh_mutex_new(&s->lock);
    if (rv != CKR_OK) {
        free(s);
        free(node);
        return rv;
    }
    s->tok = tok;
    s->flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
    s->refs = 1;
    node->s = s;
    kh_mutex_lock(kh_mod.lock);
    s->handle = next_handle++;
    size_t b = bucket_of(s->handle);
    kh_mutex *l = stripe_of(s->handle);
    kh_mutex_lock(l);
    node->next = buckets[b];
    buckets[b] = node;
    kh_mutex_unlock(l);
    tok->nsessions++;
    if (flags & CKF_RW_SESSION)
        tok->nrw_sessions++;
    kh_mutex_unlock(kh_mod.lock);
    *phSession = s->handle;
    return CKR_OK;
}

/* Unlink s from the table and drop the table's reference. Caller holds
 * kh_mod.lock. Returns true if it was the token's last session. */
static bool session_unlink_locked(kh_session *s)
{
    kh_session_node **pp = &buckets[bucket_of(s->handle)], *n = NULL;
    kh_mutex *l = stripe_of(s->handle);
    kh_mutex_lock(l);
    while (*pp && (*pp)->s != s)
        pp = &(*pp)->next;
    if (*pp) {
        n = *pp;
        *pp = n->next;
    }
    s->closed = true;
    s->refs--; /* the table's reference; the caller still holds one */
    kh_mutex_unlock(l);
    free(n);
    s->tok->nsessions--;
    if (s->flags & CKF_RW_SESSION)
        s->tok->nrw_sessions--;
    return s->tok->nsessions == 0;
}

CK_RV kh_CloseSession(CK_SESSION_HANDLE hSession)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(kh_mod.lock);
    bool last = false;
    bool mine = !s->closed;
    if (mine)
        last = session_unlink_locked(s);
    kh_mutex_unlock(kh_mod.lock);
    if (mine) {
        kh_objects_drop_session(hSession);
        if (last)
            kh_token_last_session_closed(s->tok);
    }
    kh_session_put(s);
    return mine ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

CK_RV kh_CloseAllSessions(CK_SLOT_ID slotID)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    kh_token *tok;
    rv = kh_token_get(&tok, slotID, false);
    if (rv != CKR_OK)
        return rv;
    for (;;) {
        kh_session *victim = NULL;
        kh_mutex_lock(kh_mod.lock);
        for (size_t b = 0; b < KH_SESSION_BUCKETS && !victim; b++)
            for (kh_session_node *n = buckets[b]; n && !victim; n = n->next)
                if (n->s->tok == tok)
                    victim = n->s;
        CK_SESSION_HANDLE h = victim ? victim->handle : 0;
        kh_mutex_unlock(kh_mod.lock);
        if (!victim)
            break;
        kh_CloseSession(h);
    }
    kh_token_last_session_closed(tok);
    return CKR_OK;
}

CK_RV kh_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pInfo) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        memset(pInfo, 0, sizeof *pInfo);
        pInfo->slotID = (CK_SLOT_ID)s->tok->id;
        pInfo->state = kh_session_state(s);
        pInfo->flags = s->flags;
        pInfo->ulDeviceError = 0;
    }
    kh_session_put(s);
    return rv;
}

void kh_sessions_drop_all(void)
{
    /* fork child: the parent's sessions are not ours; forget them (leak the
     * memory rather than take locks another thread may have held), and leave
     * the parent's stripe locks, which such a thread may hold, for new ones */
    memset(buckets, 0, sizeof buckets);
    memset(stripes, 0, sizeof stripes);
    if (kh_sessions_init() != CKR_OK)
        kh_mod.initialized = false;
}

void kh_sessions_free_all(void)
{
    for (size_t b = 0; b < KH_SESSION_BUCKETS; b++) {
        kh_session_node *n = buckets[b];
        while (n) {
            kh_session_node *next = n->next;
            n->s->closed = true;
            if (--n->s->refs == 0)
                session_free(n->s);
            free(n);
            n = next;
        }
        buckets[b] = NULL;
    }
    for (size_t i = 0; i < KH_SESSION_STRIPES; i++) {
        kh_mutex_free(stripes[i]);
        stripes[i] = NULL;
    }
}
