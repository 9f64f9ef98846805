/* y = x @ W.T with W kept in the GGUF file's own blocks of 32 weights, repacked for AVX2.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of 32.
 * W is packed in groups of 16 output rows (N padded with zero rows to a multiple of 16); for
 * each group, its K / 32 blocks follow one another:
 *   Q4 (from Q4_0 and Q4_1): d[16] float16, m[16] float16, then 16 pairs of k, 16 bytes each:
 *       byte n of pair j holds q(n, 2j) in its low nibble and q(n, 2j + 1) in its high nibble.
 *       w = fma(d, q, m) (Q4_0 is m = -8 d): the very float32 value the file dequantizes to.
 *   Q8 (from Q8_0): d[16] float16, then 32 rows of 16 int8 (k-major); w = d * q, exact.
 *
 * Every output is one float32 fma chain over k in order, whatever M is and whichever path
 * computes it: a row's result does not depend on the rows batched with it. Compiled without
 * -ffast-math so that the compiler keeps it so.
 * Returns 0, or -1 where this build has no AVX2/FMA/F16C (the caller then keeps float weights).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP 16
#define BLOCK 32
#define Q4_BLOCK_BYTES (2 * GROUP * 2 + GROUP * BLOCK / 2)
#define Q8_BLOCK_BYTES (GROUP * 2 + GROUP * BLOCK)
#define MAX_ROWS 6 /* rows of x per register tile: 12 accumulators + 2 weights + 1 broadcast */
#define CHUNK_BYTES (256 << 10) /* rows of x per pass over the weights: about half of L2 */

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define INLINE static inline __attribute__((always_inline))

/* The 32 x 16 weights of one block of a group, as float32 [k][16] into w. */
INLINE void dequant_q4(const uint8_t *block, float *restrict w) {
    const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
    const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
    const __m256 m0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
    const __m256 m1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
    const __m256i low = _mm256_set1_epi32(15);
    const uint8_t *q = block + 64;
    for (int j = 0; j < BLOCK / 2; j++) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * j));
        const __m256i a = _mm256_cvtepu8_epi32(bytes), b = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
        float *row = w + 2 * j * GROUP;
        _mm256_storeu_ps(row, _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(_mm256_and_si256(a, low)), m0));
        _mm256_storeu_ps(row + 8, _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(_mm256_and_si256(b, low)), m1));
        _mm256_storeu_ps(row + 16, _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), m0));
        _mm256_storeu_ps(row + 24, _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), m1));
    }
}

INLINE void dequant_q8(const uint8_t *block, float *restrict w) {
    const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
    const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
    const uint8_t *q = block + 32;
    for (int k = 0; k < BLOCK; k++) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * k));
        _mm256_storeu_ps(w + k * GROUP, _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))));
        _mm256_storeu_ps(w + k * GROUP + 8,
                         _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)))));
    }
}

/* rows (1..MAX_ROWS) rows of x times the group's dequantized weights w [K][16]; out [rows][16]. */
INLINE void tile(int rows, const float *x, int64_t K, const float *restrict w, float *out) {
    __m256 acc[MAX_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const __m256 w0 = _mm256_loadu_ps(w + k * GROUP), w1 = _mm256_loadu_ps(w + k * GROUP + 8);
        for (int r = 0; r < rows; r++) {
            const __m256 xb = _mm256_broadcast_ss(x + r * K + k);
            acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_ps(out + r * GROUP, acc[r][0]);
        _mm256_storeu_ps(out + r * GROUP + 8, acc[r][1]);
    }
}

/* One call per row count, so that each is unrolled with its accumulators in registers. */
static void tile_any(int rows, const float *x, int64_t K, const float *w, float *out) {
    switch (rows) {
    case 1: tile(1, x, K, w, out); break;
    case 2: tile(2, x, K, w, out); break;
    case 3: tile(3, x, K, w, out); break;
    case 4: tile(4, x, K, w, out); break;
    case 5: tile(5, x, K, w, out); break;
    default: tile(6, x, K, w, out); break;
    }
}

/* A single row streams each block straight from its dequantized registers: no weight buffer.
 * The same fma chain per output as tile(), so its result is the same to the bit. GROUPS groups
 * (16 outputs each) go side by side, so that 2 * GROUPS independent chains hide the fma latency. */
#define ROW_GROUPS 4

INLINE void row_q4(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   float *out) {
    __m256 acc[ROW_GROUPS][2];
    const __m256i low = _mm256_set1_epi32(15);
    for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256 d[ROW_GROUPS][2], m[ROW_GROUPS][2];
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q4_BLOCK_BYTES;
            d[g][0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
            d[g][1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
            m[g][0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
            m[g][1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
        }
        const float *xs = x + b * BLOCK;
        for (int j = 0; j < BLOCK / 2; j++) {
            const __m256 x0 = _mm256_broadcast_ss(xs + 2 * j), x1 = _mm256_broadcast_ss(xs + 2 * j + 1);
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q4_BLOCK_BYTES + 64;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * j));
                const __m256i a = _mm256_cvtepu8_epi32(bytes), c = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
                acc[g][0] = _mm256_fmadd_ps(
                    x0, _mm256_fmadd_ps(d[g][0], _mm256_cvtepi32_ps(_mm256_and_si256(a, low)), m[g][0]), acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(
                    x0, _mm256_fmadd_ps(d[g][1], _mm256_cvtepi32_ps(_mm256_and_si256(c, low)), m[g][1]), acc[g][1]);
                acc[g][0] = _mm256_fmadd_ps(
                    x1, _mm256_fmadd_ps(d[g][0], _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), m[g][0]), acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(
                    x1, _mm256_fmadd_ps(d[g][1], _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)), m[g][1]), acc[g][1]);
            }
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm256_storeu_ps(out + g * GROUP, acc[g][0]);
        _mm256_storeu_ps(out + g * GROUP + 8, acc[g][1]);
    }
}

