/*
 * keyhold-bench-fill - keyhold-bench's bulk path for building big stores.
 *
 *   keyhold-bench-fill STORE_DIR TOKEN_LABEL TARGET_LABEL N
 *
 * Adds N key pairs to the token labelled TOKEN_LABEL of the keyhold store in
 * STORE_DIR, straight through the token store (10,000 rows per transaction),
 * as clones of the key pair labelled TARGET_LABEL that the module made:
 * labels k0000001.., a random CKA_ID, a random object uid and random sealed
 * bytes (never unsealed: only the target is signed with). Prints
 * "PICK <label> <CKA_ID hex>" of the pair in the middle, for the lookups.
 *
 * It is a separate program because it links keyhold's token store, which
 * keyhold-bench (an ordinary Cryptoki consumer) does not.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FILL_CHUNK 10000    /* rows per transaction */
#define FILL_ID_LEN 16
#define FILL_MAX_ATTRS 64

static void fill_err(const char *what, CK_RV rv)
{
    fprintf(stderr, "keyhold-bench-fill: %s (rv 0x%lx)\n", what, (unsigned long)rv);
}

/* The target's two rows (public and private key) and its token id. */
static CK_RV fill_load_target(kh_store *st, kh_obj_rec *pub, kh_obj_rec *priv,
                              const char *token_label, const char *target_label)
{
    kh_token_rec *toks = NULL;
    size_t ntoks = 0, n = 0;
    int64_t *ids = NULL, token_id = 0;
    kh_find_query q;
    CK_RV rv = kh_store_token_list(st, &toks, &ntoks);

    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < ntoks; i++)
        if (!strcmp(toks[i].label, token_label))
            token_id = toks[i].id;
    free(toks);
    if (!token_id)
        return CKR_TOKEN_NOT_PRESENT;
    memset(&q, 0, sizeof q);
    q.token_id = token_id;
    q.has_label = true;
    q.label = target_label;
    q.label_len = strlen(target_label);
    q.include_private = true;
    rv = kh_store_obj_find(st, &ids, &n, &q);
    if (rv != CKR_OK)
        return rv;
    if (n != 2) {
        free(ids);
        return CKR_OBJECT_HANDLE_INVALID;
    }
    memset(pub, 0, sizeof *pub);
    memset(priv, 0, sizeof *priv);
    for (size_t i = 0; i < 2 && rv == CKR_OK; i++) {
        kh_obj_rec rec;
        rv = kh_store_obj_get(st, &rec, ids[i]);
        if (rv != CKR_OK)
            break;
        const CK_ATTRIBUTE *cls = kh_obj_rec_attr(&rec, CKA_CLASS);
        CK_OBJECT_CLASS c = CK_UNAVAILABLE_INFORMATION;
        if (cls && cls->ulValueLen == sizeof c)
            memcpy(&c, cls->pValue, sizeof c);
        if (c == CKO_PRIVATE_KEY && !priv->attrs)
            *priv = rec;
        else if (c == CKO_PUBLIC_KEY && !pub->attrs)
            *pub = rec;
        else
            kh_obj_rec_clear(&rec);
    }
    free(ids);
    if (rv == CKR_OK && (!pub->attrs || !priv->attrs))
        rv = CKR_OBJECT_HANDLE_INVALID;
    if (rv == CKR_OK && (pub->nattrs > FILL_MAX_ATTRS - 2 || priv->nattrs > FILL_MAX_ATTRS - 2))
        rv = CKR_GENERAL_ERROR;
    if (rv != CKR_OK) {
        kh_obj_rec_clear(pub);
        kh_obj_rec_clear(priv);
    }
    return rv;
}

/* Per-row storage of one chunk. */
struct fill_row {
    CK_ATTRIBUTE attrs[FILL_MAX_ATTRS];
    char label[16];
    uint8_t id[FILL_ID_LEN];
    char uniq[2 * KH_UID_LEN + 1];
};

