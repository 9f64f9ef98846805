/* y = x @ W.T with W in a GGUF file's Q5_0, Q5_1, Q4_K, Q5_K or Q6_K blocks, repacked: quant_matmul.c's
 * method (x stays float32, the file's exact weights) for integers of 4 to 6 bits with a scale per
 * sub-block. rillet/model/kquant_blocks.py reads the file's blocks and packs them.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of the type's block
 * (32 values; 256 for the K types). Each weight is a (q - bias) + b for an unsigned integer q, with a
 * and b per sub-block of 32 values (16 for Q6_K), the float32 products gguf's dequantization computes:
 *   Q5_0: a = d, bias 16       Q5_1: a = d, b = m       Q4_K, Q5_K: a = d sc, b = -dmin m
 *   Q6_K: a = d sc, bias 32
 * with d, dmin, m float16 per block and sc, m 6-bit per sub-block (sc int8 for Q6_K); both products
 * are exact. W is packed in groups of 16 output rows (N padded with zero rows to a multiple of 16);
 * for each group its K / block blocks follow one another, each a header then its sub-blocks:
 *   header: Q5_0 d[16]; Q5_1 d[16], m[16]; Q4_K, Q5_K d[16], dmin[16], sc[8][16], m[8][16] (uint8);
 *       Q6_K d[16], sc[16][16] (int8); d, dmin, m float16.
 *   sub-block of S values: S / 2 pairs of 16 bytes (byte n of pair j: the low 4 bits of q(n, 2j) |
 *       those of q(n, 2j + 1) << 4); then for 5-bit q S / 8 runs of 16 bytes (bit t of byte n of run c:
 *       bit 4 of q(n, 8c + t)), for 6-bit q S / 4 runs of 16 bytes (bits 2t, 2t + 1 of byte n of run c:
 *       bits 4, 5 of q(n, 4c + t)).
 * Each sub-block adds a * (sum of x (q - bias)) + b * (sum of x) to an output, the sums over its
 * values. Every sum runs in one fixed order, whatever M is and whichever path computes it, so a row's
 * result does not depend on the rows batched with it. Compiled without -ffast-math and without fp
 * contraction so that the compiler keeps that order. Four code paths (isa.h), each output's sums the
 * same on all: AVX-512 holds a group's 16 outputs in one register, AVX2 in two, NEON in four, portable C
 * one output at a time (fmaf where the vector paths fuse); so their results are identical bit for bit.
 * Returns 0, or -1 (K not a multiple of the block, out of memory).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "block_sum.h"
#include "float_tiles.h"

enum { Q5_0, Q5_1, Q4_K, Q5_K, Q6_K };
#define INLINE static inline __attribute__((always_inline))

const char *kquant_matmul_isa(void) { return RILLET_ISA_NAME; }

/* Per type: values per block and per sub-block, bits of q, its bias (0: the type has an offset b). */
INLINE int block_values(int t) { return t == Q5_0 || t == Q5_1 ? 32 : 256; }
INLINE int sub_values(int t) { return t == Q6_K ? 16 : 32; }
INLINE int bits(int t) { return t == Q4_K ? 4 : t == Q6_K ? 6 : 5; }
INLINE int bias(int t) { return t == Q5_0 ? 16 : t == Q6_K ? 32 : 0; }
INLINE int header_bytes(int t) { return t == Q5_0 ? 32 : t == Q5_1 ? 64 : t == Q6_K ? 288 : 320; }
INLINE int sub_bytes(int t) { return sub_values(t) * (8 + 2 * (bits(t) - 4)); }
INLINE int64_t block_bytes(int t) { return header_bytes(t) + block_values(t) / sub_values(t) * sub_bytes(t); }

#ifdef RILLET_AVX2
#include <immintrin.h>

