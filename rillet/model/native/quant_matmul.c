/* y = x @ W.T with W kept in the GGUF file's own blocks of 32 weights, repacked.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of 32.
 * W is packed in groups of 16 output rows (N padded with zero rows to a multiple of 16); for
 * each group, its K / 32 blocks follow one another:
 *   Q4 (from Q4_0 and Q4_1): d[16] float16, m[16] float16, then 16 pairs of k, 16 bytes each:
 *       byte n of pair j holds q(n, 2j) in its low nibble and q(n, 2j + 1) in its high nibble.
 *       The weight is d q + m (Q4_0 is m = -8 d), the file's own value.
 *   Q8 (from Q8_0): d[16] float16, then 32 rows of 16 int8 (k-major); the weight is d q.
 *
 * Each block adds d * (sum of x q over its 32 k) + m * (sum of x over them) to an output, as
 * llama.cpp's kernels do: the 4-bit integers are multiplied as they are, without first
 * scaling each weight. Every sum runs in one fixed order, whatever M is and whichever path
 * computes it, so a row's result does not depend on the rows batched with it. Compiled without
 * -ffast-math and without fp contraction so that the compiler keeps that order.
 * Four code paths (isa.h), each output's sums the same on all: AVX-512 holds a group's 16 outputs in
 * one register, AVX2 in two, NEON in four, portable C in an array (fmaf where the vector paths fuse); so their
 * results are identical bit for bit. Returns 0, or -1 (K not a multiple of 32, out of memory).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "block_sum.h"
#include "float_tiles.h"

#define BLOCK 32
#define Q4_BLOCK_BYTES (2 * GROUP * 2 + GROUP * BLOCK / 2)
#define Q8_BLOCK_BYTES (GROUP * 2 + GROUP * BLOCK)
#define INLINE static inline __attribute__((always_inline))

const char *quant_matmul_isa(void) { return RILLET_ISA_NAME; }

#ifdef RILLET_AVX2
#include <immintrin.h>

static inline __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }


/* One block's 32 x 16 integers of a group as float32 [k][16] into qf; its d and m into dm[32]. */
INLINE void unpack_q4(const uint8_t *block, float *restrict qf, float *restrict dm) {
    _mm256_storeu_ps(dm, half8(block));
    _mm256_storeu_ps(dm + 8, half8(block + 16));
    _mm256_storeu_ps(dm + 16, half8(block + 32));
    _mm256_storeu_ps(dm + 24, half8(block + 48));
    const __m256i low = _mm256_set1_epi32(15);
    const uint8_t *q = block + 64;
    for (int j = 0; j < BLOCK / 2; j++) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * j));
        const __m256i a = _mm256_cvtepu8_epi32(bytes), b = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
        float *row = qf + 2 * j * GROUP;
        _mm256_storeu_ps(row, _mm256_cvtepi32_ps(_mm256_and_si256(a, low)));
        _mm256_storeu_ps(row + 8, _mm256_cvtepi32_ps(_mm256_and_si256(b, low)));
        _mm256_storeu_ps(row + 16, _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)));
        _mm256_storeu_ps(row + 24, _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)));
    }
}

INLINE void unpack_q8(const uint8_t *block, float *restrict qf, float *restrict dm) {
    _mm256_storeu_ps(dm, half8(block));
    _mm256_storeu_ps(dm + 8, half8(block + 16));
    _mm256_storeu_ps(dm + 16, _mm256_setzero_ps());
    _mm256_storeu_ps(dm + 24, _mm256_setzero_ps());
    const uint8_t *q = block + 32;
    for (int k = 0; k < BLOCK; k++) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * k));
        _mm256_storeu_ps(qf + k * GROUP, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
        _mm256_storeu_ps(qf + k * GROUP + 8, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))));
    }
}

/* acc = fma(m, xs, fma(d, partial, acc)): a block's sums folded into an output. */
static inline __m256 fold(__m256 acc, __m256 d, __m256 partial, __m256 m, __m256 xs) {
    return _mm256_fmadd_ps(m, xs, _mm256_fmadd_ps(d, partial, acc));
}

#ifdef RILLET_AVX512

static inline __m512 half16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* AVX2's fold, 16 outputs at once. */
static inline __m512 fold16(__m512 acc, __m512 d, __m512 partial, __m512 m, __m512 xs) {
    return _mm512_fmadd_ps(m, xs, _mm512_fmadd_ps(d, partial, acc));
}

