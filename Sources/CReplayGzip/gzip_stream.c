// A gzip file as a stdio stream: fopencookie needs _GNU_SOURCE, which Swift's Glibc module
// is not built with, hence this file rather than Swift.
#define _GNU_SOURCE
#include "CReplayGzip.h"
#include <errno.h>
#include <zlib.h>

static ssize_t gzip_read(void *cookie, char *buffer, size_t size) {
    if (size > 1u << 30) size = 1u << 30;
    int count = gzread((gzFile)cookie, buffer, (unsigned)size);
    if (count < 0) {
        errno = EIO;
        return -1;
    }
    return count;
}

static int gzip_close(void *cookie) {
    return gzclose((gzFile)cookie) == Z_OK ? 0 : EOF;
}

FILE *sluice_gzip_fopen(const char *path, void **compressed) {
    gzFile file = gzopen(path, "rb");
    if (file == NULL) return NULL;
    gzbuffer(file, 256 * 1024);
    cookie_io_functions_t functions = { .read = gzip_read, .write = NULL, .seek = NULL, .close = gzip_close };
    FILE *stream = fopencookie(file, "r", functions);
    if (stream == NULL) gzclose(file);
    if (compressed != NULL) *compressed = stream == NULL ? NULL : (void *)file;
    return stream;
}

long long sluice_gzip_offset(void *compressed) {
    return compressed == NULL ? -1 : (long long)gzoffset((gzFile)compressed);
}
