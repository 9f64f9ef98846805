/* y = x @ W.T with W in a GGUF file's Q5_0, Q5_1, Q4_K, Q5_K or Q6_K blocks and x rounded to 8-bit
 * integers per block of 32: int8_matmul.c's method for the types of kquant_matmul.c. Faster than
 * kquant_matmul.c, not exact. rillet/model/kquant_blocks.py reads the file's blocks and packs them.
 *
 * x: [M, K] float32 (row stride K); y: [M, N] float32 (row stride N); K a multiple of the type's block
 * (32 values; 256 for the K types). Each block of 32 values of a row of x becomes dx = max|x| / 127,
 * xq = round(x / dx) in -127..127 and sx = dx * sum(xq), as in int8_matmul.c. Each weight is
 * a (q - bias) + b with a, b per sub-block (32 values; 16 for Q6_K), as kquant_matmul.c lists.
 * W is packed in groups of 8 output rows (N padded with zero rows to a multiple of 8); for each group
 * its K / block blocks follow one another, each a header and then its runs of 32 values:
 *   header: Q5_0 d[8]; Q5_1 d[8], m[8]; Q4_K, Q5_K d[8], dmin[8], sc[8][8], m[8][8] (uint8);
 *       Q6_K d[8], sc[16][8] (int8); d, dmin, m float16.
 *   32 values: four runs of 32 bytes (byte 4n + i of run t: the low 4 bits of q(n, 4t + i) | those of
 *       q(n, 16 + 4t + i) << 4); then for 5-bit q 32 bytes (bit u of byte 4n + i: bit 4 of
 *       q(n, 4u + i)), for 6-bit q two halves of 32 bytes (bits 2t, 2t + 1 of byte 4n + i of half h:
 *       bits 4, 5 of q(n, 16h + 4t + i)).
 * A sub-block adds (a dx) * sum((q - bias) xq) + b sx to output n. The integer sums are exact (the
 * bias is subtracted in integers); the float steps run in one order whatever M is and whichever tile
 * computes them, so a row's result does not depend on the rows batched with it. Compiled without fp
 * contraction to keep that order. Four code paths (isa.h): AVX-512 adds the products with VNNI's
 * vpdpbusd, AVX2 with vpmaddubsw, NEON with sdot (or smull and sadalp), portable C one by one; all
 * compute the same integer sums and the same float steps in the same order (fmaf where the vector paths
 * fuse), so their results are identical.
 * Returns 0, or -1 (K not a multiple of the block, out of memory).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "int8_tiles.h"

enum { Q5_0, Q5_1, Q4_K, Q5_K, Q6_K };
#define INLINE static inline __attribute__((always_inline))

const char *kquant_int8_matmul_isa(void) { return RILLET_ISA_NAME; }

/* Per type: values per block and per sub-block, bits of q, its bias (0: the type has an offset b). */
INLINE int block_values(int t) { return t == Q5_0 || t == Q5_1 ? 32 : 256; }
INLINE int bits(int t) { return t == Q4_K ? 4 : t == Q6_K ? 6 : 5; }
INLINE int bias(int t) { return t == Q5_0 ? 16 : t == Q6_K ? 32 : 0; }
INLINE int header_bytes(int t) { return t == Q5_0 ? 16 : t == Q5_1 ? 32 : t == Q6_K ? 144 : 160; }
INLINE int run_bytes(int t) { return 128 + 32 * (bits(t) - 4); } /* per 32 values */
INLINE int64_t block_bytes(int t) { return header_bytes(t) + block_values(t) / 32 * run_bytes(t); }

#ifdef RILLET_AVX2
#include <immintrin.h>

