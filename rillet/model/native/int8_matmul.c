/* y = x @ W.T with W in a GGUF file's own Q4_0, Q4_1 or Q8_0 blocks and x rounded to 8-bit
 * integers per block of 32, so that each block is one integer dot product: llama.cpp's way on
 * AVX2 (its Q8_1 activations). Faster than quant_matmul.c, which keeps x in float32, but not exact.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of 32.
 * Each block of 32 values of a row of x becomes dx = max|x| / 127, xq = round(x / dx) in
 * -127..127 and sx = dx * sum(xq).
 * W is packed in groups of 8 output rows (N padded with zero rows to a multiple of 8); for each
 * group its K / 32 blocks follow one another:
 *   Q4 (from Q4_0 and Q4_1): d[8] float16, m[8] float16, then four runs of 32 bytes: in run t,
 *       byte 4n + i holds q(n, 4t + i) in its low nibble and q(n, 16 + 4t + i) in its high one.
 *       The weight is d q + m (Q4_0 is m = -8 d).
 *   Q8 (from Q8_0): d[8] float16, then eight runs of 32 bytes: in run t, byte 4n + i is
 *       q(n, 4t + i) as int8. The weight is d q.
 * A block adds (d dx) * sum(q xq) + m sx to output n. The integer sums are exact; the float steps
 * run in one order whatever M is and whichever tile computes them, so a row's result does not
 * depend on the rows batched with it. Compiled without fp contraction to keep that order.
 * Four code paths (isa.h): AVX-512 adds the products of two groups (16 outputs) at once with VNNI's
 * vpdpbusd, AVX2 with vpmaddubsw and
 * vpmaddwd, NEON with sdot (or smull and sadalp without dotprod), portable C one by one; all compute
 * the same integer sums and the same float steps (fmaf where the vector paths fuse), so their results
 * are identical bit for bit.
 * Returns 0, or -1 (K not a multiple of 32, out of memory).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "int8_tiles.h"

#define BLOCK 32
#define Q4_BLOCK_BYTES (2 * GROUP * 2 + GROUP * BLOCK / 2)
#define Q8_BLOCK_BYTES (GROUP * 2 + GROUP * BLOCK)

#define INLINE static inline __attribute__((always_inline))

const char *int8_matmul_isa(void) { return RILLET_ISA_NAME; }

#ifdef RILLET_AVX2
#include <immintrin.h>

static inline __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

#include "int8_activations.h"

/* acc + (d dx) * sum + m sx, in this order everywhere. */
static inline __m256 fold(__m256 acc, __m256 d, float dx, __m256i sum, __m256 m, float sx) {
    const __m256 scaled = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(sum), acc);
    return _mm256_fmadd_ps(m, _mm256_set1_ps(sx), scaled);
}

#ifdef RILLET_AVX512
/* AVX-512: groups in pairs, one 512-bit register each (int8_activations.h's two_groups), so that one
 * vpdpbusd adds the products of 16 outputs. The integer sums are those of the AVX2 path, and each
 * group's float steps (fold) are the same. */