INLINE void row_q8(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   float *out) {
    __m256 acc[ROW_GROUPS][2];
    for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256 d[ROW_GROUPS][2];
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q8_BLOCK_BYTES;
            d[g][0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
            d[g][1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
        }
        const float *xs = x + b * BLOCK;
        for (int k = 0; k < BLOCK; k++) {
            const __m256 xk = _mm256_broadcast_ss(xs + k);
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q8_BLOCK_BYTES + 32;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * k));
                acc[g][0] = _mm256_fmadd_ps(
                    xk, _mm256_mul_ps(d[g][0], _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))), acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(
                    xk, _mm256_mul_ps(d[g][1], _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)))),
                    acc[g][1]);
            }
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm256_storeu_ps(out + g * GROUP, acc[g][0]);
        _mm256_storeu_ps(out + g * GROUP + 8, acc[g][1]);
    }
}

/* Up to ROW_GROUPS groups of one row, with the group count a constant in each copy. */
static void row_any(int q8, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    float *out) {
#define ROW(n) (q8 ? row_q8(n, x, K, group, group_bytes, out) : row_q4(n, x, K, group, group_bytes, out))
    switch (groups) {
    case 1: ROW(1); break;
    case 2: ROW(2); break;
    case 3: ROW(3); break;
    default: ROW(4); break;
    }
#undef ROW
}

/* Copies the valid columns of a [rows][16] tile into y. */
static inline void put(const float *tile_out, int rows, float *y, int64_t N, int64_t n0) {
    const int64_t width = N - n0 < GROUP ? N - n0 : GROUP;
    for (int r = 0; r < rows; r++) memcpy(y + r * N + n0, tile_out + r * GROUP, width * sizeof(float));
}

static int matmul(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y, int q8) {
    if (K % BLOCK != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t groups = (N + GROUP - 1) / GROUP;
    const int64_t group_bytes = (K / BLOCK) * (q8 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES);
    int64_t chunk = CHUNK_BYTES / (K * (int64_t)sizeof(float)) / MAX_ROWS * MAX_ROWS;
    if (chunk < MAX_ROWS) chunk = MAX_ROWS;
    int failed = 0;
#pragma omp parallel
    {
        float *w = M > 1 ? aligned_alloc(32, (size_t)K * GROUP * sizeof(float)) : NULL;
        float out[MAX_ROWS * GROUP > ROW_GROUPS * GROUP ? MAX_ROWS * GROUP : ROW_GROUPS * GROUP];
        if (M > 1 && w == NULL) failed = 1;
        if (M == 1) {
#pragma omp for schedule(static)
            for (int64_t g = 0; g < groups; g += ROW_GROUPS) {
                const int n = groups - g < ROW_GROUPS ? (int)(groups - g) : ROW_GROUPS;
                row_any(q8, n, x, K, packed + g * group_bytes, group_bytes, out);
                for (int i = 0; i < n; i++) put(out + i * GROUP, 1, y, N, (g + i) * GROUP);
            }
        }
        /* Rows in chunks that stay in L2 while every group's weights pass over them. */
        for (int64_t m0 = 0; M > 1 && m0 < M; m0 += chunk) {
            const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *group = packed + g * group_bytes;
                if (w == NULL) continue;
                for (int64_t b = 0; b < K / BLOCK; b++) {
                    if (q8) dequant_q8(group + b * Q8_BLOCK_BYTES, w + b * BLOCK * GROUP);
                    else dequant_q4(group + b * Q4_BLOCK_BYTES, w + b * BLOCK * GROUP);
                }
                for (int64_t m = m0; m < m1; m += MAX_ROWS) {
                    const int rows = m1 - m < MAX_ROWS ? (int)(m1 - m) : MAX_ROWS;
                    tile_any(rows, x + m * K, K, w, out);
                    put(out, rows, y + m * N, N, g * GROUP);
                }
            }
        }
        free(w);
    }
    return failed ? -1 : 0;
}

int quant_matmul_q4(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 0);
}

int quant_matmul_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 1);
}

#else

int quant_matmul_q4(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return -1;
}

int quant_matmul_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return -1;
}

#endif
