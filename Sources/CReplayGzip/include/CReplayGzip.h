#ifndef CREPLAYGZIP_H
#define CREPLAYGZIP_H
#include <stdio.h>

/// Opens a gzip-compressed file as a read-only stdio stream that yields the decompressed
/// bytes (zlib's gzopen behind fopencookie), so libpcap can read a compressed capture
/// through pcap_fopen_offline without the whole file being inflated first.
/// Returns NULL and sets errno when the file cannot be opened. Reading returns -1 (a stdio
/// error) when the compressed data is corrupt; a truncated gzip stream ends early, which
/// libpcap then reports as a truncated capture. fclose (or pcap_close) closes the file.
/// `compressed`, when not NULL, receives a handle for `sluice_gzip_offset`, valid until then.
FILE *sluice_gzip_fopen(const char *path, void **compressed);

/// How far into the compressed file reading has got (bytes), for progress; -1 if unknown.
long long sluice_gzip_offset(void *compressed);

#endif
