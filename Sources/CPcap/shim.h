// libpcap reads pcap and pcapng capture files for `sluice replay` (Sources/Replay).
#include <pcap/pcap.h>