static inline __m128i load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }
static inline __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(load16(p)); }
static inline __m256 u8_floats(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
static inline __m256 i8_floats(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }


/* The 16 rows' q - bias for value k of a sub-block, as bytes (int8 where there is a bias). The 16-bit
 * shifts move the wanted bits to the bottom of their own byte before the mask, so none crosses bytes. */
INLINE __m128i values(int t, const uint8_t *sub, int k) {
    const __m128i pair = load16(sub + 16 * (k / 2));
    __m128i q = _mm_and_si128(k % 2 ? _mm_srli_epi16(pair, 4) : pair, _mm_set1_epi8(15));
    const uint8_t *planes = sub + 8 * sub_values(t);
    if (bits(t) == 5) {
        const __m128i high = _mm_and_si128(_mm_srli_epi16(load16(planes + 16 * (k / 8)), k % 8), _mm_set1_epi8(1));
        q = _mm_or_si128(q, _mm_slli_epi16(high, 4));
    } else if (bits(t) == 6) {
        const __m128i high = _mm_and_si128(_mm_srli_epi16(load16(planes + 16 * (k / 4)), 2 * (k % 4)), _mm_set1_epi8(3));
        q = _mm_or_si128(q, _mm_slli_epi16(high, 4));
    }
    return bias(t) ? _mm_sub_epi8(q, _mm_set1_epi8((char)bias(t))) : q;
}

/* Values 2j and 2j + 1 of a sub-block as floats: w[0], w[1] rows 0-7 and 8-15 of the first, w[2], w[3]
 * of the second. 4-bit q is split after widening, as quant_matmul.c does (fewer conversions). */
INLINE void pair_floats(int t, const uint8_t *sub, int j, __m256 w[4]) {
    if (bits(t) == 4) {
        const __m128i bytes = load16(sub + 16 * j);
        const __m256i a = _mm256_cvtepu8_epi32(bytes), c = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
        const __m256i low = _mm256_set1_epi32(15);
        w[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, low)), w[1] = _mm256_cvtepi32_ps(_mm256_and_si256(c, low));
        w[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), w[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4));
        return;
    }
    for (int i = 0; i < 2; i++) {
        const __m128i q = values(t, sub, 2 * j + i), upper = _mm_srli_si128(q, 8);
        w[2 * i] = bias(t) ? i8_floats(q) : u8_floats(q);
        w[2 * i + 1] = bias(t) ? i8_floats(upper) : u8_floats(upper);
    }
}

/* a (ab[0..1]) and b (ab[2..3]) of sub-block s for a group's 16 rows, from its block header h. */
INLINE void scales(int t, const uint8_t *h, int s, __m256 ab[4]) {
    ab[0] = half8(h), ab[1] = half8(h + 16);
    ab[2] = ab[3] = _mm256_setzero_ps();
    if (t == Q5_1) ab[2] = half8(h + 32), ab[3] = half8(h + 48);
    if (t == Q4_K || t == Q5_K) {
        const __m128i sc = load16(h + 64 + 16 * s), m = load16(h + 192 + 16 * s);
        const __m256 sign = _mm256_set1_ps(-0.0f);
        ab[0] = _mm256_mul_ps(ab[0], u8_floats(sc));
        ab[1] = _mm256_mul_ps(ab[1], u8_floats(_mm_srli_si128(sc, 8)));
        ab[2] = _mm256_xor_ps(sign, _mm256_mul_ps(half8(h + 32), u8_floats(m)));
        ab[3] = _mm256_xor_ps(sign, _mm256_mul_ps(half8(h + 48), u8_floats(_mm_srli_si128(m, 8))));
    }
    if (t == Q6_K) {
        const __m128i sc = load16(h + 32 + 16 * s);
        ab[0] = _mm256_mul_ps(ab[0], i8_floats(sc));
        ab[1] = _mm256_mul_ps(ab[1], i8_floats(_mm_srli_si128(sc, 8)));
    }
}

/* A group's integers as float32 [K][16] into qf, each sub-block's a then b ([K / S][32]) into ab. */
INLINE void unpack(int t, const uint8_t *group, int64_t K, float *restrict qf, float *restrict ab) {
    const int S = sub_values(t);
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = group + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        for (int j = 0; j < S / 2; j++) {
            __m256 q[4];
            pair_floats(t, sub, j, q);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(qf + (v0 + 2 * j) * GROUP + 8 * i, q[i]);
        }
        __m256 scale[4];
        scales(t, block, s, scale);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(ab + v0 / S * 32 + 8 * i, scale[i]);
    }
}

#ifdef RILLET_AVX512

/* The AVX2 path's sums with a group's 16 outputs in one register instead of two: per output the same
 * operations in the same order. */
static inline __m512 half16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 u8_floats16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
static inline __m512 i8_floats16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }

/* pair_floats: values 2j (w[0]) and 2j + 1 (w[1]) of a sub-block for the 16 rows. */
INLINE void pair_floats16(int t, const uint8_t *sub, int j, __m512 w[2]) {
    if (bits(t) == 4) {
        const __m512i a = _mm512_cvtepu8_epi32(load16(sub + 16 * j));
        w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(a, _mm512_set1_epi32(15)));
        w[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(a, 4));
        return;
    }
    for (int i = 0; i < 2; i++) {
        const __m128i q = values(t, sub, 2 * j + i);
        w[i] = bias(t) ? i8_floats16(q) : u8_floats16(q);
    }
}

