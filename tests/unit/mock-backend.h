/*
 * A mock backend for the module-logic tests: an ops table with the vault's
 * id, installed with kh_backend_override(), that delegates to the real
 * crypto (generate/import) and the real vault (sign) unless a fault is
 * armed, and counts its calls.
 */
#ifndef KH_TEST_MOCK_BACKEND_H
#define KH_TEST_MOCK_BACKEND_H

#include "internal.h"

typedef struct kh_mock_calls {
    unsigned generate;
    unsigned import;
    unsigned sign;
} kh_mock_calls;

/* Calls since the last kh_mock_install(). */
extern kh_mock_calls kh_mock_count;

/* generate, import and sign, delegating unless a fault is armed. */
extern const kh_backend_ops kh_mock_ops;
/* The same without a sign member (a backend that cannot sign). */
extern const kh_backend_ops kh_mock_ops_nosign;
/* Only sign: no generate, no import. */
extern const kh_backend_ops kh_mock_ops_signonly;

/* Replace the vault's table with ops (counters and faults reset). */
void kh_mock_install(const kh_backend_ops *ops);
/* Restore the built-in vault. */
void kh_mock_uninstall(void);
/* The next call of that member returns rv (once) without delegating. */
void kh_mock_fail_next_sign(CK_RV rv);
void kh_mock_fail_next_generate(CK_RV rv);
void kh_mock_fail_next_import(CK_RV rv);

#endif
