/* libFuzzer target for pr_parse_diag, the parser of sock_diag dump replies
 * in csrc/pr_posix.c.  Built by run.sh with ASan and UBSan:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *       tests/sanitize/fuzz_diag.c csrc/pr_posix.c
 *
 * The input is copied into a buffer of exactly its size, so a read past the
 * end is caught, and to an odd address, so the parser cannot lean on the
 * alignment a recv() buffer would have. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pr_posix.h"

static unsigned char map[65536];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *raw = malloc(size + 1);
    int err = 0, rc;
    if (!raw)
        return 0;
    memcpy(raw + 1, data, size);
    rc = pr_parse_diag(raw + 1, size, map, &err);
    /* The contract: 1 at the end, 0 for more, -1 with a positive errno. */
    if (rc < -1 || rc > 1 || (rc == -1 && err <= 0))
        abort();
    free(raw);
    return 0;
}
