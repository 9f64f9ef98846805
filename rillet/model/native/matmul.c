/* y = x @ W.T with W kept in a GGUF file's own blocks, repacked: the one driver of every block kernel.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of the type's block.
 * matmul_table.h says which block types and activation modes there are and how W is packed; the
 * microkernels that unpack and dot the blocks are one file per instruction set (isa.h chooses by the
 * flags): matmul_avx512.h (over matmul_avx2.h), matmul_avx2.h, matmul_neon.h, matmul_scalar.h. This
 * file prepares the activations, splits the outputs between the threads and walks the rows:
 *   - a batch of few rows (every batch in INT8 mode) reads the packed blocks directly, a few groups of
 *     outputs side by side and a few rows at a time (float_rows, int8_rows), the rows in chunks that
 *     stay in L2 while the groups' weights pass over them;
 *   - a larger batch in FLOAT32 mode unpacks a tile of groups to float32 once (float_unpack) and runs
 *     register tiles of rows over it (float_tile).
 * Every sum runs in one fixed order, whatever M is and whichever path computes it, so a row's result does
 * not depend on the rows batched with it, and every instruction set gives the portable C's result bit
 * for bit. Compiled without -ffast-math and without fp contraction so that the compiler keeps that order.
 * Each entry of MATMUL_KERNELS is a function of the same signature; it returns 0, or -1 (K not a
 * multiple of the block, out of memory).
 */
#include <omp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "matmul_table.h"

#if defined(RILLET_AVX512)
#include "matmul_avx512.h"
#elif defined(RILLET_AVX2)
#include "matmul_avx2.h"
#elif defined(RILLET_NEON)
#include "matmul_neon.h"
#else
#include "matmul_scalar.h"
#endif

#define CHUNK_BYTES (256 << 10) /* rows of x per pass over the weights: about half of L2 */
#define MAX_OUT (8 * 4 * 16)     /* a call's outputs: up to 8 rows of 4 groups of 16 */
_Static_assert(FLOAT_ROWS <= 8 && INT8_ROWS <= 8 && INT8X2_ROWS <= 8, "out holds 8 rows of 4 groups");
#ifdef TILE_ROWS
_Static_assert(TILE_ROWS <= 8 && TILE_GROUPS <= 4, "out holds 8 rows of 4 groups");
#endif

const char *matmul_isa(void) { return RILLET_ISA_NAME; }

/* INT8X2's activations (matmul_table.h): a block of B floats rounded to q1 with its scale d1, and what
 * that left rounded to q2 with d2; the sums of each per 16 values in b1, b2; and per 32 values, in c, x's
 * sum as both roundings hold it (d1 times q1's sum plus d2 times q2's), which a weight's offset multiplies. */
/* x's sum over 32 values as both roundings hold it, from each rounding's scale and its two sums per 16. */
static inline float x_sum32(float d1, float d2, const float *b1, const float *b2) {
    return fmaf(d2, b2[0] + b2[1], d1 * (b1[0] + b1[1]));
}

static void quantize_block2(const float *x, int B, int8_t *q1, int8_t *q2, float *d1, float *d2, float *b1, float *b2,
                            float *c) {
    float rest[256];
    quantize_part(x, B, q1, d1, b1, rest);
    quantize_part(rest, B, q2, d2, b2, NULL);
    for (int j = 0; j < B / 32; j++) c[j] = x_sum32(*d1, *d2, b1 + 2 * j, b2 + 2 * j);
}

#ifdef QUANTIZE_PARTS8
/* quantize_block2 for eight blocks of 32 values one after another, with the same results (each
 * quantities' array as for one block, eight of them in a row). */
static void quantize_blocks2_8(const float *x, int8_t *q1, int8_t *q2, float *d1, float *d2, float *b1, float *b2,
                               float *c) {
    float rest[256];
    quantize_parts8(x, q1, d1, b1, rest);
    quantize_parts8(rest, q2, d2, b2, NULL);
    for (int j = 0; j < 8; j++) c[j] = x_sum32(d1[j], d2[j], b1 + 2 * j, b2 + 2 * j);
}
#endif

