/*
 * OS randomness for the whole module: key material, nonces, salts, ids.
 * getrandom(2) blocks only until the kernel's pool is first seeded.
 */
#include "base.h"

#include <errno.h>
#include <sys/random.h>

CK_RV kh_random(uint8_t *buf, size_t len)
{
    if (!buf && len)
        return CKR_ARGUMENTS_BAD;
    while (len > 0) {
        ssize_t n = getrandom(buf, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return CKR_FUNCTION_FAILED;
        }
        buf += n;
        len -= (size_t)n;
    }
    return CKR_OK;
}
