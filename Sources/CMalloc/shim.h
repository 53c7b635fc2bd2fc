#ifndef SECUREMSG_CMALLOC_SHIM_H
#define SECUREMSG_CMALLOC_SHIM_H
// glibc's mallopt(3), which Swift's Glibc module does not bring in.
#include <malloc.h>
#endif