/* scales: a (ab[0]) and b (ab[1]) of sub-block s for the 16 rows. */
INLINE void scales16(int t, const uint8_t *h, int s, __m512 ab[2]) {
    ab[0] = half16(h);
    ab[1] = t == Q5_1 ? half16(h + 32) : _mm512_setzero_ps();
    if (t == Q4_K || t == Q5_K) {
        const __m512i sign = _mm512_set1_epi32(INT32_MIN);
        ab[0] = _mm512_mul_ps(ab[0], u8_floats16(load16(h + 64 + 16 * s)));
        ab[1] = _mm512_castsi512_ps(_mm512_xor_si512(
            sign, _mm512_castps_si512(_mm512_mul_ps(half16(h + 32), u8_floats16(load16(h + 192 + 16 * s))))));
    }
    if (t == Q6_K) ab[0] = _mm512_mul_ps(ab[0], i8_floats16(load16(h + 32 + 16 * s)));
}

/* fold: acc = fma(b, xs, fma(a, partial, acc)). */
INLINE __m512 fold16(int offset, __m512 acc, __m512 a, __m512 partial, __m512 b, const float *xs) {
    acc = _mm512_fmadd_ps(a, partial, acc);
    return offset ? _mm512_fmadd_ps(b, _mm512_set1_ps(*xs), acc) : acc;
}

/* rows (1..FEW_ROWS) rows against `groups` groups side by side, as quant_matmul.c does: each
 * sub-block's integers converted once for all the rows, each row's sums the AVX2 row()'s steps below
 * with 16 outputs in one register, whatever the row count. A single row is rows 1 (row() below).
 * Passes of 4 groups for up to two rows, 2 for up to four, 1 for more, so that the sums stay in
 * registers. */
#define FEW_ROWS 8
#define FEW_ROWS_LIMIT 32 /* batches up to this many rows take passes of FEW_ROWS */
#define FEW_ROWS_GROUPS(rows) ((rows) <= 2 ? 4 : (rows) <= 4 ? 2 : 1)
_Static_assert(8 * GROUP <= MAX_ROWS * TILE_GROUPS * GROUP, "matmul's out buffer holds a pass of a few rows");

