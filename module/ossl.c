/*
 * The module's own OpenSSL library context. A PKCS#11 module runs inside
 * other people's processes: their openssl.cnf may load engines (the libp11
 * engine claims EC keys) or make a PKCS#11 provider the default, which would
 * route the module's own key operations back into a token. Every OpenSSL
 * call in keyhold therefore names this context, which has only the default
 * provider loaded and reads no configuration file.
 */
#include "base.h"

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/provider.h>

static OSSL_LIB_CTX *kh_libctx;
static OSSL_PROVIDER *kh_default_prov;
static pthread_once_t kh_libctx_once = PTHREAD_ONCE_INIT;

static void kh_libctx_init(void)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    if (!ctx)
        return;
    kh_default_prov = OSSL_PROVIDER_load(ctx, "default");
    if (!kh_default_prov) {
        OSSL_LIB_CTX_free(ctx);
        kh_log(KH_LOG_ERROR, "cannot load OpenSSL's default provider");
        return;
    }
    kh_libctx = ctx;
}

OSSL_LIB_CTX *kh_ossl_libctx(void)
{
    pthread_once(&kh_libctx_once, kh_libctx_init);
    return kh_libctx;
}

void kh_ossl_cleanup(void)
{
    if (kh_libctx) {
        OSSL_PROVIDER_unload(kh_default_prov);
        kh_default_prov = NULL;
        OSSL_LIB_CTX_free(kh_libctx);
        kh_libctx = NULL;
    }
}
