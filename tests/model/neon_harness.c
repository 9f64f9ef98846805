/* The aarch64 side of tests/model/test_kernel_neon.py: the four block-kernel libraries linked statically
 * into one program, run under qemu-aarch64. It reads jobs from the file argv[1], each
 *   char kernel[32] (e.g. "kquant_matmul_q4_k"); int64 M, K, N, packed_bytes; packed bytes; float32 x[M][K]
 * calls the kernel on each and writes, per job, int64 status then float32 y[M][N] to the file argv[2].
 * On stdout: each library's code path (<library>_isa()) and whether the CPU has sdot (HWCAP asimddp). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

typedef int (*kernel_fn)(const float *, int64_t, int64_t, const uint8_t *, int64_t, float *);
#define DECLARE(name) int name(const float *, int64_t, int64_t, const uint8_t *, int64_t, float *);
#define KERNELS(X)                                                                                            \
    X(quant_matmul_q4) X(quant_matmul_q8) X(int8_matmul_q4) X(int8_matmul_q8) X(kquant_matmul_q5_0)             \
    X(kquant_matmul_q5_1) X(kquant_matmul_q4_k) X(kquant_matmul_q5_k) X(kquant_matmul_q6_k)                     \
    X(kquant_int8_matmul_q5_0) X(kquant_int8_matmul_q5_1) X(kquant_int8_matmul_q4_k)                            \
    X(kquant_int8_matmul_q5_k) X(kquant_int8_matmul_q6_k)
KERNELS(DECLARE)
#define ENTRY(name) {#name, name},
static const struct {
    const char *name;
    kernel_fn function;
} TABLE[] = {KERNELS(ENTRY)};

const char *quant_matmul_isa(void);
const char *int8_matmul_isa(void);
const char *kquant_matmul_isa(void);
const char *kquant_int8_matmul_isa(void);

static void *read_exactly(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    printf("quant_matmul %s\nint8_matmul %s\nkquant_matmul %s\nkquant_int8_matmul %s\n", quant_matmul_isa(),
           int8_matmul_isa(), kquant_matmul_isa(), kquant_int8_matmul_isa());
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
        kernel_fn function = NULL;
        for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++)
            if (strcmp(TABLE[i].name, name) == 0) function = TABLE[i].function;
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