INLINE void few_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                 const float *xsum, float *out) {
    const int S = sub_values(t);
    __m512 acc[FEW_ROWS][4];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = w + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        __m512 p[FEW_ROWS][4];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g] = _mm512_setzero_ps();
            if (s == 0) prefetch_pass(w + g * group_bytes, block - w, group_bytes, groups * group_bytes, block_bytes(t));
        }
        for (int j = 0; j < S / 2; j++) {
            __m512 x0[FEW_ROWS], x1[FEW_ROWS];
            for (int r = 0; r < rows; r++)
                x0[r] = _mm512_set1_ps(x[r * K + v0 + 2 * j]), x1[r] = _mm512_set1_ps(x[r * K + v0 + 2 * j + 1]);
            for (int g = 0; g < groups; g++) {
                __m512 q[2];
                pair_floats16(t, sub + g * group_bytes, j, q);
                for (int r = 0; r < rows; r++) p[r][g] = _mm512_fmadd_ps(x1[r], q[1], _mm512_fmadd_ps(x0[r], q[0], p[r][g]));
            }
        }
        for (int g = 0; g < groups; g++) {
            __m512 ab[2];
            scales16(t, block + g * group_bytes, s, ab);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(!bias(t), acc[r][g], ab[0], p[r][g], ab[1], xsum + r * (K / 32) + v0 / 32);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

INLINE void row(int t, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                const float *xsum, float *out) {
    few_rows(t, 1, groups, x, K, w, group_bytes, xsum, out);
}

/* rows (1..MAX_ROWS) rows of x times groups (1..TILE_GROUPS) groups' unpacked sub-blocks of S values;
 * out [rows][groups * 16]. Group i's qf at qf + i K 16, its ab at ab + 2 i K. Two groups a tile load
 * two weights for each broadcast of x: fewer loads per multiply-add than one group of more rows. */
INLINE void tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict ab, const float *xsum, float *out) {
    __m512 acc[MAX_ROWS][TILE_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        __m512 p[MAX_ROWS][TILE_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) p[r][g] = _mm512_setzero_ps();
        for (int k = 0; k < S; k++) {
            __m512 w[TILE_GROUPS];
            for (int g = 0; g < groups; g++) w[g] = _mm512_loadu_ps(qf + g * K * GROUP + (v0 + k) * GROUP);
            for (int r = 0; r < rows; r++) {
                const __m512 xk = _mm512_set1_ps(x[r * K + v0 + k]);
                for (int g = 0; g < groups; g++) p[r][g] = _mm512_fmadd_ps(xk, w[g], p[r][g]);
            }
        }
        for (int g = 0; g < groups; g++) {
            const float *s = ab + 2 * g * K + v0 / S * 32;
            const __m512 a = _mm512_loadu_ps(s), b = _mm512_loadu_ps(s + 16);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(offset, acc[r][g], a, p[r][g], b, xsum + r * (K / 32) + v0 / 32);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

#else

/* acc = fma(b, xs, fma(a, partial, acc)): a sub-block's sums folded into an output (b: offset types). */
INLINE __m256 fold(int offset, __m256 acc, __m256 a, __m256 partial, __m256 b, const float *xs) {
    acc = _mm256_fmadd_ps(a, partial, acc);
    return offset ? _mm256_fmadd_ps(b, _mm256_broadcast_ss(xs), acc) : acc;
}

/* A single row against `groups` groups side by side, reading each block's integers straight into
 * its sums. The same sums in the same order as unpack() and tile(). xsum: the row's sums per 32. */
INLINE void row(int t, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                const float *xsum, float *out) {
    const int S = sub_values(t);
    __m256 acc[ROW_GROUPS][2];
    for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = w + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        __m256 p[ROW_GROUPS][2];
        for (int g = 0; g < groups; g++) {
            p[g][0] = p[g][1] = _mm256_setzero_ps();
            if (s == 0) prefetch_pass(w + g * group_bytes, block - w, group_bytes, groups * group_bytes, block_bytes(t));
        }
        for (int j = 0; j < S / 2; j++) {
            const __m256 x0 = _mm256_broadcast_ss(x + v0 + 2 * j), x1 = _mm256_broadcast_ss(x + v0 + 2 * j + 1);
            for (int g = 0; g < groups; g++) {
                __m256 q[4];
                pair_floats(t, sub + g * group_bytes, j, q);
                p[g][0] = _mm256_fmadd_ps(x0, q[0], p[g][0]);
                p[g][1] = _mm256_fmadd_ps(x0, q[1], p[g][1]);
                p[g][0] = _mm256_fmadd_ps(x1, q[2], p[g][0]);
                p[g][1] = _mm256_fmadd_ps(x1, q[3], p[g][1]);
            }
        }
        for (int g = 0; g < groups; g++) {
            __m256 ab[4];
            scales(t, block + g * group_bytes, s, ab);
            acc[g][0] = fold(!bias(t), acc[g][0], ab[0], p[g][0], ab[2], xsum + v0 / 32);
            acc[g][1] = fold(!bias(t), acc[g][1], ab[1], p[g][1], ab[3], xsum + v0 / 32);
        }
    }
    for (int g = 0; g < groups; g++) {
        _mm256_storeu_ps(out + g * GROUP, acc[g][0]);
        _mm256_storeu_ps(out + g * GROUP + 8, acc[g][1]);
    }
}

/* A few rows (2..FEW_ROWS) at once: each sub-block's integers converted once for every row, each
 * row's sums exactly row()'s. The running totals wait in out between sub-blocks (the same fused
 * steps, so the same numbers), which leaves registers for more rows. */
#define FEW_ROWS 6
#define FEW_ROWS_LIMIT 12 /* as quant_matmul.c's AVX2 path */
#define FEW_ROWS_GROUPS(rows) ((rows) <= 2 ? 2 : 1)
_Static_assert(6 * GROUP <= MAX_ROWS * TILE_GROUPS * GROUP, "matmul's out buffer holds a pass of a few rows");

INLINE void few_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                 const float *xsum, float *out) {
    const int S = sub_values(t);
    for (int i = 0; i < rows * groups * GROUP; i++) out[i] = 0.0f;
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = w + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        __m256 p[FEW_ROWS][2][2];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g][0] = p[r][g][1] = _mm256_setzero_ps();
            if (s == 0) prefetch_pass(w + g * group_bytes, block - w, group_bytes, groups * group_bytes, block_bytes(t));
        }
        for (int j = 0; j < S / 2; j++) {
            for (int g = 0; g < groups; g++) {
                __m256 q[4];
                pair_floats(t, sub + g * group_bytes, j, q);
                for (int r = 0; r < rows; r++) {
                    const __m256 x0 = _mm256_broadcast_ss(x + r * K + v0 + 2 * j), x1 = _mm256_broadcast_ss(x + r * K + v0 + 2 * j + 1);
                    p[r][g][0] = _mm256_fmadd_ps(x0, q[0], p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x0, q[1], p[r][g][1]);
                    p[r][g][0] = _mm256_fmadd_ps(x1, q[2], p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x1, q[3], p[r][g][1]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            __m256 ab[4];
            scales(t, block + g * group_bytes, s, ab);
            for (int r = 0; r < rows; r++) {
                float *o = out + (r * groups + g) * GROUP;
                const float *xs = xsum + r * (K / 32) + v0 / 32;
                _mm256_storeu_ps(o, fold(!bias(t), _mm256_loadu_ps(o), ab[0], p[r][g][0], ab[2], xs));
                _mm256_storeu_ps(o + 8, fold(!bias(t), _mm256_loadu_ps(o + 8), ab[1], p[r][g][1], ab[3], xs));
            }
        }
    }
}

/* rows (1..MAX_ROWS) rows of x times a group's unpacked sub-blocks of S values; out [rows][16]. */
INLINE void tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict ab, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    __m256 acc[MAX_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        __m256 p[MAX_ROWS][2];
        for (int r = 0; r < rows; r++) p[r][0] = p[r][1] = _mm256_setzero_ps();
        for (int k = 0; k < S; k++) {
            const __m256 w0 = _mm256_loadu_ps(qf + (v0 + k) * GROUP), w1 = _mm256_loadu_ps(qf + (v0 + k) * GROUP + 8);
            for (int r = 0; r < rows; r++) {
                const __m256 xk = _mm256_broadcast_ss(x + r * K + v0 + k);
                p[r][0] = _mm256_fmadd_ps(xk, w0, p[r][0]);
                p[r][1] = _mm256_fmadd_ps(xk, w1, p[r][1]);
            }
        }
        const float *s = ab + v0 / S * 32;
        for (int r = 0; r < rows; r++) {
            const float *xs = xsum + r * (K / 32) + v0 / 32;
            acc[r][0] = fold(offset, acc[r][0], _mm256_loadu_ps(s), p[r][0], _mm256_loadu_ps(s + 16), xs);
            acc[r][1] = fold(offset, acc[r][1], _mm256_loadu_ps(s + 8), p[r][1], _mm256_loadu_ps(s + 24), xs);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_ps(out + r * GROUP, acc[r][0]);
        _mm256_storeu_ps(out + r * GROUP + 8, acc[r][1]);
    }
}

#endif /* RILLET_AVX512 */

#endif /* RILLET_AVX2 */

#ifdef RILLET_NEON

/* NEON: a group's 16 outputs in four registers, each lane one output's sums in the portable C path's
 * order (vfmaq where it has fmaf). A sub-block's sums stay in registers; the outputs' totals in out.
 * The driver below (row_any ... matmul) is the AVX2 path's. */
#include "neon_floats.h"

/* Value k of a sub-block for the 16 rows as floats, q - bias (portable C's value_of). */
INLINE void value_floats(int t, const uint8_t *sub, int k, float32x4_t f[4]) {
    const uint8x16_t pair = vld1q_u8(sub + 16 * (k / 2));
    uint8x16_t q = k % 2 ? vshrq_n_u8(pair, 4) : vandq_u8(pair, vdupq_n_u8(15));
    const uint8_t *planes = sub + 8 * sub_values(t);
    if (bits(t) == 5) {
        const uint8x16_t high = vshlq_u8(vld1q_u8(planes + 16 * (k / 8)), vdupq_n_s8((int8_t)-(k % 8)));
        q = vorrq_u8(q, vshlq_n_u8(vandq_u8(high, vdupq_n_u8(1)), 4));
    } else if (bits(t) == 6) {
        const uint8x16_t high = vshlq_u8(vld1q_u8(planes + 16 * (k / 4)), vdupq_n_s8((int8_t)(-2 * (k % 4))));
        q = vorrq_u8(q, vshlq_n_u8(vandq_u8(high, vdupq_n_u8(3)), 4));
    }
    if (bias(t)) i8_floats(vreinterpretq_s8_u8(vsubq_u8(q, vdupq_n_u8((uint8_t)bias(t)))), f);
    else u8_floats(q, f);
}

/* a (ab[0..3]) and b (ab[4..7]) of sub-block s for a group's 16 rows, from its block header h. */
INLINE void scales(int t, const uint8_t *h, int s, float32x4_t ab[8]) {
    for (int i = 0; i < 4; i++) ab[i] = half4(h + 8 * i), ab[4 + i] = vdupq_n_f32(0.0f);
    if (t == Q5_1)
        for (int i = 0; i < 4; i++) ab[4 + i] = half4(h + 32 + 8 * i);
    if (t == Q4_K || t == Q5_K) {
        float32x4_t sc[4], m[4];
        u8_floats(vld1q_u8(h + 64 + 16 * s), sc);
        u8_floats(vld1q_u8(h + 192 + 16 * s), m);
        for (int i = 0; i < 4; i++)
            ab[i] = vmulq_f32(ab[i], sc[i]), ab[4 + i] = vnegq_f32(vmulq_f32(half4(h + 32 + 8 * i), m[i]));
    }
    if (t == Q6_K) {
        float32x4_t sc[4];
        i8_floats(vld1q_s8((const int8_t *)h + 32 + 16 * s), sc);
        for (int i = 0; i < 4; i++) ab[i] = vmulq_f32(ab[i], sc[i]);
    }
}

/* A group's integers as float32 [K][16] into qf, each sub-block's a then b ([K / S][32]) into ab. */
INLINE void unpack(int t, const uint8_t *group, int64_t K, float *restrict qf, float *restrict ab) {
    const int S = sub_values(t);
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = group + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        for (int k = 0; k < S; k++) {
            float32x4_t q[4];
            value_floats(t, sub, k, q);
            for (int i = 0; i < 4; i++) vst1q_f32(qf + (v0 + k) * GROUP + 4 * i, q[i]);
        }
        float32x4_t scale[8];
        scales(t, block, s, scale);
        for (int i = 0; i < 8; i++) vst1q_f32(ab + v0 / S * 32 + 4 * i, scale[i]);
    }
}