/* rec = a clone of tmpl with label, id and a fresh uid / CKA_UNIQUE_ID. */
static CK_RV fill_row_make(kh_obj_rec *rec, struct fill_row *row, uint8_t *sealed,
                           const kh_obj_rec *tmpl)
{
    size_t n = 0;
    bool have_label = false, have_id = false;
    CK_RV rv;

    memset(rec, 0, sizeof *rec);
    rec->token_id = tmpl->token_id;
    rv = kh_random(rec->uid, sizeof rec->uid);
    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < KH_UID_LEN; i++)
        snprintf(row->uniq + 2 * i, 3, "%02x", rec->uid[i]);
    for (size_t i = 0; i < tmpl->nattrs; i++) {
        CK_ATTRIBUTE a = tmpl->attrs[i];
        if (a.type == CKA_LABEL) {
            a.pValue = row->label;
            a.ulValueLen = strlen(row->label);
            have_label = true;
        } else if (a.type == CKA_ID) {
            a.pValue = row->id;
            a.ulValueLen = FILL_ID_LEN;
            have_id = true;
        } else if (a.type == CKA_UNIQUE_ID) {
            a.pValue = row->uniq;
            a.ulValueLen = 2 * KH_UID_LEN;
        }
        row->attrs[n++] = a;
    }
    if (!have_label)
        row->attrs[n++] = (CK_ATTRIBUTE){ CKA_LABEL, row->label, strlen(row->label) };
    if (!have_id)
        row->attrs[n++] = (CK_ATTRIBUTE){ CKA_ID, row->id, FILL_ID_LEN };
    rec->attrs = row->attrs;
    rec->nattrs = n;
    if (tmpl->sealed_len) {
        rec->sealed = sealed;
        rec->sealed_len = tmpl->sealed_len;
        rv = kh_random(sealed, tmpl->sealed_len);
    }
    return rv;
}

int main(int argc, char **argv)
{
    kh_store *st = NULL;
    kh_obj_rec pub, priv;
    kh_obj_rec *recs = NULL;
    struct fill_row *rows = NULL;
    uint8_t *sealed = NULL;
    char pick_label[16] = "";
    uint8_t pick_id[FILL_ID_LEN];
    unsigned long long nkeys;
    char *end;
    int status = 1;
    CK_RV rv;

    if (argc != 5) {
        fprintf(stderr, "usage: keyhold-bench-fill STORE_DIR TOKEN_LABEL TARGET_LABEL N\n");
        return 2;
    }
    nkeys = strtoull(argv[4], &end, 10);
    if (*end || nkeys < 1 || nkeys > 10000000) {
        fprintf(stderr, "keyhold-bench-fill: N must be 1..10000000\n");
        return 2;
    }
    rv = kh_store_open(&st, argv[1]);
    if (rv != CKR_OK) {
        fill_err("cannot open the store", rv);
        return 1;
    }
    rv = fill_load_target(st, &pub, &priv, argv[2], argv[3]);
    if (rv != CKR_OK) {
        fill_err("no token or target key pair with those labels", rv);
        goto out_close;
    }
    recs = calloc(FILL_CHUNK, sizeof *recs);
    rows = calloc(FILL_CHUNK, sizeof *rows);
    sealed = calloc(FILL_CHUNK / 2, priv.sealed_len ? priv.sealed_len : 1);
    if (!recs || !rows || !sealed) {
        fill_err("out of memory", CKR_HOST_MEMORY);
        goto out_free;
    }
    for (unsigned long long done = 0; done < nkeys;) {
        size_t pairs = nkeys - done < FILL_CHUNK / 2 ? (size_t)(nkeys - done) : FILL_CHUNK / 2;
        for (size_t i = 0; i < pairs; i++) {
            unsigned long long key = done + i + 1;
            struct fill_row *rp = &rows[2 * i], *rv_row = &rows[2 * i + 1];
            snprintf(rp->label, sizeof rp->label, "k%07llu", key);
            memcpy(rv_row->label, rp->label, sizeof rp->label);
            if (kh_random(rp->id, FILL_ID_LEN) != CKR_OK)
                goto out_free;
            memcpy(rv_row->id, rp->id, FILL_ID_LEN);
            if (fill_row_make(&recs[2 * i], rp, NULL, &pub) != CKR_OK ||
                fill_row_make(&recs[2 * i + 1], rv_row, sealed + i * priv.sealed_len, &priv) != CKR_OK) {
                fill_err("building a row", CKR_FUNCTION_FAILED);
                goto out_free;
            }
            if (key == (nkeys + 1) / 2) {
                memcpy(pick_label, rp->label, sizeof pick_label);
                memcpy(pick_id, rp->id, sizeof pick_id);
            }
        }
        rv = kh_store_obj_insert_many(st, NULL, recs, 2 * pairs);
        if (rv != CKR_OK) {
            fill_err("kh_store_obj_insert_many", rv);
            goto out_free;
        }
        done += pairs;
    }
    printf("PICK %s ", pick_label);
    for (size_t i = 0; i < FILL_ID_LEN; i++)
        printf("%02x", pick_id[i]);
    printf("\n");
    status = 0;
out_free:
    free(recs);
    free(rows);
    free(sealed);
    kh_obj_rec_clear(&pub);
    kh_obj_rec_clear(&priv);
out_close:
    kh_store_close(st);
    return status;
}