/* rows (1..MAX_ROWS) rows of x times groups (1..TILE_GROUPS) groups' unpacked blocks; out
 * [rows][groups * 16]. Group i's qf: [K][16] integers as float at qf + i K 16; its dm: [K / 32][32]
 * d then m at dm + i K; xsum: [rows][K / 32]. Two groups a tile load two weights for each
 * broadcast of x: fewer loads per multiply-add than one group of more rows. */
INLINE void tile(int rows, int groups, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict dm, const float *xsum, float *out) {
    __m512 acc[MAX_ROWS][TILE_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m512 p[MAX_ROWS][TILE_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) p[r][g] = _mm512_setzero_ps();
        for (int k = 0; k < BLOCK; k++) {
            __m512 w[TILE_GROUPS];
            for (int g = 0; g < groups; g++) w[g] = _mm512_loadu_ps(qf + g * K * GROUP + (b * BLOCK + k) * GROUP);
            for (int r = 0; r < rows; r++) {
                const __m512 xk = _mm512_set1_ps(x[r * K + b * BLOCK + k]);
                for (int g = 0; g < groups; g++) p[r][g] = _mm512_fmadd_ps(xk, w[g], p[r][g]);
            }
        }
        for (int g = 0; g < groups; g++) {
            const float *s = dm + g * K + b * 32;
            const __m512 d = _mm512_loadu_ps(s), m = _mm512_loadu_ps(s + 16);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(acc[r][g], d, p[r][g], m, _mm512_set1_ps(xsum[r * (K / BLOCK) + b]));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

/* rows (1..FEW_ROWS) rows read each block's integers straight into their sums, converted once for
 * all of them, groups side by side. A single row is rows 1 (row_q4, row_q8 below); every row's sums
 * are the same fused steps in the same order whatever the row count, so a row's result is the one it
 * gets alone. Passes of 4 groups for up to two rows, 2 for up to four, 1 for more, so that the sums
 * stay in registers. */
#define FEW_ROWS 8
#define FEW_ROWS_LIMIT 32 /* batches up to this many rows take passes of FEW_ROWS (measured: as fast as tiles at 64) */
#define FEW_ROWS_GROUPS(rows) ((rows) <= 2 ? 4 : (rows) <= 4 ? 2 : 1)
_Static_assert(8 * GROUP <= MAX_ROWS * TILE_GROUPS * GROUP, "matmul's out buffer holds a pass of a few rows");

INLINE void rows_q4(int rows, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    const float *xsum, float *out) {
    const int64_t blocks = K / BLOCK;
    const __m512i low = _mm512_set1_epi32(15);
    __m512 acc[FEW_ROWS][4];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512 p[FEW_ROWS][4];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g] = _mm512_setzero_ps();
            prefetch_pass(group + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        }
        for (int j = 0; j < BLOCK / 2; j++) {
            __m512 x0[FEW_ROWS], x1[FEW_ROWS];
            for (int r = 0; r < rows; r++) {
                x0[r] = _mm512_set1_ps(x[r * K + b * BLOCK + 2 * j]);
                x1[r] = _mm512_set1_ps(x[r * K + b * BLOCK + 2 * j + 1]);
            }
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q4_BLOCK_BYTES + 64;
                const __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16 * j)));
                const __m512 w0 = _mm512_cvtepi32_ps(_mm512_and_si512(a, low));
                const __m512 w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(a, 4));
                for (int r = 0; r < rows; r++) {
                    p[r][g] = _mm512_fmadd_ps(x0[r], w0, p[r][g]);
                    p[r][g] = _mm512_fmadd_ps(x1[r], w1, p[r][g]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q4_BLOCK_BYTES;
            const __m512 d = half16(block), m = half16(block + 32);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(acc[r][g], d, p[r][g], m, _mm512_set1_ps(xsum[r * blocks + b]));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

INLINE void rows_q8(int rows, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    const float *xsum, float *out) {
    const int64_t blocks = K / BLOCK;
    const __m512 zero = _mm512_setzero_ps();
    __m512 acc[FEW_ROWS][4];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = zero;
    for (int64_t b = 0; b < blocks; b++) {
        __m512 p[FEW_ROWS][4];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g] = zero;
            prefetch_pass(group + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
        }
        for (int k = 0; k < BLOCK; k++) {
            __m512 xk[FEW_ROWS];
            for (int r = 0; r < rows; r++) xk[r] = _mm512_set1_ps(x[r * K + b * BLOCK + k]);
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q8_BLOCK_BYTES + 32;
                const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16 * k))));
                for (int r = 0; r < rows; r++) p[r][g] = _mm512_fmadd_ps(xk[r], w, p[r][g]);
            }
        }
        for (int g = 0; g < groups; g++) {
            const __m512 d = half16(group + g * group_bytes + b * Q8_BLOCK_BYTES);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(acc[r][g], d, p[r][g], zero, _mm512_set1_ps(xsum[r * blocks + b]));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

INLINE void row_q4(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    rows_q4(1, groups, x, K, group, group_bytes, xsum, out);
}

INLINE void row_q8(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    rows_q8(1, groups, x, K, group, group_bytes, xsum, out);
}

/* One call per row count and group count, so that each is unrolled with its sums in registers. */
static void rows_any(int q8, int rows, int groups, const float *x, int64_t K, const uint8_t *group,
                     int64_t group_bytes, const float *xsum, float *out) {
#define ROWS(r, n) (q8 ? rows_q8(r, n, x, K, group, group_bytes, xsum, out) : rows_q4(r, n, x, K, group, group_bytes, xsum, out))
#define GROUPS(r) (groups == 1 ? ROWS(r, 1) : groups == 2 ? ROWS(r, 2) : groups == 3 ? ROWS(r, 3) : ROWS(r, 4))
    switch (rows) {
    case 2: GROUPS(2); break;
    case 3: groups == 1 ? ROWS(3, 1) : ROWS(3, 2); break;
    case 4: groups == 1 ? ROWS(4, 1) : ROWS(4, 2); break;
    case 5: ROWS(5, 1); break;
    case 6: ROWS(6, 1); break;
    case 7: ROWS(7, 1); break;
    default: ROWS(8, 1); break;
    }
#undef GROUPS
#undef ROWS
}

#else

/* rows (1..MAX_ROWS) rows of x times a group's unpacked blocks; out [rows][16].
 * qf: [K][16] integers as float; dm: [K / 32][32] d then m; xsum: [rows][K / 32]. */
INLINE void tile(int rows, int groups, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict dm, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_ps(out + r * GROUP, _mm256_setzero_ps());
        _mm256_storeu_ps(out + r * GROUP + 8, _mm256_setzero_ps());
    }
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256 p[MAX_ROWS][2];
        for (int r = 0; r < rows; r++) p[r][0] = p[r][1] = _mm256_setzero_ps();
        for (int k = 0; k < BLOCK; k++) {
            const float *w = qf + (b * BLOCK + k) * GROUP;
            const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
            for (int r = 0; r < rows; r++) {
                const __m256 xb = _mm256_broadcast_ss(x + r * K + b * BLOCK + k);
                p[r][0] = _mm256_fmadd_ps(xb, w0, p[r][0]);
                p[r][1] = _mm256_fmadd_ps(xb, w1, p[r][1]);
            }
        }
        const float *s = dm + b * 32;
        const __m256 d0 = _mm256_loadu_ps(s), d1 = _mm256_loadu_ps(s + 8);
        const __m256 m0 = _mm256_loadu_ps(s + 16), m1 = _mm256_loadu_ps(s + 24);
        for (int r = 0; r < rows; r++) {
            const __m256 xs = _mm256_broadcast_ss(xsum + r * (K / BLOCK) + b);
            float *o = out + r * GROUP;
            _mm256_storeu_ps(o, fold(_mm256_loadu_ps(o), d0, p[r][0], m0, xs));
            _mm256_storeu_ps(o + 8, fold(_mm256_loadu_ps(o + 8), d1, p[r][1], m1, xs));
        }
    }
}