/* out[0..15] = fma(b, xs, fma(a, p, out)), b only for the types with an offset. */
INLINE void fold(int offset, float *out, const float32x4_t a[4], const float32x4_t p[4], const float32x4_t b[4],
                 float xs) {
    for (int i = 0; i < 4; i++) {
        const float32x4_t acc = vfmaq_f32(vld1q_f32(out + 4 * i), a[i], p[i]);
        vst1q_f32(out + 4 * i, offset ? vfmaq_n_f32(acc, b[i], xs) : acc);
    }
}

/* A single row against `groups` groups side by side, reading each block's integers straight into
 * its sums. xsum: the row's sums per 32. */
INLINE void row(int t, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                const float *xsum, float *out) {
    const int S = sub_values(t);
    for (int n = 0; n < groups * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        const uint8_t *block = w + v0 / block_values(t) * block_bytes(t);
        const int s = (int)(v0 % block_values(t) / S);
        const uint8_t *sub = block + header_bytes(t) + s * sub_bytes(t);
        float32x4_t p[ROW_GROUPS][4];
        for (int g = 0; g < groups; g++) {
            for (int i = 0; i < 4; i++) p[g][i] = vdupq_n_f32(0.0f);
            if (s == 0) prefetch_pass(w + g * group_bytes, block - w, group_bytes, groups * group_bytes, block_bytes(t));
        }
        for (int j = 0; j < S / 2; j++) {
            const float x0 = x[v0 + 2 * j], x1 = x[v0 + 2 * j + 1];
            for (int g = 0; g < groups; g++) {
                float32x4_t q0[4], q1[4];
                value_floats(t, sub + g * group_bytes, 2 * j, q0);
                value_floats(t, sub + g * group_bytes, 2 * j + 1, q1);
                for (int i = 0; i < 4; i++) p[g][i] = vfmaq_n_f32(p[g][i], q0[i], x0);
                for (int i = 0; i < 4; i++) p[g][i] = vfmaq_n_f32(p[g][i], q1[i], x1);
            }
        }
        for (int g = 0; g < groups; g++) {
            float32x4_t ab[8];
            scales(t, block + g * group_bytes, s, ab);
            fold(!bias(t), out + g * GROUP, ab, p[g], ab + 4, xsum[v0 / 32]);
        }
    }
}