static inline __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256 u8_floats(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline __m256 i8_floats(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

#include "int8_activations.h"

/* Run t of half h of 32 values (value 16h + 4t + i of row n in byte 4n + i): q as unsigned bytes. The
 * 16-bit shifts move the wanted bits to the bottom of their own byte before the mask. */
INLINE __m256i run(int type, const uint8_t *values, int h, int t) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)(values + 32 * t));
    __m256i q = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
    const uint8_t *planes = values + 128;
    if (bits(type) == 5) {
        const __m256i p = _mm256_loadu_si256((const __m256i *)planes);
        q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(p, 4 * h + t), _mm256_set1_epi8(1)), 4));
    } else if (bits(type) == 6) {
        const __m256i p = _mm256_loadu_si256((const __m256i *)(planes + 32 * h));
        q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(p, 2 * t), _mm256_set1_epi8(3)), 4));
    }
    return q;
}

/* a and b of sub-block s for a group's 8 rows, from its block header hd. */
INLINE void scales(int t, const uint8_t *hd, int s, __m256 *a, __m256 *b) {
    *a = half8(hd), *b = _mm256_setzero_ps();
    if (t == Q5_1) *b = half8(hd + 16);
    if (t == Q4_K || t == Q5_K) {
        *a = _mm256_mul_ps(*a, u8_floats(hd + 32 + 8 * s));
        *b = _mm256_xor_ps(_mm256_set1_ps(-0.0f), _mm256_mul_ps(half8(hd + 16), u8_floats(hd + 96 + 8 * s)));
    }
    if (t == Q6_K) *a = _mm256_mul_ps(*a, i8_floats(hd + 16 + 8 * s));
}

#ifdef RILLET_AVX512
/* run() for a pair of groups (int8_activations.h's two_groups): the first's run in the low half of the
 * register, the second's (group_bytes on) in the high half. */
INLINE __m512i run_pair(int type, const uint8_t *values, int64_t group_bytes, int both, int h, int t) {
    const __m512i v = two_groups(values + 32 * t, group_bytes, both);
    __m512i q = _mm512_and_si512(h ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(15));
    const uint8_t *planes = values + 128;
    if (bits(type) == 5) {
        const __m512i p = two_groups(planes, group_bytes, both);
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(p, 4 * h + t), _mm512_set1_epi8(1)), 4));
    } else if (bits(type) == 6) {
        const __m512i p = two_groups(planes + 32 * h, group_bytes, both);
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(p, 2 * t), _mm512_set1_epi8(3)), 4));
    }
    return q;
}

/* The AVX2 tile's integer sums with one vpdpbusd for a pair of groups (16 outputs), and its float
 * steps group by group, in the same order. */
INLINE void tile(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                 const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32, pairs = (groups + 1) / 2;
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *header = w + b / per_block * block_bytes(type);
        const uint8_t *values = header + header_bytes(type) + b % per_block * run_bytes(type);
        if (b % per_block == 0)
            for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, header - w, group_bytes, groups * group_bytes, block_bytes(type));
        __m512i sum[TILE_ROWS][ROW_GROUPS / 2], total[TILE_ROWS][ROW_GROUPS / 2];
        for (int r = 0; r < rows; r++)
            for (int p = 0; p < pairs; p++) total[r][p] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            if (h == 0 || bits(type) > 4)
                for (int r = 0; r < rows; r++)
                    for (int p = 0; p < pairs; p++) sum[r][p] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                __m512i xt[TILE_ROWS], xb[TILE_ROWS];
                for (int r = 0; r < rows; r++) {
                    xt[r] = broadcast4x16(xq + r * K + b * 32 + 16 * h + 4 * t);
                    if (bias(type)) xb[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)bias(type)), xt[r]);
                }
                for (int p = 0; p < pairs; p++) {
                    const __m512i q = run_pair(type, values + 2 * p * group_bytes, group_bytes, 2 * p + 1 < groups, h, t);
                    for (int r = 0; r < rows; r++) {
                        sum[r][p] = _mm512_dpbusd_epi32(sum[r][p], q, xt[r]);
                        if (bias(type)) sum[r][p] = _mm512_sub_epi32(sum[r][p], xb[r]);
                    }
                }
            }
            if (bits(type) == 4 && h == 0) continue;
            if (type != Q6_K) {
                for (int r = 0; r < rows; r++)
                    for (int p = 0; p < pairs; p++) total[r][p] = _mm512_add_epi32(total[r][p], sum[r][p]);
                continue;
            }
            for (int g = 0; g < groups; g++) {
                __m256 a, offset;
                scales(type, header + g * group_bytes, 2 * (int)(b % per_block) + h, &a, &offset);
                for (int r = 0; r < rows; r++) {
                    const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                    acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(half_of(sum[r][g / 2], g % 2)), acc[r][g]);
                }
            }
        }
        if (type == Q6_K) continue;
        for (int g = 0; g < groups; g++) {
            __m256 a, offset;
            scales(type, header + g * group_bytes, (int)(b % per_block), &a, &offset);
            for (int r = 0; r < rows; r++) {
                const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(half_of(total[r][g / 2], g % 2)), acc[r][g]);
                if (!bias(type)) acc[r][g] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs[r * blocks + b]), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