/* Each (type, rows, groups) a copy of its own, unrolled with its sums in registers: T, R and G are
 * constants in each. MAX_GROUPS(R) bounds the groups a call of R rows takes. */
#define BY_TYPE(CASE)                                                                                      \
    switch (t) {                                                                                           \
    case Q4: CASE(Q4); break;                                                                              \
    case Q4_0: CASE(Q4_0); break;                                                                          \
    case Q8: CASE(Q8); break;                                                                              \
    case Q5_0: CASE(Q5_0); break;                                                                          \
    case Q5_1: CASE(Q5_1); break;                                                                          \
    case Q4_K: CASE(Q4_K); break;                                                                          \
    case Q5_K: CASE(Q5_K); break;                                                                          \
    default: CASE(Q6_K); break;                                                                            \
    }
#define BY_GROUPS(R, MAX_GROUPS, CALL)                                                                     \
    if (groups == 1 || MAX_GROUPS(R) == 1) CALL(R, 1);                                                     \
    else if (groups == 2 || MAX_GROUPS(R) == 2) CALL(R, 2);                                                \
    else if (groups == 3 || MAX_GROUPS(R) == 3) CALL(R, 3);                                                \
    else CALL(R, 4);
#define ROWS_CASE(R, MAX_ROWS, MAX_GROUPS, CALL)                                                           \
    case R:                                                                                                \
        if ((R) <= (MAX_ROWS)) { BY_GROUPS(R, MAX_GROUPS, CALL) }                                          \
        break;
#define BY_ROWS(MAX_ROWS, MAX_GROUPS, CALL)                                                                \
    switch (rows) {                                                                                        \
        ROWS_CASE(1, MAX_ROWS, MAX_GROUPS, CALL) ROWS_CASE(2, MAX_ROWS, MAX_GROUPS, CALL)                  \
        ROWS_CASE(3, MAX_ROWS, MAX_GROUPS, CALL) ROWS_CASE(4, MAX_ROWS, MAX_GROUPS, CALL)                  \
        ROWS_CASE(5, MAX_ROWS, MAX_GROUPS, CALL) ROWS_CASE(6, MAX_ROWS, MAX_GROUPS, CALL)                  \
        ROWS_CASE(7, MAX_ROWS, MAX_GROUPS, CALL) ROWS_CASE(8, MAX_ROWS, MAX_GROUPS, CALL)                  \
    }

/* A batch's activations, prepared once per call: float32 rows and their sums per 32 values (FLOAT32),
 * rounded to int8 with their scales and scaled sums per 32 (INT8), rounded twice with the scales per
 * block of the type and each rounding's integer sums per 16 values, held as floats (INT8X2: xq, xd, xb
 * the first, xq2, xd2, xb2 the second, and both together per 32 values in xc). */
typedef struct {
    const float *x, *xsum;
    const int8_t *xq, *xq2;
    const float *xd, *xs, *xd2, *xb, *xb2, *xc;
} activations_t;

static void float_direct(int t, int rows, int groups, const activations_t *a, int64_t m, int64_t K,
                         const uint8_t *w, int64_t group_bytes, float *out) {
    const float *x = a->x + m * K, *xsum = a->xsum + m * (K / 32);
#define CALL(R, G) float_rows(T, R, G, x, K, w, group_bytes, xsum, out)
#define CASE(type) { enum { T = type }; BY_ROWS(FLOAT_ROWS, FLOAT_GROUPS, CALL) }
    BY_TYPE(CASE)
#undef CALL
#undef CASE
}

static void int8_direct(int t, int rows, int groups, const activations_t *a, int64_t m, int64_t K,
                        const uint8_t *w, int64_t group_bytes, float *out) {
    const int8_t *xq = a->xq + m * K;
    const float *xd = a->xd + m * (K / 32), *xs = a->xs + m * (K / 32);
#define CALL(R, G) int8_rows(T, R, G, xq, xd, xs, K, w, group_bytes, out)
#define CASE(type) { enum { T = type }; BY_ROWS(INT8_ROWS, INT8_GROUPS, CALL) }
    BY_TYPE(CASE)
#undef CALL
#undef CASE
}