/* rows (1..MAX_ROWS) rows of x times a group's unpacked sub-blocks of S values; out [rows][16]. */
INLINE void tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                 const float *restrict ab, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    for (int n = 0; n < rows * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        float32x4_t p[MAX_ROWS][4];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < 4; i++) p[r][i] = vdupq_n_f32(0.0f);
        for (int k = 0; k < S; k++) {
            float32x4_t w[4];
            for (int i = 0; i < 4; i++) w[i] = vld1q_f32(qf + (v0 + k) * GROUP + 4 * i);
            for (int r = 0; r < rows; r++) {
                const float xk = x[r * K + v0 + k];
                for (int i = 0; i < 4; i++) p[r][i] = vfmaq_n_f32(p[r][i], w[i], xk);
            }
        }
        float32x4_t a[4], b[4];
        for (int i = 0; i < 4; i++) a[i] = vld1q_f32(ab + v0 / S * 32 + 4 * i), b[i] = vld1q_f32(ab + v0 / S * 32 + 16 + 4 * i);
        for (int r = 0; r < rows; r++) fold(offset, out + r * GROUP, a, p[r], b, xsum[r * (K / 32) + v0 / 32]);
    }
}

#endif /* RILLET_NEON */

#if defined(RILLET_AVX2) || defined(RILLET_NEON)

/* Each (type, count) a copy of its own, unrolled with its sums in registers. */
#define UP_TO_4(n, call) switch (n) { case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; \
    default: call(4); }
#define UP_TO_6(n, call) switch (n) { case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; \
    case 4: call(4); break; case 5: call(5); break; default: call(6); }
