#ifndef SECUREMSG_CPCAP_SHIM_H
#define SECUREMSG_CPCAP_SHIM_H
#include <pcap/pcap.h>
#endif