#else

/* rows x groups tile: rows of x (integers xq [rows][K], scales xd/xs [rows][K / 32]) times groups
 * consecutive groups of W; out [rows][groups * 8]. */
INLINE void tile(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                 const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32;
    __m256 acc[TILE_ROWS][ROW_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *header = w + b / per_block * block_bytes(type);
        const uint8_t *values = header + header_bytes(type) + b % per_block * run_bytes(type);
        if (b % per_block == 0)
            for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, header - w, group_bytes, groups * group_bytes, block_bytes(type));
        /* 16-bit sums of a half: four pairs of products stay below 2^15 for 5- and 6-bit q (q - bias
         * for Q6_K); 4-bit q sums both halves, as int8_matmul.c does. */
        __m256i sum[TILE_ROWS][ROW_GROUPS], total[TILE_ROWS][ROW_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) total[r][g] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            if (h == 0 || bits(type) > 4)
                for (int r = 0; r < rows; r++)
                    for (int g = 0; g < groups; g++) sum[r][g] = _mm256_setzero_si256();
            /* Unrolled, the 5- and 6-bit planes' shifts are constants (about 10% faster for them). */
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                __m256i xt[TILE_ROWS], xb[TILE_ROWS];
                for (int r = 0; r < rows; r++) {
                    xt[r] = broadcast4(xq + r * K + b * 32 + 16 * h + 4 * t);
                    if (bias(type)) xb[r] = add_products(_mm256_setzero_si256(), _mm256_set1_epi8((char)bias(type)), xt[r]);
                }
                for (int g = 0; g < groups; g++) {
                    const __m256i q = run(type, values + g * group_bytes, h, t);
                    for (int r = 0; r < rows; r++) {
                        sum[r][g] = add_products(sum[r][g], q, xt[r]);
                        if (bias(type)) sum[r][g] = subtract(sum[r][g], xb[r]);
                    }
                }
            }
            if (bits(type) == 4 && h == 0) continue;
            for (int g = 0; g < groups; g++) {
                __m256 a, offset;
                if (type == Q6_K) scales(type, header + g * group_bytes, 2 * (int)(b % per_block) + h, &a, &offset);
                for (int r = 0; r < rows; r++) {
                    const __m256i part = widen(sum[r][g]);
                    if (type == Q6_K) {
                        const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                        acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(part), acc[r][g]);
                    } else {
                        total[r][g] = _mm256_add_epi32(total[r][g], part);
                    }
                }
            }
        }
        if (type == Q6_K) continue;
        for (int g = 0; g < groups; g++) {
            __m256 a, offset;
            scales(type, header + g * group_bytes, (int)(b % per_block), &a, &offset);
            for (int r = 0; r < rows; r++) {
                const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                acc[r][g] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(total[r][g]), acc[r][g]);
                if (!bias(type)) acc[r][g] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs[r * blocks + b]), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm256_storeu_ps(out + (r * groups + g) * GROUP, acc[r][g]);
}

#endif /* RILLET_AVX512 */

#endif /* RILLET_AVX2 */

#ifdef RILLET_NEON

/* NEON: a group's 8 outputs in two registers of four lanes, integer sums by add_products (sdot, or
 * widening multiplies) of q - bias (in -32..63: int8) and xq, the float steps per lane in the portable
 * C path's order (vfmaq where it has fmaf). The outputs' totals are kept in out. The driver below
 * (tile_any ... matmul) is the AVX2 path's. */