#define BY_TYPE(call) switch (t) { case Q5_0: call(Q5_0); break; case Q5_1: call(Q5_1); break; \
    case Q4_K: call(Q4_K); break; case Q5_K: call(Q5_K); break; default: call(Q6_K); }

static void row_any(int t, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                    const float *xsum, float *out) {
#define ROW(n) row(T, n, x, K, w, group_bytes, xsum, out)
#define ROWS(type) { enum { T = type }; UP_TO_4(groups, ROW) }
    BY_TYPE(ROWS)
#undef ROW
#undef ROWS
}

#ifdef FEW_ROWS
static void rows_any(int t, int count, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                     const float *xsum, float *out) {
#define PASS(r, n) few_rows(T, r, n, x, K, w, group_bytes, xsum, out)
#define COUNT(r) (groups == 1 || FEW_ROWS_GROUPS(r) == 1 ? PASS(r, 1) : groups == 2 || FEW_ROWS_GROUPS(r) == 2 \
                  ? PASS(r, 2) : groups == 3 ? PASS(r, 3) : PASS(r, 4))
#if FEW_ROWS == 8
#define BY_COUNT switch (count) { case 2: COUNT(2); break; case 3: COUNT(3); break; case 4: COUNT(4); break; \
    case 5: COUNT(5); break; case 6: COUNT(6); break; case 7: COUNT(7); break; default: COUNT(8); }
#else
#define BY_COUNT switch (count) { case 2: COUNT(2); break; case 3: COUNT(3); break; case 4: COUNT(4); break; \
    case 5: COUNT(5); break; default: COUNT(6); }
#endif
#define PASSES(type) { enum { T = type }; BY_COUNT }
    BY_TYPE(PASSES)
#undef PASS
#undef COUNT
#undef BY_COUNT
#undef PASSES
}
#endif

static void unpack_any(int t, const uint8_t *group, int64_t K, float *qf, float *ab) {
#define UNPACK(type) unpack(type, group, K, qf, ab)
    BY_TYPE(UNPACK)
#undef UNPACK
}

static void tile_any(int t, int rows, int groups, const float *x, int64_t K, const float *qf, const float *ab,
                     const float *xsum, float *out) {
#define TILE(n) (groups == 1 ? tile(n, 1, sub_values(T), !bias(T), x, K, qf, ab, xsum, out) \
                             : tile(n, TILE_GROUPS, sub_values(T), !bias(T), x, K, qf, ab, xsum, out))
#define TILES(type) { enum { T = type }; UP_TO_6(rows, TILE) }
    switch (t) { case Q5_0: TILES(Q5_0); break; case Q6_K: TILES(Q6_K); break; default: TILES(Q4_K); }
#undef TILE
#undef TILES
}

/* Copies the valid columns of a [rows][16] tile into y. */
static inline void put(const float *tile_out, int rows, float *y, int64_t N, int64_t n0) {
    const int64_t width = N - n0 < GROUP ? N - n0 : GROUP;
    for (int r = 0; r < rows; r++) memcpy(y + r * N + n0, tile_out + r * GROUP, width * sizeof(float));
}

