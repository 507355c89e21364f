/*
 * The leaf services every unit of the module may use, with no dependency on
 * the rest of it: logging, locked memory for secrets and OS randomness. crypto.c uses them
 * too, so they live in the crypto library.
 */
#ifndef KH_MODULE_BASE_H
#define KH_MODULE_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keyhold.h"

/* ---- logging (log.c): quiet by default; KEYHOLD_LOG=error|warn|info|debug ---- */

enum kh_log_level { KH_LOG_ERROR = 1, KH_LOG_WARN, KH_LOG_INFO, KH_LOG_DEBUG };
void kh_log(enum kh_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kh_log_set_level(int level);
/* True when kh_log writes lines of level (KEYHOLD_LOG or the configured level). */
bool kh_log_enabled(enum kh_log_level level);

/* ---- locked memory for secrets (secmem.c): mlock'd, MADV_DONTDUMP, MADV_WIPEONFORK ---- */

void *kh_secmem_alloc(size_t len);      /* zeroed; NULL when out of locked memory */
void kh_secmem_free(void *p, size_t len); /* wipes */
void kh_secmem_cleanup(void);           /* module unload: unmap arenas no longer in use */

/* ---- OS randomness (random.c) ---- */

/* Fill buf with len bytes from getrandom(2). CKR_ARGUMENTS_BAD for a NULL
 * buf with len > 0, CKR_FUNCTION_FAILED when the OS gives none. */
CK_RV kh_random(uint8_t *buf, size_t len);

/* ---- OpenSSL (ossl.c): the module's private library context ---- */

#include <openssl/types.h>

/* Every OpenSSL call of the module names this context (default provider only,
 * no configuration file), so the host's engines and providers never see our
 * keys. NULL only when OpenSSL cannot load its default provider. */
OSSL_LIB_CTX *kh_ossl_libctx(void);
void kh_ossl_cleanup(void);  /* module unload only: the context cannot come back */

#endif
