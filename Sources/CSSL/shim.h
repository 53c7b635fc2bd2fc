#ifndef SECUREMSG_CSSL_SHIM_H
#define SECUREMSG_CSSL_SHIM_H
// Headers only: every primitive is OpenSSL's own (EVP, HMAC via EVP_MAC, HKDF via EVP_PKEY, RAND, CRYPTO_memcmp).
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#endif