static inline float32x4_t half4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

/* 8 bytes as floats (unsigned, signed): rows 0-3 in f[0], 4-7 in f[1]. */
INLINE void u8_floats(const uint8_t *p, float32x4_t f[2]) {
    const uint16x8_t a = vmovl_u8(vld1_u8(p));
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a))), f[1] = vcvtq_f32_u32(vmovl_high_u16(a));
}

INLINE void i8_floats(const uint8_t *p, float32x4_t f[2]) {
    const int16x8_t a = vmovl_s8(vld1_s8((const int8_t *)p));
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), f[1] = vcvtq_f32_s32(vmovl_high_s16(a));
}

#include "int8_activations.h"

/* Run t of half h of 32 values (value 16h + 4t + i of row n in byte 4n + i): q - bias for rows 0-3
 * (q[0]) and 4-7 (q[1]). */
INLINE void run(int type, const uint8_t *values, int h, int t, int8x16_t q[2]) {
    for (int i = 0; i < 2; i++) {
        const uint8x16_t v = vld1q_u8(values + 32 * t + 16 * i);
        uint8x16_t u = h ? vshrq_n_u8(v, 4) : vandq_u8(v, vdupq_n_u8(15));
        if (bits(type) == 5) {
            const uint8x16_t p = vshlq_u8(vld1q_u8(values + 128 + 16 * i), vdupq_n_s8((int8_t)-(4 * h + t)));
            u = vorrq_u8(u, vshlq_n_u8(vandq_u8(p, vdupq_n_u8(1)), 4));
        } else if (bits(type) == 6) {
            const uint8x16_t p = vshlq_u8(vld1q_u8(values + 128 + 32 * h + 16 * i), vdupq_n_s8((int8_t)(-2 * t)));
            u = vorrq_u8(u, vshlq_n_u8(vandq_u8(p, vdupq_n_u8(3)), 4));
        }
        q[i] = vreinterpretq_s8_u8(vsubq_u8(u, vdupq_n_u8((uint8_t)bias(type))));
    }
}

/* a and b of sub-block s for a group's 8 rows (two registers each), from its block header hd. */
INLINE void scales(int t, const uint8_t *hd, int s, float32x4_t a[2], float32x4_t b[2]) {
    for (int i = 0; i < 2; i++) a[i] = half4(hd + 8 * i), b[i] = t == Q5_1 ? half4(hd + 16 + 8 * i) : vdupq_n_f32(0.0f);
    if (t == Q4_K || t == Q5_K) {
        float32x4_t sc[2], m[2];
        u8_floats(hd + 32 + 8 * s, sc);
        u8_floats(hd + 96 + 8 * s, m);
        for (int i = 0; i < 2; i++) a[i] = vmulq_f32(a[i], sc[i]), b[i] = vnegq_f32(vmulq_f32(half4(hd + 16 + 8 * i), m[i]));
    }
    if (t == Q6_K) {
        float32x4_t sc[2];
        i8_floats(hd + 16 + 8 * s, sc);
        for (int i = 0; i < 2; i++) a[i] = vmulq_f32(a[i], sc[i]);
    }
}

/* rows x groups tile: rows of x (integers xq [rows][K], scales xd/xs [rows][K / 32]) times groups
 * consecutive groups of W; out [rows][groups * 8]. */
