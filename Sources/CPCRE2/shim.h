// PCRE2 is built for several code-unit widths; Sluice matches UTF-8 bytes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
