/*
 * A small test harness: cases registered by path-like name, run in order,
 * each failure reported with file:line. main() comes from the test file:
 *
 *   static void test_open(void) { KH_CHECK(...); }
 *   int main(int argc, char **argv) {
 *       kh_test_register("/store/open", test_open);
 *       return kh_test_run(argc, argv);
 *   }
 *
 * `test-x /store/open` runs only cases whose name starts with the argument.
 * KH_TEST_SEED sets the seed printed at start (kh_test_seed()).
 */
#ifndef KH_TESTUTIL_H
#define KH_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef void (*kh_test_fn)(void);
typedef void (*kh_test_arg_fn)(const void *arg);

void kh_test_register(const char *name, kh_test_fn fn);
/* The same for a case run as fn(arg) (one function, several data sets). */
void kh_test_register_arg(const char *name, kh_test_arg_fn fn, const void *arg);
int kh_test_run(int argc, char **argv);
uint64_t kh_test_seed(void);
/* Test data (digests, messages) drawn from the run's seed, so that a failure
 * replays with KH_TEST_SEED: one stream per process. Not for keys. */
void kh_test_rand(uint8_t *buf, size_t len);
void kh_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* True when a check of the running case has failed in this process (a
 * forked child exits non-zero with it, so its checks count in the parent). */
bool kh_test_failed(void);
/* A fresh empty directory under $TMPDIR for this case; removed at exit. */
const char *kh_test_tmpdir(void);
/* Hex helpers: returns malloc'd bytes / writes len. */
uint8_t *kh_test_unhex(const char *hex, size_t *len);
/* Path of a file in ../shared/testvectors (KEYHOLD_TESTVECTORS). */
const char *kh_test_vector_path(const char *name);

#define KH_CHECK(cond) \
    do { if (!(cond)) kh_test_fail(__FILE__, __LINE__, "check failed: %s", #cond); } while (0)
#define KH_CHECK_RV(expr, want) \
    do { unsigned long kh_rv_ = (unsigned long)(expr); unsigned long kh_want_ = (unsigned long)(want); \
         if (kh_rv_ != kh_want_) kh_test_fail(__FILE__, __LINE__, "%s returned 0x%lx, want 0x%lx (%s)", \
                                               #expr, kh_rv_, kh_want_, #want); } while (0)
#define KH_CHECK_MEM(a, b, n) \
    do { if (memcmp((a), (b), (n)) != 0) kh_test_fail(__FILE__, __LINE__, "memory differs: %s vs %s", #a, #b); } while (0)

#endif