static void int8x2_direct(int t, int rows, int groups, const activations_t *a, int64_t m, int64_t K,
                          const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t scales = K / block_values(t);
    const int8_t *xq1 = a->xq + m * K, *xq2 = a->xq2 + m * K;
    const float *xd1 = a->xd + m * scales, *xd2 = a->xd2 + m * scales, *xb1 = a->xb + m * (K / 16), *xb2 = a->xb2 + m * (K / 16);
    const float *xc = a->xc + m * (K / 32);
#define CALL(R, G) int8x2_rows(T, R, G, xq1, xq2, xd1, xd2, xb1, xb2, xc, K, w, group_bytes, out)
#define CASE(type) { enum { T = type }; BY_ROWS(INT8X2_ROWS, INT8X2_GROUPS, CALL) }
    BY_TYPE(CASE)
#undef CALL
#undef CASE
}

/* Copies the valid columns of a [rows][width] block of outputs into y at column n0. */
static inline void put(const float *out, int rows, int64_t width, float *y, int64_t N, int64_t n0) {
    const int64_t valid = N - n0 < width ? N - n0 : width;
    for (int r = 0; r < rows; r++) memcpy(y + r * N + n0, out + r * width, (size_t)valid * sizeof(float));
}

/* The direct passes, run by each thread of the team: an equal run of groups each (not of pass-sized
 * steps: 36 groups are 18 and 18, not 20 and 16; a group's outputs do not depend on the groups beside
 * it), taken `pass` groups side by side, rows `per_call` at a time. */
static void direct_passes(int mode, int t, const activations_t *a, int64_t M, int64_t K, const uint8_t *packed,
                          int64_t groups, int64_t group_bytes, int64_t chunk, float *y, int64_t N) {
    const int per_call = mode == FLOAT32 ? FLOAT_ROWS : mode == INT8 ? INT8_ROWS : INT8X2_ROWS;
    const int first_call = M < per_call ? (int)M : per_call;
    const int64_t pass = mode == FLOAT32 ? FLOAT_GROUPS(first_call) : mode == INT8 ? INT8_GROUPS(first_call)
                       : INT8X2_GROUPS(first_call);
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t start = groups * me / threads, end = groups * (me + 1) / threads;
    float out[MAX_OUT];
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
        for (int64_t g = start; g < end; g += pass) {
            const int n = end - g < pass ? (int)(end - g) : (int)pass;
            for (int64_t m = m0; m < m1; m += per_call) {
                const int rows = m1 - m < per_call ? (int)(m1 - m) : per_call;
                const uint8_t *w = packed + g * group_bytes;
                if (mode == FLOAT32) float_direct(t, rows, n, a, m, K, w, group_bytes, out);
                else if (mode == INT8) int8_direct(t, rows, n, a, m, K, w, group_bytes, out);
                else int8x2_direct(t, rows, n, a, m, K, w, group_bytes, out);
                put(out, rows, (int64_t)n * GROUP, y + m * N, N, g * GROUP);
            }
        }
    }
}

#ifdef TILE_ROWS

static void unpack_block(int t, const uint8_t *block, float *qf, float *ab) {
#define CASE(type) float_unpack(type, block, qf, ab)
    BY_TYPE(CASE)
#undef CASE
}

/* One tile per (rows, groups) and kind of type (its sub-block and whether it has an offset). */
static void tile_any(int t, int rows, int groups, const float *x, int64_t K, const float *qf, const float *ab,
                     const float *xsum, float *out) {
#define TILE_GROUPS_OF(R) TILE_GROUPS
#define CALL(R, G) float_tile(R, G, sub_values(T), has_offset(T), x, K, qf, ab, xsum, out)
#define CASE(type) { enum { T = type }; BY_ROWS(TILE_ROWS, TILE_GROUPS_OF, CALL) }
    switch (t) {
    case Q8: case Q5_0: CASE(Q8); break;
    case Q6_K: CASE(Q6_K); break;
    default: CASE(Q4); break;
    }
#undef CASE
#undef CALL
#undef TILE_GROUPS_OF
}