static int matmul(int t, const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    if (K % block_values(t) != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t groups = (N + GROUP - 1) / GROUP, group_bytes = K / block_values(t) * block_bytes(t);
    int64_t chunk = CHUNK_BYTES / (K * (int64_t)sizeof(float)) / MAX_ROWS * MAX_ROWS;
    if (chunk < MAX_ROWS) chunk = MAX_ROWS;
    float *xsum = malloc((size_t)(M * K / 32) * sizeof(float));
    if (xsum == NULL) return -1;
    int failed = 0;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M * K / 32; i++) xsum[i] = block_sum(x + i * 32);
        float out[MAX_ROWS * TILE_GROUPS * GROUP > ROW_GROUPS * GROUP ? MAX_ROWS * TILE_GROUPS * GROUP : ROW_GROUPS * GROUP];
        if (M == 1) {
            /* Each thread an equal run of groups (not of ROW_GROUPS-sized steps: 36 groups are 18 and
             * 18, not 20 and 16); a group's outputs do not depend on the groups beside it. */
            const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
            const int64_t end = groups * (me + 1) / threads;
            for (int64_t g = groups * me / threads; g < end; g += ROW_GROUPS) {
                const int n = end - g < ROW_GROUPS ? (int)(end - g) : ROW_GROUPS;
                row_any(t, n, x, K, packed + g * group_bytes, group_bytes, xsum, out);
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
                    const int count = M - m0 < FEW_ROWS ? (int)(M - m0) : FEW_ROWS;
                    const uint8_t *weights = packed + g * group_bytes;
                    const float *xs = xsum + m0 * (K / 32);
                    if (count == 1) row_any(t, n, x + m0 * K, K, weights, group_bytes, xs, out);
                    else rows_any(t, count, n, x + m0 * K, K, weights, group_bytes, xs, out);
                    for (int r = 0; r < count; r++)
                        for (int i = 0; i < n; i++) put(out + (r * n + i) * GROUP, 1, y + (m0 + r) * N, N, (g + i) * GROUP);
                }
            }
#endif
        } else {
            float *qf = aligned_alloc(64, (size_t)TILE_GROUPS * K * GROUP * sizeof(float));
            /* 32 floats per 16 values at most */
            float *ab = aligned_alloc(64, (size_t)TILE_GROUPS * K * 2 * sizeof(float));
            if (qf == NULL || ab == NULL) failed = 1;
            /* Rows in chunks that stay in L2 while every group's weights pass over them. */
            for (int64_t m0 = 0; m0 < M; m0 += chunk) {
                const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
                for (int64_t g = 0; g < groups; g += TILE_GROUPS) {
                    if (qf == NULL || ab == NULL) continue;
                    const int n = groups - g < TILE_GROUPS ? (int)(groups - g) : TILE_GROUPS;
                    for (int i = 0; i < n; i++) {
                        prefetch_here(packed + (g + i + TILE_GROUPS) * group_bytes, group_bytes); /* the next tile's */
                        unpack_any(t, packed + (g + i) * group_bytes, K, qf + i * K * GROUP, ab + 2 * i * K);
                    }
                    for (int64_t m = m0; m < m1; m += MAX_ROWS) {
                        const int rows = m1 - m < MAX_ROWS ? (int)(m1 - m) : MAX_ROWS;
                        tile_any(t, rows, n, x + m * K, K, qf, ab, xsum + m * (K / 32), out);
                        for (int r = 0; r < rows; r++)
                            for (int i = 0; i < n; i++) put(out + (r * n + i) * GROUP, 1, y + (m + r) * N, N, (g + i) * GROUP);
                    }
                }
            }
            free(qf);
            free(ab);
        }
    }
    free(xsum);
    return failed ? -1 : 0;
}

#else

/* Portable C: each output one row at a time, its sums in the AVX2 path's order. */
#include "half_float.h"


/* Integer q(n, k) of row n (0..15), value k of a sub-block, less the bias. */
static int value_of(int t, const uint8_t *sub, int n, int k) {
    int q = (sub[16 * (k / 2) + n] >> (4 * (k % 2))) & 15;
    const uint8_t *planes = sub + 8 * sub_values(t);
    if (bits(t) == 5) q |= ((planes[16 * (k / 8) + n] >> (k % 8)) & 1) << 4;
    if (bits(t) == 6) q |= ((planes[16 * (k / 4) + n] >> (2 * (k % 4))) & 3) << 4;
    return q - bias(t);
}

static int matmul(int t, const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    if (K % block_values(t) != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int S = sub_values(t);
    const int64_t group_bytes = K / block_values(t) * block_bytes(t);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * N; i++) {
        const float *xr = x + i / N * K;
        const int64_t n = i % N;
        const uint8_t *group = packed + n / GROUP * group_bytes;
        const int r = (int)(n % GROUP);
        float acc = 0.0f;
        for (int64_t v0 = 0; v0 < K; v0 += S) {
            const uint8_t *h = group + v0 / block_values(t) * block_bytes(t);
            const int s = (int)(v0 % block_values(t) / S);
            float p = 0.0f, a = half_to_float(h + 2 * r), b = 0.0f;
            const uint8_t *sub = h + header_bytes(t) + s * sub_bytes(t);
            for (int k = 0; k < S; k++) p = fmaf(xr[v0 + k], (float)value_of(t, sub, r, k), p);
            if (t == Q5_1) b = half_to_float(h + 32 + 2 * r);
            if (t == Q4_K || t == Q5_K) a *= h[64 + 16 * s + r], b = -(half_to_float(h + 32 + 2 * r) * h[192 + 16 * s + r]);
            if (t == Q6_K) a *= (int8_t)h[32 + 16 * s + r];
            acc = fmaf(a, p, acc);
            if (!bias(t)) acc = fmaf(b, block_sum(xr + v0), acc);
        }
        y[i] = acc;
    }
    return 0;
}

#endif

#define EXPORT(kernel, type)                                                                                   \
    int kquant_matmul_##kernel(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) { \
        return matmul(type, x, M, K, packed, N, y);                                                       \
    }
EXPORT(q5_0, Q5_0)
EXPORT(q5_1, Q5_1)
EXPORT(q4_k, Q4_K)
EXPORT(q5_k, Q5_K)
EXPORT(q6_k, Q6_K)