/* A single row reads each block's integers straight into its sums: no unpacked buffer, and
 * groups side by side for independent chains. The same sums in the same order as tile(). */
INLINE void row_q4(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    __m256 acc[ROW_GROUPS][2];
    const __m256i low = _mm256_set1_epi32(15);
    for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256 p[ROW_GROUPS][2];
        for (int g = 0; g < groups; g++) {
            p[g][0] = p[g][1] = _mm256_setzero_ps();
            prefetch_pass(group + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        }
        const float *xs = x + b * BLOCK;
        for (int j = 0; j < BLOCK / 2; j++) {
            const __m256 x0 = _mm256_broadcast_ss(xs + 2 * j), x1 = _mm256_broadcast_ss(xs + 2 * j + 1);
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q4_BLOCK_BYTES + 64;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * j));
                const __m256i a = _mm256_cvtepu8_epi32(bytes), c = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
                p[g][0] = _mm256_fmadd_ps(x0, _mm256_cvtepi32_ps(_mm256_and_si256(a, low)), p[g][0]);
                p[g][1] = _mm256_fmadd_ps(x0, _mm256_cvtepi32_ps(_mm256_and_si256(c, low)), p[g][1]);
                p[g][0] = _mm256_fmadd_ps(x1, _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), p[g][0]);
                p[g][1] = _mm256_fmadd_ps(x1, _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)), p[g][1]);
            }
        }
        const __m256 s = _mm256_broadcast_ss(xsum + b);
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q4_BLOCK_BYTES;
            acc[g][0] = fold(acc[g][0], half8(block), p[g][0], half8(block + 32), s);
            acc[g][1] = fold(acc[g][1], half8(block + 16), p[g][1], half8(block + 48), s);
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm256_storeu_ps(out + g * GROUP, acc[g][0]);
        _mm256_storeu_ps(out + g * GROUP + 8, acc[g][1]);
    }
}