/* The tile passes (FLOAT32 mode, batches past FLOAT_ROWS_LIMIT), run by each thread of the team: each
 * tile of groups unpacked once (asking for the next tile's bytes as it goes), then register tiles of
 * rows over it, the rows in chunks that stay in L2 while every group's weights pass over them. */
static int tile_passes(int t, const activations_t *a, int64_t M, int64_t K, const uint8_t *packed, int64_t groups,
                       int64_t group_bytes, float *y, int64_t N) {
    const int64_t blocks = K / block_values(t), bytes = block_bytes(FLOAT32, t), scales = K / sub_values(t) * 32;
    int64_t chunk = CHUNK_BYTES / (K * (int64_t)sizeof(float)) / TILE_ROWS * TILE_ROWS;
    if (chunk < TILE_ROWS) chunk = TILE_ROWS;
    float *qf = aligned_alloc(64, (size_t)(TILE_GROUPS * K * 16) * sizeof(float));
    float *ab = aligned_alloc(64, (size_t)(TILE_GROUPS * scales) * sizeof(float));
    float out[MAX_OUT];
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g += TILE_GROUPS) {
            if (qf == NULL || ab == NULL) continue;
            const int n = groups - g < TILE_GROUPS ? (int)(groups - g) : TILE_GROUPS;
            for (int i = 0; i < n; i++) {
                const uint8_t *group = packed + (g + i) * group_bytes;
                for (int64_t b = 0; b < blocks; b++) {
                    prefetch_here(group + TILE_GROUPS * group_bytes + b * bytes, bytes);
                    unpack_block(t, group + b * bytes, qf + i * K * 16 + b * block_values(t) * 16,
                                 ab + i * scales + b * (block_values(t) / sub_values(t)) * 32);
                }
            }
            for (int64_t m = m0; m < m1; m += TILE_ROWS) {
                const int rows = m1 - m < TILE_ROWS ? (int)(m1 - m) : TILE_ROWS;
                tile_any(t, rows, n, a->x + m * K, K, qf, ab, a->xsum + m * (K / 32), out);
                put(out, rows, (int64_t)n * 16, y + m * N, N, g * 16);
            }
        }
    }
    const int failed = qf == NULL || ab == NULL;
    free(qf);
    free(ab);
    return failed;
}

#endif

