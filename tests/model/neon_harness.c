/* The aarch64 side of tests/model/test_kernel_neon.py: rillet/model/native/matmul.c linked statically into
 * one program, run under qemu-aarch64. It reads jobs from the file argv[1], each
 *   char kernel[32] (an entry of MATMUL_KERNELS, e.g. "int8_q4_k"); int64 M, K, N, packed_bytes; packed
 *   bytes; float32 x[M][K]
 * calls the kernel on each and writes, per job, int64 status then float32 y[M][N] to the file argv[2].
 * On stdout: the build's code path (matmul_isa()) and whether the CPU has sdot (HWCAP asimddp). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "matmul_table.h"

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

extern const matmul_kernel_t MATMUL_KERNELS[];
extern const int64_t MATMUL_KERNEL_COUNT;
const char *matmul_isa(void);

static void *read_exactly(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    printf("matmul %s\n", matmul_isa());
    printf("asimddp %d\n", (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0);
    fflush(stdout);
    if (argc != 3) return argc == 1 ? 0 : 2;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) return 2;
    char name[33] = {0};
    while (fread(name, 1, 32, in) == 32) {
        int64_t *shape = read_exactly(in, 4 * sizeof(int64_t));
        const int64_t M = shape[0], K = shape[1], N = shape[2];
        uint8_t *packed = read_exactly(in, (size_t)shape[3]);
        float *x = read_exactly(in, (size_t)(M * K) * sizeof(float));
        float *y = calloc((size_t)(M * N) + 1, sizeof(float));
        matmul_fn function = NULL;
        for (int64_t i = 0; i < MATMUL_KERNEL_COUNT; i++)
            if (strcmp(MATMUL_KERNELS[i].name, name) == 0) function = MATMUL_KERNELS[i].function;
        if (function == NULL) {
            fprintf(stderr, "no kernel %s\n", name);
            return 2;
        }
        const int64_t status = function(x, M, K, packed, N, y);
        fwrite(&status, sizeof(status), 1, out);
        fwrite(y, sizeof(float), (size_t)(M * N), out);
        free(shape), free(packed), free(x), free(y);
    }
    return fclose(out) == 0 ? 0 : 2;
}