INLINE void row_q8(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    __m256 acc[ROW_GROUPS][2];
    const __m256 zero = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = zero;
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256 p[ROW_GROUPS][2];
        for (int g = 0; g < groups; g++) {
            p[g][0] = p[g][1] = zero;
            prefetch_pass(group + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
        }
        const float *xs = x + b * BLOCK;
        for (int k = 0; k < BLOCK; k++) {
            const __m256 xk = _mm256_broadcast_ss(xs + k);
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q8_BLOCK_BYTES + 32;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * k));
                p[g][0] = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), p[g][0]);
                p[g][1] = _mm256_fmadd_ps(
                    xk, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))), p[g][1]);
            }
        }
        const __m256 s = _mm256_broadcast_ss(xsum + b);
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q8_BLOCK_BYTES;
            acc[g][0] = fold(acc[g][0], half8(block), p[g][0], zero, s);
            acc[g][1] = fold(acc[g][1], half8(block + 16), p[g][1], zero, s);
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm256_storeu_ps(out + g * GROUP, acc[g][0]);
        _mm256_storeu_ps(out + g * GROUP + 8, acc[g][1]);
    }
}


/* A few rows (2..FEW_ROWS) at once, as the AVX-512 path does: each block's integers converted once
 * for every row, each row's sums exactly row_q4's and row_q8's. The sums of a block stay in
 * registers; the running totals wait in out between blocks (the same fused steps, so the same
 * numbers), which leaves registers for more rows. */
#define FEW_ROWS 6
#define FEW_ROWS_LIMIT 12 /* measured on Zen 5 with RILLET_ISA=avx2: tiles are as fast at 16, faster at 32 */
#define FEW_ROWS_GROUPS(rows) ((rows) <= 2 ? 2 : 1)
_Static_assert(6 * GROUP <= MAX_ROWS * TILE_GROUPS * GROUP, "matmul's out buffer holds a pass of a few rows");

INLINE void rows_q4(int rows, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    const float *xsum, float *out) {
    const int64_t blocks = K / BLOCK;
    const __m256i low = _mm256_set1_epi32(15);
    for (int i = 0; i < rows * groups * GROUP; i++) out[i] = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        __m256 p[FEW_ROWS][2][2];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g][0] = p[r][g][1] = _mm256_setzero_ps();
            prefetch_pass(group + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        }
        for (int j = 0; j < BLOCK / 2; j++) {
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q4_BLOCK_BYTES + 64;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * j));
                const __m256i a = _mm256_cvtepu8_epi32(bytes), c = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
                const __m256 a0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, low)), c0 = _mm256_cvtepi32_ps(_mm256_and_si256(c, low));
                const __m256 a1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), c1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4));
                for (int r = 0; r < rows; r++) {
                    const float *xs = x + r * K + b * BLOCK;
                    const __m256 x0 = _mm256_broadcast_ss(xs + 2 * j), x1 = _mm256_broadcast_ss(xs + 2 * j + 1);
                    p[r][g][0] = _mm256_fmadd_ps(x0, a0, p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x0, c0, p[r][g][1]);
                    p[r][g][0] = _mm256_fmadd_ps(x1, a1, p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x1, c1, p[r][g][1]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q4_BLOCK_BYTES;
            const __m256 d0 = half8(block), d1 = half8(block + 16), m0 = half8(block + 32), m1 = half8(block + 48);
            for (int r = 0; r < rows; r++) {
                const __m256 s = _mm256_broadcast_ss(xsum + r * blocks + b);
                float *o = out + (r * groups + g) * GROUP;
                _mm256_storeu_ps(o, fold(_mm256_loadu_ps(o), d0, p[r][g][0], m0, s));
                _mm256_storeu_ps(o + 8, fold(_mm256_loadu_ps(o + 8), d1, p[r][g][1], m1, s));
            }
        }
    }
}

