// libFuzzer's entry for programs that keep their own `main` (SwiftPM links every
// executable with `--defsym main=<module>_main`, so libFuzzer's `main` cannot be used).
// Only referenced when the fuzz targets are built with -DSLUICE_LIBFUZZER and
// -sanitize=fuzzer, which links libFuzzer; the normal build never calls it.
#ifndef SLUICE_CFUZZING_H
#define SLUICE_CFUZZING_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