INLINE void tile(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                 const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32;
    for (int n = 0; n < rows * groups * GROUP; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *header = w + b / per_block * block_bytes(type);
        const uint8_t *values = header + header_bytes(type) + b % per_block * run_bytes(type);
        if (b % per_block == 0)
            for (int g = 0; g < groups; g++) prefetch_pass(w + g * group_bytes, header - w, group_bytes, groups * group_bytes, block_bytes(type));
        /* Q6_K: each half (16 values) its own sum and scale; the others: one sum over both halves. */
        int32x4_t sum[TILE_ROWS][ROW_GROUPS][2];
        for (int h = 0; h < 2; h++) {
            if (h == 0 || type == Q6_K)
                for (int r = 0; r < rows; r++)
                    for (int g = 0; g < groups; g++) sum[r][g][0] = sum[r][g][1] = vdupq_n_s32(0);
            for (int t = 0; t < 4; t++) {
                int8x16_t xt[TILE_ROWS];
                for (int r = 0; r < rows; r++) xt[r] = broadcast4(xq + r * K + b * 32 + 16 * h + 4 * t);
                for (int g = 0; g < groups; g++) {
                    int8x16_t q[2];
                    run(type, values + g * group_bytes, h, t, q);
                    for (int r = 0; r < rows; r++)
                        for (int i = 0; i < 2; i++) sum[r][g][i] = add_products(sum[r][g][i], q[i], xt[r]);
                }
            }
            if (type != Q6_K && h == 0) continue;
            for (int g = 0; g < groups; g++) {
                float32x4_t a[2], offset[2];
                scales(type, header + g * group_bytes, type == Q6_K ? 2 * (int)(b % per_block) + h : (int)(b % per_block),
                       a, offset);
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < 2; i++) {
                        float *o = out + (r * groups + g) * GROUP + 4 * i;
                        const float32x4_t scaled = vmulq_n_f32(a[i], xd[r * blocks + b]);
                        float32x4_t acc = vfmaq_f32(vld1q_f32(o), scaled, vcvtq_f32_s32(sum[r][g][i]));
                        if (!bias(type)) acc = vfmaq_n_f32(acc, offset[i], xs[r * blocks + b]);
                        vst1q_f32(o, acc);
                    }
            }
        }
    }
}

#endif /* RILLET_NEON */

#if defined(RILLET_AVX2) || defined(RILLET_NEON)

/* Each (type, rows, groups) a copy of its own, unrolled with its sums in registers. */
static void tile_any(int t, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                     const uint8_t *w, int64_t group_bytes, float *out) {
#define TILE(r, g) tile(T, r, g, xq, xd, xs, K, w, group_bytes, out)
#define GROUPS(r) switch (groups) { case 1: TILE(r, 1); break; case 2: TILE(r, 2); break; \
    case 3: TILE(r, 3); break; default: TILE(r, 4); }
#define TILES(type) { enum { T = type }; switch (rows) { case 1: GROUPS(1); break; case 2: GROUPS(2); break; \
    case 3: GROUPS(3); break; default: GROUPS(4); } }
    switch (t) { case Q5_0: TILES(Q5_0); break; case Q5_1: TILES(Q5_1); break; case Q4_K: TILES(Q4_K); break;
    case Q5_K: TILES(Q5_K); break; default: TILES(Q6_K); }
#undef TILE
#undef GROUPS
#undef TILES
}

/* Copies the valid columns of a [rows][groups * 8] tile into y at column n0. */
static inline void put(const float *tile_out, int rows, int groups, float *y, int64_t N, int64_t n0) {
    const int64_t width = N - n0 < groups * GROUP ? N - n0 : groups * GROUP;
    for (int r = 0; r < rows; r++) memcpy(y + r * N + n0, tile_out + r * groups * GROUP, width * sizeof(float));
}

static int matmul(int t, const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    if (K % block_values(t) != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t groups = (N + GROUP - 1) / GROUP, blocks = K / 32, group_bytes = K / block_values(t) * block_bytes(t);
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
        for (int64_t i = 0; i < M * blocks; i++) quantize_block(x + i * 32, xq + i * 32, xd + i, xs + i);
        float out[TILE_ROWS * ROW_GROUPS * GROUP];
        /* Rows in chunks that stay in L2 while every group's weights pass over them. */
        for (int64_t m0 = 0; m0 < M; m0 += chunk) {
            const int64_t m1 = m0 + chunk < M ? m0 + chunk : M;
#pragma omp for schedule(static)
            for (int64_t g = 0; g < groups; g += step) {
                const int n = groups - g < step ? (int)(groups - g) : step;
                for (int64_t m = m0; m < m1; m += TILE_ROWS) {
                    const int rows = m1 - m < TILE_ROWS ? (int)(m1 - m) : TILE_ROWS;
                    tile_any(t, rows, n, xq + m * K, xd + m * blocks, xs + m * blocks, K, packed + g * group_bytes,
                             group_bytes, out);
                    put(out, rows, n, y + m * N, N, g * GROUP);
                }
            }
        }
    }
    free(xq), free(xd), free(xs);
    return 0;
}