INLINE void rows_q8(int rows, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    const float *xsum, float *out) {
    const int64_t blocks = K / BLOCK;
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < rows * groups * GROUP; i++) out[i] = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        __m256 p[FEW_ROWS][2][2];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g][0] = p[r][g][1] = zero;
            prefetch_pass(group + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
        }
        for (int k = 0; k < BLOCK; k++) {
            for (int g = 0; g < groups; g++) {
                const uint8_t *q = group + g * group_bytes + b * Q8_BLOCK_BYTES + 32;
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * k));
                const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
                for (int r = 0; r < rows; r++) {
                    const __m256 xk = _mm256_broadcast_ss(x + r * K + b * BLOCK + k);
                    p[r][g][0] = _mm256_fmadd_ps(xk, v0, p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(xk, v1, p[r][g][1]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q8_BLOCK_BYTES;
            const __m256 d0 = half8(block), d1 = half8(block + 16);
            for (int r = 0; r < rows; r++) {
                const __m256 s = _mm256_broadcast_ss(xsum + r * blocks + b);
                float *o = out + (r * groups + g) * GROUP;
                _mm256_storeu_ps(o, fold(_mm256_loadu_ps(o), d0, p[r][g][0], zero, s));
                _mm256_storeu_ps(o + 8, fold(_mm256_loadu_ps(o + 8), d1, p[r][g][1], zero, s));
            }
        }
    }
}

static void rows_any(int q8, int rows, int groups, const float *x, int64_t K, const uint8_t *group,
                     int64_t group_bytes, const float *xsum, float *out) {
#define ROWS(r, n) (q8 ? rows_q8(r, n, x, K, group, group_bytes, xsum, out) : rows_q4(r, n, x, K, group, group_bytes, xsum, out))
    switch (rows) {
    case 2: groups == 1 ? ROWS(2, 1) : ROWS(2, 2); break;
    case 3: ROWS(3, 1); break;
    case 4: ROWS(4, 1); break;
    case 5: ROWS(5, 1); break;
    default: ROWS(6, 1); break;
    }
#undef ROWS
}

#endif /* RILLET_AVX512 */

#elif defined(RILLET_NEON)

/* NEON: a group's 16 outputs in four registers, each lane one output's sums in the portable C path's
 * order (vfmaq where it has fmaf). A block's sums stay in registers; the outputs' totals in out. */
#include "neon_floats.h"

/* One block's 32 x 16 integers of a group as float32 [k][16] into qf; its d and m into dm[32]. */
INLINE void unpack_q4(const uint8_t *block, float *restrict qf, float *restrict dm) {
    for (int i = 0; i < 8; i++) vst1q_f32(dm + 4 * i, half4(block + 8 * i));
    for (int j = 0; j < BLOCK / 2; j++) {
        const uint8x16_t bytes = vld1q_u8(block + 64 + 16 * j);
        float32x4_t low[4], high[4];
        u8_floats(vandq_u8(bytes, vdupq_n_u8(15)), low);
        u8_floats(vshrq_n_u8(bytes, 4), high);
        for (int i = 0; i < 4; i++) {
            vst1q_f32(qf + 2 * j * GROUP + 4 * i, low[i]);
            vst1q_f32(qf + (2 * j + 1) * GROUP + 4 * i, high[i]);
        }
    }
}

INLINE void unpack_q8(const uint8_t *block, float *restrict qf, float *restrict dm) {
    for (int i = 0; i < 4; i++) vst1q_f32(dm + 4 * i, half4(block + 8 * i)), vst1q_f32(dm + 16 + 4 * i, vdupq_n_f32(0.0f));
    for (int k = 0; k < BLOCK; k++) {
        float32x4_t q[4];
        i8_floats(vld1q_s8((const int8_t *)block + 32 + 16 * k), q);
        for (int i = 0; i < 4; i++) vst1q_f32(qf + k * GROUP + 4 * i, q[i]);
    }
}

/* out[0..15] = fma(m, xs, fma(d, p, out)): a block's sums folded into a group's outputs. */
INLINE void fold(float *out, const float32x4_t d[4], const float32x4_t p[4], const float32x4_t m[4], float xs) {
    for (int i = 0; i < 4; i++)
        vst1q_f32(out + 4 * i, vfmaq_n_f32(vfmaq_f32(vld1q_f32(out + 4 * i), d[i], p[i]), m[i], xs));
}