static int matmul(int mode, int t, const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    if (K % block_values(t) != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t groups = (N + GROUP - 1) / GROUP, blocks = K / 32;
    const int64_t group_bytes = K / block_values(t) * block_bytes(mode, t);
    const int64_t B = block_values(t), scales = K / B; /* INT8X2's blocks of activations: the type's */
    float *xsum = NULL, *xd = NULL, *xs = NULL, *xd2 = NULL, *xb = NULL, *xb2 = NULL, *xc = NULL;
    int8_t *xq = NULL, *xq2 = NULL;
    int missing = 0;
    if (mode == FLOAT32) missing |= (xsum = malloc((size_t)(M * blocks) * sizeof(float))) == NULL;
    if (mode == INT8) {
        missing |= (xq = malloc((size_t)(M * K))) == NULL;
        missing |= (xd = malloc((size_t)(M * blocks) * sizeof(float))) == NULL;
        missing |= (xs = malloc((size_t)(M * blocks) * sizeof(float))) == NULL;
    }
    if (mode == INT8X2) {
        missing |= (xq = malloc((size_t)(M * K))) == NULL || (xq2 = malloc((size_t)(M * K))) == NULL;
        missing |= (xd = malloc((size_t)(M * scales) * sizeof(float))) == NULL;
        missing |= (xd2 = malloc((size_t)(M * scales) * sizeof(float))) == NULL;
        missing |= (xb = malloc((size_t)(M * K / 16) * sizeof(float))) == NULL || (xb2 = malloc((size_t)(M * K / 16) * sizeof(float))) == NULL;
        missing |= (xc = malloc((size_t)(M * blocks) * sizeof(float))) == NULL;
    }
    if (missing) {
        free(xsum), free(xq), free(xd), free(xs), free(xq2), free(xd2), free(xb), free(xb2), free(xc);
        return -1;
    }
    const activations_t a = {x, xsum, xq, xq2, xd, xs, xd2, xb, xb2, xc};
    /* Integer rows (K bytes, twice for INT8X2) in chunks that stay in L2; FLOAT32 rows few enough to go
     * direct are one chunk. */
    int64_t chunk = mode == INT8 ? CHUNK_BYTES / K / INT8_ROWS * INT8_ROWS
                  : mode == INT8X2 ? CHUNK_BYTES / (2 * K) / INT8X2_ROWS * INT8X2_ROWS : M;
    if (chunk < 8) chunk = 8;
    int failed = 0;
#pragma omp parallel
    {
        if (mode == FLOAT32) {
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < M * blocks; i++) xsum[i] = block_sum(x + i * 32);
        }
        if (mode == INT8) {
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < M * blocks; i++) quantize_block(x + i * 32, xq + i * 32, xd + i, xs + i);
        }
        if (mode == INT8X2) {
            /* Blocks of 32 (Q4_0, Q4_1, Q8_0...) eight at a time where the ISA can, then any left one by one. */
            int64_t done = 0;
#ifdef QUANTIZE_PARTS8
            if (B == 32) {
                done = M * scales / 8 * 8;
#pragma omp for schedule(static) nowait
                for (int64_t i = 0; i < done; i += 8)
                    quantize_blocks2_8(x + i * B, xq + i * B, xq2 + i * B, xd + i, xd2 + i, xb + i * B / 16,
                                       xb2 + i * B / 16, xc + i * B / 32);
            }
#endif
#pragma omp for schedule(static) nowait
            for (int64_t i = done; i < M * scales; i++)
                quantize_block2(x + i * B, (int)B, xq + i * B, xq2 + i * B, xd + i, xd2 + i, xb + i * B / 16, xb2 + i * B / 16,
                                xc + i * B / 32);
        }
#pragma omp barrier
        if (mode != FLOAT32 || M <= FLOAT_ROWS_LIMIT) {
            direct_passes(mode, t, &a, M, K, packed, groups, group_bytes, chunk, y, N);
        } else {
#ifdef TILE_ROWS
            if (tile_passes(t, &a, M, K, packed, groups, group_bytes, y, N)) failed = 1;
#endif
        }
    }
    free(xsum), free(xq), free(xd), free(xs), free(xq2), free(xd2), free(xb), free(xb2), free(xc);
    return failed ? -1 : 0;
}

/* The table: one entry per (activation mode, block type), each a function of the same signature. */
#define FUNCTIONS(type, name, ggml_types)                                                                  \
    static int float32_##type(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) { \
        return matmul(FLOAT32, type, x, M, K, packed, N, y);                                               \
    }                                                                                                      \
    static int int8_##type(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) { \
        return matmul(INT8, type, x, M, K, packed, N, y);                                                  \
    }                                                                                                      \
    static int int8x2_##type(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) { \
        return matmul(INT8X2, type, x, M, K, packed, N, y);                                                \
    }
BLOCK_TYPES(FUNCTIONS)
#define FLOAT32_ENTRY(type, name, ggml_types) {"float32_" name, ggml_types, FLOAT32, GROUP, float32_##type},
#define INT8_ENTRY(type, name, ggml_types) {"int8_" name, ggml_types, INT8, GROUP, int8_##type},
#define INT8X2_ENTRY(type, name, ggml_types) {"int8x2_" name, ggml_types, INT8X2, GROUP, int8x2_##type},
const matmul_kernel_t MATMUL_KERNELS[] = {BLOCK_TYPES(FLOAT32_ENTRY) BLOCK_TYPES(INT8_ENTRY) BLOCK_TYPES(INT8X2_ENTRY)};
const int64_t MATMUL_KERNEL_COUNT = sizeof(MATMUL_KERNELS) / sizeof(MATMUL_KERNELS[0]);