#else

/* Portable C: each output one row at a time, with the AVX2 path's rounding, integer sums and float
 * steps. */
#include "half_float.h"
#include "int8_activations.h"

/* q(n, k) - bias of row n (0..7), value k (0..31) of a run of 32 values. */
static int value_of(int t, const uint8_t *values, int n, int k) {
    const int h = k / 16, i = k % 4, run = k % 16 / 4;
    int q = (values[32 * run + 4 * n + i] >> (4 * h)) & 15;
    if (bits(t) == 5) q |= ((values[128 + 4 * n + i] >> (k / 4)) & 1) << 4;
    if (bits(t) == 6) q |= ((values[128 + 32 * h + 4 * n + i] >> (2 * run)) & 3) << 4;
    return q - bias(t);
}

static int matmul(int t, const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) {
    if (K % block_values(t) != 0 || M <= 0) return M == 0 ? 0 : -1;
    const int64_t blocks = K / 32, per_block = block_values(t) / 32;
    const int64_t group_bytes = K / block_values(t) * block_bytes(t);
    int8_t *xq = malloc((size_t)(M * K));
    float *xd = malloc((size_t)(M * blocks) * sizeof(float)), *xs = malloc((size_t)(M * blocks) * sizeof(float));
    if (xq == NULL || xd == NULL || xs == NULL) {
        free(xq), free(xd), free(xs);
        return -1;
    }
    for (int64_t i = 0; i < M * blocks; i++) quantize_block(x + i * 32, xq + i * 32, xd + i, xs + i);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < M * N; o++) {
        const int64_t m = o / N, n = o % N;
        const int r = (int)(n % GROUP);
        const uint8_t *group = packed + n / GROUP * group_bytes;
        float acc = 0.0f;
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *hd = group + b / per_block * block_bytes(t);
            const uint8_t *values = hd + header_bytes(t) + b % per_block * run_bytes(t);
            const int s = (int)(b % per_block);
            const int8_t *xb = xq + m * K + b * 32;
            int sums[2] = {0, 0};
            for (int k = 0; k < 32; k++) sums[k / 16] += value_of(t, values, r, k) * xb[k];
            const float d = half_to_float(hd + 2 * r), dx = xd[m * blocks + b];
            if (t == Q6_K) {
                acc = fmaf(d * (float)(int8_t)hd[16 + 8 * (2 * s) + r] * dx, (float)sums[0], acc);
                acc = fmaf(d * (float)(int8_t)hd[16 + 8 * (2 * s + 1) + r] * dx, (float)sums[1], acc);
                continue;
            }
            float a = d, offset = t == Q5_1 ? half_to_float(hd + 16 + 2 * r) : 0.0f;
            if (t == Q4_K || t == Q5_K)
                a *= hd[32 + 8 * s + r], offset = -(half_to_float(hd + 16 + 2 * r) * hd[96 + 8 * s + r]);
            acc = fmaf(a * dx, (float)(sums[0] + sums[1]), acc);
            if (!bias(t)) acc = fmaf(offset, xs[m * blocks + b], acc);
        }
        y[o] = acc;
    }
    free(xq), free(xd), free(xs);
    return 0;
}

#endif

#define EXPORT(kernel, type)                                                                                   \
    int kquant_int8_matmul_##kernel(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, float *y) { \
        return matmul(type, x, M, K, packed, N, y);                                                       \
    }
EXPORT(q5_0, Q5_0)
EXPORT(q5_1, Q5_1)
EXPORT(q4_k, Q4_K)
EXPORT(q5_k, Q5_K)
EXPORT(q6_k, Q6_K)