/* rows (1..MAX_ROWS) rows of x times a group's unpacked blocks; out [rows][16].
 * qf: [K][16] integers as float; dm: [K / 32][32] d then m; xsum: [rows][K / 32]. */
INLINE void tile(int rows, int groups, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict dm, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    for (int n = 0; n < rows * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < K / BLOCK; b++) {
        float32x4_t p[MAX_ROWS][4];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < 4; i++) p[r][i] = vdupq_n_f32(0.0f);
        for (int k = 0; k < BLOCK; k++) {
            float32x4_t w[4];
            for (int i = 0; i < 4; i++) w[i] = vld1q_f32(qf + (b * BLOCK + k) * GROUP + 4 * i);
            for (int r = 0; r < rows; r++) {
                const float xk = x[r * K + b * BLOCK + k];
                for (int i = 0; i < 4; i++) p[r][i] = vfmaq_n_f32(p[r][i], w[i], xk);
            }
        }
        float32x4_t d[4], m[4];
        for (int i = 0; i < 4; i++) d[i] = vld1q_f32(dm + b * 32 + 4 * i), m[i] = vld1q_f32(dm + b * 32 + 16 + 4 * i);
        for (int r = 0; r < rows; r++) fold(out + r * GROUP, d, p[r], m, xsum[r * (K / BLOCK) + b]);
    }
}