INLINE void tile_q4(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / BLOCK;
    const int pairs = (groups + 1) / 2;
    const __m512i low = _mm512_set1_epi8(15);
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512i sum[TILE_ROWS][ROW_GROUPS / 2];
        for (int r = 0; r < rows; r++)
            for (int p = 0; p < pairs; p++) sum[r][p] = _mm512_setzero_si512();
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        for (int high = 0; high < 2; high++) {
#pragma GCC unroll 1
            for (int t = 0; t < 4; t++) {
                __m512i xt[TILE_ROWS];
                for (int r = 0; r < rows; r++) xt[r] = broadcast4x16(xq + r * K + b * BLOCK + 16 * high + 4 * t);
                for (int p = 0; p < pairs; p++) {
                    __m512i v = two_groups(w + 2 * p * group_bytes + b * Q4_BLOCK_BYTES + 32 + 32 * t, group_bytes,
                                           2 * p + 1 < groups);
                    v = _mm512_and_si512(high ? _mm512_srli_epi16(v, 4) : v, low);
                    for (int r = 0; r < rows; r++) sum[r][p] = _mm512_dpbusd_epi32(sum[r][p], v, xt[r]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = w + g * group_bytes + b * Q4_BLOCK_BYTES;
            const __m256 d = half8(block), m = half8(block + 16);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold(acc[r][g], d, xd[r * blocks + b], half_of(sum[r][g / 2], g % 2), m, xs[r * blocks + b]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

INLINE void tile_q8(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xs;
    const int64_t blocks = K / BLOCK;
    const int pairs = (groups + 1) / 2;
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = zero;
    for (int64_t b = 0; b < blocks; b++) {
        __m512i sum[TILE_ROWS][ROW_GROUPS / 2];
        for (int r = 0; r < rows; r++)
            for (int p = 0; p < pairs; p++) sum[r][p] = _mm512_setzero_si512();
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
#pragma GCC unroll 1
        for (int t = 0; t < 8; t++) {
            __m512i xt[TILE_ROWS];
            for (int r = 0; r < rows; r++) xt[r] = broadcast4x16(xq + r * K + b * BLOCK + 4 * t);
            for (int p = 0; p < pairs; p++) {
                const __m512i v = two_groups(w + 2 * p * group_bytes + b * Q8_BLOCK_BYTES + 16 + 32 * t, group_bytes,
                                             2 * p + 1 < groups);
                /* |q| times x with q's sign (x is never -128, so negating it is exact). */
                const __m512i magnitude = _mm512_abs_epi8(v);
                const __mmask64 negative = _mm512_movepi8_mask(v);
                for (int r = 0; r < rows; r++)
                    sum[r][p] = _mm512_dpbusd_epi32(sum[r][p], magnitude,
                                                    _mm512_mask_sub_epi8(xt[r], negative, _mm512_setzero_si512(), xt[r]));
            }
        }
        for (int g = 0; g < groups; g++) {
            const __m256 d = half8(w + g * group_bytes + b * Q8_BLOCK_BYTES);
            for (int r = 0; r < rows; r++) {
                const __m256 scaled = _mm256_mul_ps(d, _mm256_set1_ps(xd[r * blocks + b]));
                acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(half_of(sum[r][g / 2], g % 2)), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

#else

/* rows x groups tile: rows of x (integers xq [rows][K], scales xd/xs [rows][K / 32]) times
 * groups consecutive groups of W; out [rows][groups * 8]. */
INLINE void tile_q4(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / BLOCK;
    const __m256i low = _mm256_set1_epi8(15);
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        /* 16-bit sums: eight products of at most 15 * 127 per pair stay below 2^15. */
        __m256i sum[TILE_ROWS][ROW_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) sum[r][g] = _mm256_setzero_si256();
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        /* The low nibbles (k 0-15), then the high ones (k 16-31): fewer registers live than both
         * at once. Not unrolled: unrolled, GCC computes every product first and spills them. */
        for (int high = 0; high < 2; high++) {
#pragma GCC unroll 1
            for (int t = 0; t < 4; t++) {
                __m256i xt[TILE_ROWS];
                for (int r = 0; r < rows; r++) xt[r] = broadcast4(xq + r * K + b * BLOCK + 16 * high + 4 * t);
                for (int g = 0; g < groups; g++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(w + g * group_bytes + b * Q4_BLOCK_BYTES + 32 + 32 * t));
                    v = _mm256_and_si256(high ? _mm256_srli_epi16(v, 4) : v, low);
                    for (int r = 0; r < rows; r++) sum[r][g] = add_products(sum[r][g], v, xt[r]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = w + g * group_bytes + b * Q4_BLOCK_BYTES;
            const __m256 d = half8(block), m = half8(block + 16);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold(acc[r][g], d, xd[r * blocks + b], widen(sum[r][g]), m,
                                 xs[r * blocks + b]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

INLINE void tile_q8(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xs;
    const int64_t blocks = K / BLOCK;
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = zero;
    for (int64_t b = 0; b < blocks; b++) {
        __m256i sum[TILE_ROWS][ROW_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) sum[r][g] = _mm256_setzero_si256();
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
#pragma GCC unroll 1
        for (int t = 0; t < 8; t++) {
            __m256i xt[TILE_ROWS];
            for (int r = 0; r < rows; r++) xt[r] = broadcast4(xq + r * K + b * BLOCK + 4 * t);
            for (int g = 0; g < groups; g++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w + g * group_bytes + b * Q8_BLOCK_BYTES + 16 + 32 * t));
                /* |q| times x with q's sign: unsigned times signed, as maddubs needs. */
                const __m256i magnitude = _mm256_abs_epi8(v);
                for (int r = 0; r < rows; r++) {
                    sum[r][g] = _mm256_add_epi32(sum[r][g], widen(add_products(_mm256_setzero_si256(), magnitude,
                                                                               _mm256_sign_epi8(xt[r], v))));
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const __m256 d = half8(w + g * group_bytes + b * Q8_BLOCK_BYTES);
            for (int r = 0; r < rows; r++) {
                const __m256 scaled = _mm256_mul_ps(d, _mm256_set1_ps(xd[r * blocks + b]));
                acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(sum[r][g]), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

#endif /* RILLET_AVX512 */

#elif defined(RILLET_NEON)

#include "int8_activations.h"

/* NEON: a group's 8 outputs in two registers of four lanes, integer sums by add_products (sdot, or
 * widening multiplies), the float steps per lane in the portable C path's order (vfmaq where it has fmaf).
 * The outputs' totals are kept in out, read and written once a block. */
static inline float32x4_t half4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

/* rows x groups tile: rows of x (integers xq [rows][K], scales xd/xs [rows][K / 32]) times
 * groups consecutive groups of W; out [rows][groups * 8]. */
INLINE void tile_q4(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / BLOCK;
    for (int n = 0; n < rows * groups * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < blocks; b++) {
        int32x4_t sum[TILE_ROWS][ROW_GROUPS][2];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) sum[r][g][0] = sum[r][g][1] = vdupq_n_s32(0);
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q4_BLOCK_BYTES, group_bytes, groups * group_bytes, Q4_BLOCK_BYTES);
        for (int t = 0; t < 4; t++) {
            int8x16_t low[TILE_ROWS], high[TILE_ROWS]; /* x for the low nibbles (k 4t + i), the high (16 + 4t + i) */
            for (int r = 0; r < rows; r++) {
                low[r] = broadcast4(xq + r * K + b * BLOCK + 4 * t);
                high[r] = broadcast4(xq + r * K + b * BLOCK + 16 + 4 * t);
            }
            for (int g = 0; g < groups; g++)
                for (int i = 0; i < 2; i++) {
                    const uint8x16_t v = vld1q_u8(w + g * group_bytes + b * Q4_BLOCK_BYTES + 32 + 32 * t + 16 * i);
                    const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15)));
                    const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                    for (int r = 0; r < rows; r++)
                        sum[r][g][i] = add_products(add_products(sum[r][g][i], lo, low[r]), hi, high[r]);
                }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *block = w + g * group_bytes + b * Q4_BLOCK_BYTES;
            for (int i = 0; i < 2; i++) {
                const float32x4_t d = half4(block + 8 * i), m = half4(block + 16 + 8 * i);
                for (int r = 0; r < rows; r++) {
                    float *o = out + (r * groups + g) * GROUP + 4 * i;
                    const float32x4_t scaled = vmulq_n_f32(d, xd[r * blocks + b]);
                    const float32x4_t acc = vfmaq_f32(vld1q_f32(o), scaled, vcvtq_f32_s32(sum[r][g][i]));
                    vst1q_f32(o, vfmaq_n_f32(acc, m, xs[r * blocks + b]));
                }
            }
        }
    }
}

INLINE void tile_q8(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xs;
    const int64_t blocks = K / BLOCK;
    for (int n = 0; n < rows * groups * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < blocks; b++) {
        int32x4_t sum[TILE_ROWS][ROW_GROUPS][2];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) sum[r][g][0] = sum[r][g][1] = vdupq_n_s32(0);
        for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, b * Q8_BLOCK_BYTES, group_bytes, groups * group_bytes, Q8_BLOCK_BYTES);
        for (int t = 0; t < 8; t++) {
            int8x16_t xt[TILE_ROWS];
            for (int r = 0; r < rows; r++) xt[r] = broadcast4(xq + r * K + b * BLOCK + 4 * t);
            for (int g = 0; g < groups; g++)
                for (int i = 0; i < 2; i++) {
                    const int8x16_t v = vld1q_s8((const int8_t *)w + g * group_bytes + b * Q8_BLOCK_BYTES + 16 + 32 * t + 16 * i);
                    for (int r = 0; r < rows; r++) sum[r][g][i] = add_products(sum[r][g][i], v, xt[r]);
                }
        }
        for (int g = 0; g < groups; g++)
            for (int i = 0; i < 2; i++) {
                const float32x4_t d = half4(w + g * group_bytes + b * Q8_BLOCK_BYTES + 8 * i);
                for (int r = 0; r < rows; r++) {
                    float *o = out + (r * groups + g) * GROUP + 4 * i;
                    const float32x4_t scaled = vmulq_n_f32(d, xd[r * blocks + b]);
                    vst1q_f32(o, vfmaq_f32(vld1q_f32(o), scaled, vcvtq_f32_s32(sum[r][g][i])));
                }
            }
    }
}

#else

#include "half_float.h"
#include "int8_activations.h"

/* Portable C: the vector paths' integer sums, output by output, and their float steps in their order. */
static void tile_q4(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / BLOCK;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int n = 0; n < GROUP; n++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < blocks; b++) {
                    const uint8_t *block = w + g * group_bytes + b * Q4_BLOCK_BYTES;
                    const int8_t *x = xq + r * K + b * BLOCK;
                    int sum = 0;
                    for (int t = 0; t < 4; t++)
                        for (int i = 0; i < 4; i++) {
                            const int byte = block[32 + 32 * t + 4 * n + i];
                            sum += (byte & 15) * x[4 * t + i] + (byte >> 4) * x[16 + 4 * t + i];
                        }
                    const float scaled = half_to_float(block + 2 * n) * xd[r * blocks + b];
                    acc = fmaf(half_to_float(block + 16 + 2 * n), xs[r * blocks + b], fmaf(scaled, (float)sum, acc));
                }
                out[(r * groups + g) * GROUP + n] = acc;
            }
}

static void tile_q8(int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                    const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xs;
    const int64_t blocks = K / BLOCK;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int n = 0; n < GROUP; n++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < blocks; b++) {
                    const uint8_t *block = w + g * group_bytes + b * Q8_BLOCK_BYTES;
                    const int8_t *x = xq + r * K + b * BLOCK;
                    int sum = 0;
                    for (int t = 0; t < 8; t++)
                        for (int i = 0; i < 4; i++) sum += (int8_t)block[16 + 32 * t + 4 * n + i] * x[4 * t + i];
                    acc = fmaf(half_to_float(block + 2 * n) * xd[r * blocks + b], (float)sum, acc);
                }
                out[(r * groups + g) * GROUP + n] = acc;
            }
}

#endif

/* Each (rows, groups) a copy of its own, unrolled with its sums in registers. */
#define TILE_FUNCTIONS(r)                                                                                        \
    static void q4_##r##x1(TILE_ARGS) { tile_q4(r, 1, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q4_##r##x2(TILE_ARGS) { tile_q4(r, 2, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q4_##r##x3(TILE_ARGS) { tile_q4(r, 3, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q4_##r##x4(TILE_ARGS) { tile_q4(r, 4, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q8_##r##x1(TILE_ARGS) { tile_q8(r, 1, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q8_##r##x2(TILE_ARGS) { tile_q8(r, 2, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q8_##r##x3(TILE_ARGS) { tile_q8(r, 3, xq, xd, xs, K, w, group_bytes, out); }                   \
    static void q8_##r##x4(TILE_ARGS) { tile_q8(r, 4, xq, xd, xs, K, w, group_bytes, out); }
#define TILE_ARGS const int8_t *xq, const float *xd, const float *xs, int64_t K, const uint8_t *w, int64_t group_bytes, float *out
typedef void (*tile_fn)(TILE_ARGS);
TILE_FUNCTIONS(1)
TILE_FUNCTIONS(2)
TILE_FUNCTIONS(3)
TILE_FUNCTIONS(4)
#define ROW_OF(k, r) {k##_##r##x1, k##_##r##x2, k##_##r##x3, k##_##r##x4}
static const tile_fn TILES[2][TILE_ROWS][ROW_GROUPS] = {
    {ROW_OF(q4, 1), ROW_OF(q4, 2), ROW_OF(q4, 3), ROW_OF(q4, 4)},
    {ROW_OF(q8, 1), ROW_OF(q8, 2), ROW_OF(q8, 3), ROW_OF(q8, 4)},
};

static void tile_any(int q8, int rows, int groups, TILE_ARGS) {
    TILES[q8][rows - 1][groups - 1](xq, xd, xs, K, w, group_bytes, out);
}

/* Copies the valid columns of a [rows][groups * 8] tile into y at column n0. */
static inline void put(const float *tile_out, int rows, int groups, float *y, int64_t N, int64_t n0) {
    const int64_t width = N - n0 < groups * GROUP ? N - n0 : groups * GROUP;
    for (int r = 0; r < rows; r++) memcpy(y + r * N + n0, tile_out + r * groups * GROUP, width * sizeof(float));
}

static int matmul(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y, int q8) {
    if (K % BLOCK != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t groups = (N + GROUP - 1) / GROUP, blocks = K / BLOCK;
    const int64_t group_bytes = blocks * (q8 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES);
    int64_t chunk = CHUNK_BYTES / K / TILE_ROWS * TILE_ROWS;
    if (chunk < TILE_ROWS) chunk = TILE_ROWS;
    int8_t *xq = malloc((size_t)(M * K));
    float *xd = malloc((size_t)(M * blocks) * sizeof(float)), *xs = malloc((size_t)(M * blocks) * sizeof(float));
    if (xq == NULL || xd == NULL || xs == NULL) {
        free(xq), free(xd), free(xs);
        return -1;
    }
    const int step = M == 1 ? ROW_GROUPS : TILE_GROUPS;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M * blocks; i++) quantize_block(x + i * BLOCK, xq + i * BLOCK, xd + i, xs + i);
        float out[TILE_ROWS * ROW_GROUPS * GROUP];
        /* Rows in chunks that stay in L2 while every group's weights pass over them. */
        for (int64_t m0 = 0; m0 < M; m0 += chunk) {
            const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
            for (int64_t g = 0; g < groups; g += step) {
                const int n = groups - g < step ? (int)(groups - g) : step;
                for (int64_t m = m0; m < m1; m += TILE_ROWS) {
                    const int rows = m1 - m < TILE_ROWS ? (int)(m1 - m) : TILE_ROWS;
                    tile_any(q8, rows, n, xq + m * K, xd + m * blocks, xs + m * blocks, K,
                             packed + g * group_bytes, group_bytes, out);
                    put(out, rows, n, y + m * N, N, g * GROUP);
                }
            }
        }
    }
    free(xq), free(xd), free(xs);
    return 0;
}

int int8_matmul_q4(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 0);
}

int int8_matmul_q8(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    return matmul(x, M, K, packed, N, y, 1);
}