/* A single row reads each block's integers straight into its sums, groups side by side. */
INLINE void row_q4(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    for (int n = 0; n < groups * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < K / BLOCK; b++) {
        float32x4_t p[ROW_GROUPS][4];
        for (int g = 0; g < groups; g++) {
            for (int i = 0; i < 4; i++) p[g][i] = vdupq_n_f32(0.0f);
            prefetch_pass(group + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        }
        const float *xs = x + b * BLOCK;
        for (int j = 0; j < BLOCK / 2; j++) {
            const float x0 = xs[2 * j], x1 = xs[2 * j + 1];
            for (int g = 0; g < groups; g++) {
                const uint8x16_t bytes = vld1q_u8(group + g * group_bytes + b * Q4_BLOCK_BYTES + 64 + 16 * j);
                float32x4_t low[4], high[4];
                u8_floats(vandq_u8(bytes, vdupq_n_u8(15)), low);
                u8_floats(vshrq_n_u8(bytes, 4), high);
                for (int i = 0; i < 4; i++) p[g][i] = vfmaq_n_f32(p[g][i], low[i], x0);
                for (int i = 0; i < 4; i++) p[g][i] = vfmaq_n_f32(p[g][i], high[i], x1);
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q4_BLOCK_BYTES;
            float32x4_t d[4], m[4];
            for (int i = 0; i < 4; i++) d[i] = half4(block + 8 * i), m[i] = half4(block + 32 + 8 * i);
            fold(out + g * GROUP, d, p[g], m, xsum[b]);
        }
    }
}

INLINE void row_q8(int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                   const float *xsum, float *out) {
    const float32x4_t zero[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int n = 0; n < groups * GROUP; n += 4) vst1q_f32(out + n, zero[0]);
    for (int64_t b = 0; b < K / BLOCK; b++) {
        float32x4_t p[ROW_GROUPS][4];
        for (int g = 0; g < groups; g++) {
            for (int i = 0; i < 4; i++) p[g][i] = zero[0];
            prefetch_pass(group + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
        }
        const float *xs = x + b * BLOCK;
        for (int k = 0; k < BLOCK; k++) {
            const float xk = xs[k];
            for (int g = 0; g < groups; g++) {
                float32x4_t q[4];
                i8_floats(vld1q_s8((const int8_t *)group + g * group_bytes + b * Q8_BLOCK_BYTES + 32 + 16 * k), q);
                for (int i = 0; i < 4; i++) p[g][i] = vfmaq_n_f32(p[g][i], q[i], xk);
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = group + g * group_bytes + b * Q8_BLOCK_BYTES;
            float32x4_t d[4];
            for (int i = 0; i < 4; i++) d[i] = half4(block + 8 * i);
            fold(out + g * GROUP, d, p[g], zero, xsum[b]); /* m = 0 as in the other paths: 0 * xs is added */
        }
    }
}

#else

/* Portable C: the vector paths' sums output by output, in their order (fmaf where they fuse). */
#include "half_float.h"


static void unpack_q4(const uint8_t *block, float *restrict qf, float *restrict dm) {
    for (int n = 0; n < 2 * GROUP; n++) dm[n] = half_to_float(block + 2 * n);
    for (int j = 0; j < BLOCK / 2; j++)
        for (int n = 0; n < GROUP; n++) {
            qf[2 * j * GROUP + n] = (float)(block[64 + 16 * j + n] & 15);
            qf[(2 * j + 1) * GROUP + n] = (float)(block[64 + 16 * j + n] >> 4);
        }
}

static void unpack_q8(const uint8_t *block, float *restrict qf, float *restrict dm) {
    for (int n = 0; n < GROUP; n++) dm[n] = half_to_float(block + 2 * n), dm[GROUP + n] = 0.0f;
    for (int k = 0; k < BLOCK; k++)
        for (int n = 0; n < GROUP; n++) qf[k * GROUP + n] = (float)(int8_t)block[32 + 16 * k + n];
}

static void tile(int rows, int groups, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict dm, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    for (int r = 0; r < rows; r++) {
        float acc[GROUP] = {0};
        for (int64_t b = 0; b < K / BLOCK; b++) {
            float p[GROUP] = {0};
            for (int k = 0; k < BLOCK; k++)
                for (int n = 0; n < GROUP; n++) p[n] = fmaf(x[r * K + b * BLOCK + k], qf[(b * BLOCK + k) * GROUP + n], p[n]);
            const float xs = xsum[r * (K / BLOCK) + b];
            for (int n = 0; n < GROUP; n++) acc[n] = fmaf(dm[b * 32 + GROUP + n], xs, fmaf(dm[b * 32 + n], p[n], acc[n]));
        }
        memcpy(out + r * GROUP, acc, sizeof(acc));
    }
}

/* A single row, one group at a time: the blocks unpacked as tile() reads them. */
static void row_blocks(int q8, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                       const float *xsum, float *out) {
    float qf[BLOCK * GROUP], dm[32];
    for (int g = 0; g < groups; g++) {
        float acc[GROUP] = {0};
        for (int64_t b = 0; b < K / BLOCK; b++) {
            if (q8) unpack_q8(group + g * group_bytes + b * Q8_BLOCK_BYTES, qf, dm);
            else unpack_q4(group + g * group_bytes + b * Q4_BLOCK_BYTES, qf, dm);
            float p[GROUP] = {0};
            for (int k = 0; k < BLOCK; k++)
                for (int n = 0; n < GROUP; n++) p[n] = fmaf(x[b * BLOCK + k], qf[k * GROUP + n], p[n]);
            for (int n = 0; n < GROUP; n++) acc[n] = fmaf(dm[GROUP + n], xsum[b], fmaf(dm[n], p[n], acc[n]));
        }
        memcpy(out + g * GROUP, acc, sizeof(acc));
    }
}
#define row_q4(groups, x, K, group, group_bytes, xsum, out) row_blocks(0, groups, x, K, group, group_bytes, xsum, out)
#define row_q8(groups, x, K, group, group_bytes, xsum, out) row_blocks(1, groups, x, K, group, group_bytes, xsum, out)

#endif

/* One call per row and group count, so that each is unrolled with its sums in registers. */
static void tile_any(int rows, int groups, const float *x, int64_t K, const float *qf, const float *dm,
                     const float *xsum, float *out) {
#define TILE(r) (groups == 1 ? tile(r, 1, x, K, qf, dm, xsum, out) : tile(r, TILE_GROUPS, x, K, qf, dm, xsum, out))
    switch (rows) {
    case 1: TILE(1); break;
    case 2: TILE(2); break;
    case 3: TILE(3); break;
    case 4: TILE(4); break;
    case 5: TILE(5); break;
    default: TILE(6); break;
    }
#undef TILE
}

/* Up to ROW_GROUPS groups of one row, with the group count a constant in each copy. */
static void row_any(int q8, int groups, const float *x, int64_t K, const uint8_t *group, int64_t group_bytes,
                    const float *xsum, float *out) {
#define ROW(n) (q8 ? row_q8(n, x, K, group, group_bytes, xsum, out) : row_q4(n, x, K, group, group_bytes, xsum, out))
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
    const int64_t groups = (N + GROUP - 1) / GROUP, blocks = K / BLOCK;
    const int64_t group_bytes = blocks * (q8 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES);
    int64_t chunk = CHUNK_BYTES / (K * (int64_t)sizeof(float)) / MAX_ROWS * MAX_ROWS;
    if (chunk < MAX_ROWS) chunk = MAX_ROWS;
    float *xsum = malloc((size_t)M * blocks * sizeof(float));
    if (xsum == NULL) return -1;
    int failed = 0;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M * blocks; i++) xsum[i] = block_sum(x + i * BLOCK);
        float out[MAX_ROWS * TILE_GROUPS * GROUP > ROW_GROUPS * GROUP ? MAX_ROWS * TILE_GROUPS * GROUP : ROW_GROUPS * GROUP];
        if (M == 1) {
            /* Each thread an equal run of groups (not of ROW_GROUPS-sized steps: 36 groups are 18 and
             * 18, not 20 and 16); a group's outputs do not depend on the groups beside it. */
            const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
            const int64_t end = groups * (me + 1) / threads;
            for (int64_t g = groups * me / threads; g < end; g += ROW_GROUPS) {
                const int n = end - g < ROW_GROUPS ? (int)(end - g) : ROW_GROUPS;
                row_any(q8, n, x, K, packed + g * group_bytes, group_bytes, xsum, out);
                for (int i = 0; i < n; i++) put(out + i * GROUP, 1, y, N, (g + i) * GROUP);
            }
#ifdef FEW_ROWS
        } else if (M <= FEW_ROWS_LIMIT) {
            /* A few rows read the weights as one row does, split the same way, FEW_ROWS rows at a time
             * over each pass of groups (whose weights the later rows find in cache). */
            const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
            const int64_t end = groups * (me + 1) / threads, pass = FEW_ROWS_GROUPS(M < FEW_ROWS ? M : FEW_ROWS);
            for (int64_t g = groups * me / threads; g < end; g += pass) {
                const int n = end - g < pass ? (int)(end - g) : (int)pass;
                for (int64_t m0 = 0; m0 < M; m0 += FEW_ROWS) {
                    const int rows = M - m0 < FEW_ROWS ? (int)(M - m0) : FEW_ROWS;
                    const uint8_t *weights = packed + g * group_bytes;
                    if (rows == 1) row_any(q8, n, x + m0 * K, K, weights, group_bytes, xsum + m0 * blocks, out);
                    else rows_any(q8, rows, n, x + m0 * K, K, weights, group_bytes, xsum + m0 * blocks, out);
                    for (int r = 0; r < rows; r++)
                        for (int i = 0; i < n; i++) put(out + (r * n + i) * GROUP, 1, y + (m0 + r) * N, N, (g + i) * GROUP);
                }
            }
#endif
        } else {
            float *qf = aligned_alloc(64, (size_t)TILE_GROUPS * K * GROUP * sizeof(float));
            float *dm = aligned_alloc(64, (size_t)TILE_GROUPS * blocks * 32 * sizeof(float));
            if (qf == NULL || dm == NULL) failed = 1;
            /* Rows in chunks that stay in L2 while every group's weights pass over them. */
            for (int64_t m0 = 0; m0 < M; m0 += chunk) {
                const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
                for (int64_t g = 0; g < groups; g += TILE_GROUPS) {
                    if (qf == NULL || dm == NULL) continue;
                    const int n = groups - g < TILE_GROUPS ? (int)(groups - g) : TILE_GROUPS;
                    for (int i = 0; i < n; i++) {
                        const uint8_t *group = packed + (g + i) * group_bytes;
                        float *qf_i = qf + i * K * GROUP, *dm_i = dm + i * K;
                        for (int64_t b = 0; b < blocks; b++) {
                            prefetch_here(group + TILE_GROUPS * group_bytes + b * (q8 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES),
                                          q8 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES);
                            if (q8) unpack_q8(group + b * Q8_BLOCK_BYTES, qf_i + b * BLOCK * GROUP, dm_i + b * 32);
                            else unpack_q4(group + b * Q4_BLOCK_BYTES, qf_i + b * BLOCK * GROUP, dm_i + b * 32);
                        }
                    }
                    for (int64_t m = m0; m < m1; m += MAX_ROWS) {
                        const int rows = m1 - m < MAX_ROWS ? (int)(m1 - m) : MAX_ROWS;
                        tile_any(rows, n, x + m * K, K, qf, dm, xsum + m * blocks, out);
                        for (int r = 0; r < rows; r++)
                            for (int i = 0; i < n; i++) put(out + (r * n + i) * GROUP, 1, y + (m + r) * N, N, (g + i) * GROUP);
                    }
                }
            }
            free(qf);
            free(dm);
        }
    }
    free(xsum);
    return failed ? -1 : 0;
}

int quant_matmul_q4(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 0);
}

int quant_matmul_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 1);
}

