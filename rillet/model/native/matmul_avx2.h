/* matmul.c's microkernels on AVX2 (with FMA and F16C): a group's 16 outputs in two registers of 8;
 * integer products by vpmaddubsw and vpmaddwd. Each output's sums are
 * the portable C path's (matmul_scalar.h), step for step. matmul_avx512.h builds on this file: it keeps
 * its helpers, its unpacking and its activations, and replaces the three products (float_rows,
 * float_tile, int8_rows). Included by matmul.c after matmul_table.h. */
#ifndef RILLET_MATMUL_AVX2_H
#define RILLET_MATMUL_AVX2_H

#include <immintrin.h>
#include <string.h>

static inline __m128i load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }
static inline __m128i load8(const uint8_t *p) { return _mm_loadl_epi64((const __m128i *)p); }
static inline __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(load16(p)); }
static inline __m256 u8_floats(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
static inline __m256 i8_floats(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

/* The sum of a block of 32 float32 activations, in one order on every path. */
static inline float block_sum(const float *x) {
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                   _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

/* One block of 32 floats -> 32 int8, its scale dx and sx = dx * sum(q). */
static void quantize_block(const float *x, int8_t *q, float *dx, float *sx) {
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                   _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    const float d = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, inv), mode));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, inv), mode));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, inv), mode));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, inv), mode));
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    /* packs works within 128-bit lanes; the permutation puts the 32 bytes back in order. */
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    *dx = d;
    *sx = d * (float)_mm_cvtsi128_si32(t);
}

/* |x|'s largest value over B floats, as a vector of 8 maxima to reduce. */
INLINE __m256 abs_max8(const float *x, int B) {
    __m256 a = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int k = 0; k < B; k += 8) a = _mm256_max_ps(a, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
    return a;
}

/* quantize_part's rounding, given inv = 127 / amax (0 where amax is 0) and d = amax / 127. */
INLINE void round_part(const float *x, int B, float inv_, float d, int8_t *q, float *sums, float *rest) {
    const __m256 inv = _mm256_set1_ps(inv_), scale = _mm256_set1_ps(d);
    const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (int k = 0; k < B; k += 32) {
        __m256i i[4];
        for (int j = 0; j < 4; j++) {
            const __m256 v = _mm256_loadu_ps(x + k + 8 * j), rounded = _mm256_round_ps(_mm256_mul_ps(v, inv), mode);
            i[j] = _mm256_cvtps_epi32(rounded);
            if (rest != NULL) _mm256_storeu_ps(rest + k + 8 * j, _mm256_fnmadd_ps(scale, rounded, v));
        }
        const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        for (int half = 0; half < 2; half++) {
            const __m256i s = _mm256_add_epi32(i[2 * half], i[2 * half + 1]);
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
            sums[k / 16 + half] = (float)_mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1)));
        }
    }
}

/* INT8X2 mode: B floats rounded to int8 q with its scale d, the sums of q per 16 values (as floats) in
 * sums, and (where rest is not NULL) what is left, rest = x - d q in one fma: the portable C's steps,
 * 8 values at a time. */
static void quantize_part(const float *x, int B, int8_t *q, float *d, float *sums, float *rest) {
    const __m256 a = abs_max8(x, B);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    *d = amax / 127.0f;
    round_part(x, B, amax != 0.0f ? 127.0f / amax : 0.0f, *d, q, sums, rest);
}

/* quantize_part for eight blocks of 32 values one after another (x, q, rest: 8 x 32; d: 8; sums: 16),
 * with the same results: the eight maxima reduced side by side and divided in one register, so that a
 * division's latency, and the chain from a block's maximum to its rounding, are not paid per block. */
#define QUANTIZE_PARTS8
static void quantize_parts8(const float *x, int8_t *q, float *d, float *sums, float *rest) {
    __m256 m[8];
    for (int b = 0; b < 8; b++) m[b] = abs_max8(x + 32 * b, 32);
    /* Lane b of the result: block b's maximum (max is exact in any order). */
    __m256 p[4], r[2];
    for (int b = 0; b < 4; b++)
        p[b] = _mm256_max_ps(_mm256_unpacklo_ps(m[2 * b], m[2 * b + 1]), _mm256_unpackhi_ps(m[2 * b], m[2 * b + 1]));
    for (int b = 0; b < 2; b++) {
        const __m256d u = _mm256_castps_pd(p[2 * b]), v = _mm256_castps_pd(p[2 * b + 1]);
        r[b] = _mm256_max_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(u, v)), _mm256_castpd_ps(_mm256_unpackhi_pd(u, v)));
    }
    /* r[0] lanes: blocks 0-3 (low half) and 0-3 (high half), r[1] the same for 4-7. */
    const __m256 amax = _mm256_max_ps(_mm256_permute2f128_ps(r[0], r[1], 0x20), _mm256_permute2f128_ps(r[0], r[1], 0x31));
    const __m256 nonzero = _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_NEQ_OQ);
    float inv[8];
    _mm256_storeu_ps(inv, _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(127.0f), amax)));
    _mm256_storeu_ps(d, _mm256_div_ps(amax, _mm256_set1_ps(127.0f)));
    for (int b = 0; b < 8; b++)
        round_part(x + 32 * b, 32, inv[b], d[b], q + 32 * b, sums + 2 * b, rest == NULL ? NULL : rest + 32 * b);
}

/* a and b of sub-block s for rows n0..n0 + 7 of a group of G rows, from its block header h. */
INLINE void scales8(int t, int G, const uint8_t *h, int s, int n0, __m256 *a, __m256 *b) {
    *a = half8(h + 2 * n0), *b = _mm256_setzero_ps();
    if (t == Q4 || t == Q5_1) *b = half8(h + offset_field(G) + 2 * n0);
    if (t == Q4_0) *b = _mm256_mul_ps(*a, _mm256_set1_ps(-8.0f));
    if (t == Q4_K || t == Q5_K) {
        *a = _mm256_mul_ps(*a, u8_floats(load8(h + scale_field(t, G, s) + n0)));
        *b = _mm256_xor_ps(_mm256_set1_ps(-0.0f), _mm256_mul_ps(half8(h + offset_field(G) + 2 * n0),
                                                                u8_floats(load8(h + min_field(G, s) + n0))));
    }
    if (t == Q6_K) *a = _mm256_mul_ps(*a, i8_floats(load8(h + scale_field(t, G, s) + n0)));
}

/* FLOAT32 mode: the 16 rows' q - bias for value k of a sub-block, as bytes (int8 where is_signed). The
 * 16-bit shifts move the wanted bits to the bottom of their own byte before the mask, so none crosses bytes. */
INLINE __m128i float_values(int t, const uint8_t *sub, int k) {
    if (bits(t) == 8) return load16(sub + 16 * k);
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
 * of the second. 4-bit q is split after widening (fewer conversions). */
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
        const __m128i q = float_values(t, sub, 2 * j + i), upper = _mm_srli_si128(q, 8);
        w[2 * i] = is_signed(t) ? i8_floats(q) : u8_floats(q);
        w[2 * i + 1] = is_signed(t) ? i8_floats(upper) : u8_floats(upper);
    }
}

/* FLOAT32 mode's unpacking for the batched tiles: one block of a group, its integers as float32
 * [block_values][16] into qf, each sub-block's a then b ([block_values / S][32]) into ab. */
INLINE void float_unpack(int t, const uint8_t *block, float *restrict qf, float *restrict ab) {
    const int S = sub_values(t);
    for (int s = 0; s < block_values(t) / S; s++) {
        const uint8_t *sub = block + header_bytes(FLOAT32, t) + s * sub_bytes(t);
        for (int j = 0; j < S / 2; j++) {
            __m256 q[4];
            pair_floats(t, sub, j, q);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(qf + (s * S + 2 * j) * 16 + 8 * i, q[i]);
        }
        __m256 a[2], b[2];
        for (int i = 0; i < 2; i++) scales8(t, 16, block, s, 8 * i, &a[i], &b[i]);
        for (int i = 0; i < 2; i++) _mm256_storeu_ps(ab + s * 32 + 8 * i, a[i]), _mm256_storeu_ps(ab + s * 32 + 16 + 8 * i, b[i]);
    }
}

/* acc = fma(b, xs, fma(a, partial, acc)): a sub-block's sums folded into an output (b: offset types only). */
INLINE __m256 fold(int offset, __m256 acc, __m256 a, __m256 partial, __m256 b, const float *xs) {
    acc = _mm256_fmadd_ps(a, partial, acc);
    return offset ? _mm256_fmadd_ps(b, _mm256_broadcast_ss(xs), acc) : acc;
}

/* INT8 mode: run t (0..3) of half h of 32 values (value 16h + 4t + i of row n in byte 4n + i) for rows
 * 8i..8i + 7 of the group: q as bytes, before the bias (8-bit q: run 4h + t, signed). */
INLINE __m256i int8_run(int type, const uint8_t *values, int h, int t, int i) {
    if (bits(type) == 8) return load32(values + 64 * (4 * h + t) + 32 * i);
    const __m256i v = load32(values + 64 * t + 32 * i);
    __m256i q = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
    const uint8_t *planes = values + 256 + 32 * i;
    if (bits(type) == 5) {
        const __m256i p = load32(planes);
        q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(p, 4 * h + t), _mm256_set1_epi8(1)), 4));
    } else if (bits(type) == 6) {
        const __m256i p = load32(planes + 64 * h);
        q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(p, 2 * t), _mm256_set1_epi8(3)), 4));
    }
    return q;
}

/* Four bytes of x's integers, repeated across a register. */
static inline __m256i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

#ifndef RILLET_AVX512

#define FLOAT_ROWS 6          /* rows a pass of few_rows takes */
#define FLOAT_ROWS_LIMIT 12   /* batches up to this many rows read the packed blocks; more take tiles (measured on Zen 5) */
#define FLOAT_GROUPS(rows) ((rows) == 1 ? 4 : (rows) <= 2 ? 2 : 1) /* groups side by side: sums in registers */
#define TILE_ROWS 6           /* rows of x per register tile: 12 partial sums + 2 weights + 1 broadcast */
#define TILE_GROUPS 1
#define INT8_ROWS 4
#define INT8_GROUPS(rows) (0 * (rows) + 1) /* one stream per thread (matmul_avx512.h): 1.36x at one row */
#define INT8X2_ROWS 4 /* rows sharing each run of unpacked weights: 1.1-1.4x over 1 row at 8 and 64 rows (Zen 4, this build) */
#define INT8X2_GROUPS(rows) (0 * (rows) + 1)

/* FLOAT32 mode, rows rows of x against groups groups side by side, reading each block's integers
 * straight into the sums, converted once for all the rows; out [rows][groups * 16]. One row keeps its
 * totals in registers; more keep them in out between sub-blocks (the same fused steps, so the same
 * numbers), which leaves registers for more rows. xsum: the rows' sums per 32 values. */
INLINE void float_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                       const float *xsum, float *out) {
    const int S = sub_values(t);
    __m256 acc[4][2];
    if (rows == 1)
        for (int g = 0; g < groups; g++) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    else
        for (int i = 0; i < rows * groups * 16; i++) out[i] = 0.0f;
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        FLOAT_SUB_BLOCK(t, w, v0);
        prefetch_chunk(w, groups, group_bytes, block - w, block_bytes(FLOAT32, t), s, block_values(t) / sub_values(t));
        __m256 p[FLOAT_ROWS][4][2];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g][0] = p[r][g][1] = _mm256_setzero_ps();
        }
        for (int j = 0; j < S / 2; j++)
            for (int g = 0; g < groups; g++) {
                __m256 q[4];
                pair_floats(t, sub + g * group_bytes, j, q);
                for (int r = 0; r < rows; r++) {
                    const float *xs = x + r * K + v0 + 2 * j;
                    const __m256 x0 = _mm256_broadcast_ss(xs), x1 = _mm256_broadcast_ss(xs + 1);
                    p[r][g][0] = _mm256_fmadd_ps(x0, q[0], p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x0, q[1], p[r][g][1]);
                    p[r][g][0] = _mm256_fmadd_ps(x1, q[2], p[r][g][0]);
                    p[r][g][1] = _mm256_fmadd_ps(x1, q[3], p[r][g][1]);
                }
            }
        for (int g = 0; g < groups; g++) {
            __m256 a[2], b[2];
            for (int i = 0; i < 2; i++) scales8(t, 16, block + g * group_bytes, s, 8 * i, &a[i], &b[i]);
            for (int r = 0; r < rows; r++) {
                const float *xs = xsum + r * (K / 32) + v0 / 32;
                if (rows == 1) {
                    for (int i = 0; i < 2; i++) acc[g][i] = fold(has_offset(t), acc[g][i], a[i], p[0][g][i], b[i], xs);
                    continue;
                }
                float *o = out + (r * groups + g) * 16;
                for (int i = 0; i < 2; i++)
                    _mm256_storeu_ps(o + 8 * i, fold(has_offset(t), _mm256_loadu_ps(o + 8 * i), a[i], p[r][g][i], b[i], xs));
            }
        }
    }
    if (rows == 1)
        for (int g = 0; g < groups; g++)
            for (int i = 0; i < 2; i++) _mm256_storeu_ps(out + g * 16 + 8 * i, acc[g][i]);
}

/* FLOAT32 mode, rows (1..TILE_ROWS) rows of x times one group's unpacked blocks (float_unpack); out
 * [rows][16]. S and offset: the type's sub-block and whether it has b. */
INLINE void float_tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                       const float *restrict ab, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    __m256 acc[TILE_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        __m256 p[TILE_ROWS][2];
        for (int r = 0; r < rows; r++) p[r][0] = p[r][1] = _mm256_setzero_ps();
        for (int k = 0; k < S; k++) {
            const __m256 w0 = _mm256_loadu_ps(qf + (v0 + k) * 16), w1 = _mm256_loadu_ps(qf + (v0 + k) * 16 + 8);
            for (int r = 0; r < rows; r++) {
                const __m256 xk = _mm256_broadcast_ss(x + r * K + v0 + k);
                p[r][0] = _mm256_fmadd_ps(xk, w0, p[r][0]);
                p[r][1] = _mm256_fmadd_ps(xk, w1, p[r][1]);
            }
        }
        const float *s = ab + v0 / S * 32;
        for (int r = 0; r < rows; r++) {
            const float *xs = xsum + r * (K / 32) + v0 / 32;
            for (int i = 0; i < 2; i++)
                acc[r][i] = fold(offset, acc[r][i], _mm256_loadu_ps(s + 8 * i), p[r][i], _mm256_loadu_ps(s + 16 + 8 * i), xs);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < 2; i++) _mm256_storeu_ps(out + r * 16 + 8 * i, acc[r][i]);
}

/* 16-bit sums of u8 x s8 products, pairs added (exact while the caller keeps them in range), widened to 32. */
static inline __m256i add_products(__m256i sum, __m256i u, __m256i s) { return _mm256_add_epi16(sum, _mm256_maddubs_epi16(u, s)); }
static inline __m256i widen(__m256i sum) { return _mm256_madd_epi16(sum, _mm256_set1_epi16(1)); }

/* INT8 mode, rows (1..INT8_ROWS) rows of x times groups (1..2) groups, each in two halves of 8 rows;
 * out [rows][groups * 16]. The 16-bit sums of a half of 32 values (four runs) stay below 2^15 for 5- and
 * 6-bit q; 4-bit q sums both halves, 8-bit q widens each run. */
INLINE void int8_rows(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                      const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32;
    __m256 acc[INT8_ROWS][2][2];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g][0] = acc[r][g][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        INT8_RUN(type, w, b);
        prefetch_chunk(w, groups, group_bytes, header - w, block_bytes(INT8, type), (int)(b % per_block), per_block);
        __m256i sum[INT8_ROWS][2][2], total[INT8_ROWS][2][2];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) total[r][g][0] = total[r][g][1] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            if (h == 0 || bits(type) > 4)
                for (int r = 0; r < rows; r++)
                    for (int g = 0; g < groups; g++) sum[r][g][0] = sum[r][g][1] = _mm256_setzero_si256();
#define RUN(t)                                                                                               \
    {                                                                                                        \
        __m256i xt[INT8_ROWS], xb[INT8_ROWS];                                                                \
        for (int r = 0; r < rows; r++) {                                                                     \
            xt[r] = broadcast4(xq + r * K + b * 32 + 16 * h + 4 * (t));                                      \
            if (bias(type)) xb[r] = add_products(_mm256_setzero_si256(), _mm256_set1_epi8((char)bias(type)), xt[r]); \
        }                                                                                                    \
        for (int g = 0; g < groups; g++)                                                                     \
            for (int i = 0; i < 2; i++) {                                                                    \
                const __m256i q = int8_run(type, values + g * group_bytes, h, t, i);                         \
                for (int r = 0; r < rows; r++) {                                                             \
                    if (bits(type) == 8) { /* |q| times x with q's sign: unsigned times signed, as maddubs needs */ \
                        const __m256i products = add_products(_mm256_setzero_si256(), _mm256_abs_epi8(q), _mm256_sign_epi8(xt[r], q)); \
                        total[r][g][i] = _mm256_add_epi32(total[r][g][i], widen(products));                 \
                        continue;                                                                            \
                    }                                                                                        \
                    sum[r][g][i] = add_products(sum[r][g][i], q, xt[r]);                                     \
                    if (bias(type)) sum[r][g][i] = _mm256_sub_epi16(sum[r][g][i], xb[r]);                    \
                }                                                                                            \
            }                                                                                                \
    }
            FOR_EACH_RUN(type, RUN)
#undef RUN
            if (bits(type) == 8 || (bits(type) == 4 && h == 0)) continue;
            for (int g = 0; g < groups; g++)
                for (int i = 0; i < 2; i++) {
                    __m256 a, offset;
                    if (type == Q6_K) scales8(type, GROUP, header + g * group_bytes, 2 * (int)(b % per_block) + h, 8 * i, &a, &offset);
                    for (int r = 0; r < rows; r++) {
                        const __m256i part = widen(sum[r][g][i]);
                        if (type == Q6_K) {
                            const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                            acc[r][g][i] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(part), acc[r][g][i]);
                        } else {
                            total[r][g][i] = _mm256_add_epi32(total[r][g][i], part);
                        }
                    }
                }
        }
        if (type == Q6_K) continue;
        for (int g = 0; g < groups; g++)
            for (int i = 0; i < 2; i++) {
                __m256 a, offset;
                scales8(type, GROUP, header + g * group_bytes, (int)(b % per_block), 8 * i, &a, &offset);
                for (int r = 0; r < rows; r++) {
                    const __m256 scaled = _mm256_mul_ps(a, _mm256_set1_ps(xd[r * blocks + b]));
                    acc[r][g][i] = _mm256_fmadd_ps(scaled, _mm256_cvtepi32_ps(total[r][g][i]), acc[r][g][i]);
                    if (has_offset(type)) acc[r][g][i] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs[r * blocks + b]), acc[r][g][i]);
                }
            }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int i = 0; i < 2; i++) _mm256_storeu_ps(out + (r * groups + g) * 16 + 8 * i, acc[r][g][i]);
}

/* INT8X2 mode: the products of q (run t of half h, 8 rows) with x's integers xq (at the run's first value,
 * row stride K) for rows rows: added to the 16-bit sums sum (bias subtracted as bias * sum(xq)), or for
 * 8-bit q (|q| times x with q's sign) widened into the 32-bit total. */
INLINE void add_run8(int type, int rows, __m256i q, const int8_t *xq, int64_t K, __m256i sum[], __m256i total[]) {
    for (int r = 0; r < rows; r++) {
        const __m256i xt = broadcast4(xq + r * K);
        if (bits(type) == 8) {
            total[r] = _mm256_add_epi32(total[r], widen(add_products(_mm256_setzero_si256(), _mm256_abs_epi8(q), _mm256_sign_epi8(xt, q))));
            continue;
        }
        sum[r] = add_products(sum[r], q, xt);
        if (bias(type)) sum[r] = _mm256_sub_epi16(sum[r], add_products(_mm256_setzero_si256(), _mm256_set1_epi8((char)bias(type)), xt));
    }
}

/* INT8X2 mode, rows (1..INT8X2_ROWS) rows of x (both roundings xq1, xq2, their scales per block of the
 * type xd1, xd2, x's sum per 32 as both hold it xc) times groups (1..INT8X2_GROUPS) groups, each in two
 * halves of 8 rows; out [rows][groups * 16]. 16-bit sums as int8_rows keeps them, widened per sub-block
 * and scaled by its sc in integers (vpmulld); the block's float steps are the portable C path's lane by lane. */
INLINE void int8x2_rows(int type, int rows, int groups, const int8_t *xq1, const int8_t *xq2, const float *xd1,
                        const float *xd2, const float *xb1, const float *xb2, const float *xc, int64_t K,
                        const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xb1, (void)xb2;
    const int B = block_values(type), per_block = B / 32;
    for (int g = 0; g < groups; g++)
        for (int i = 0; i < 2; i++) {
            __m256 acc[INT8X2_ROWS];
            for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
            for (int64_t v0 = 0; v0 < K; v0 += B) {
                const uint8_t *header = w + g * group_bytes + v0 / B * block_bytes(INT8X2, type);
                __m256i a1[INT8X2_ROWS], a2[INT8X2_ROWS];
                __m256 offset[INT8X2_ROWS];
                for (int r = 0; r < rows; r++) a1[r] = a2[r] = _mm256_setzero_si256(), offset[r] = _mm256_setzero_ps();
                for (int c = 0; c < per_block; c++) {
                    const uint8_t *values = header + header_bytes(INT8X2, type) + c * run_bytes(type);
                    if (i == 0) prefetch_chunk(w + g * group_bytes, 1, group_bytes, v0 / B * block_bytes(INT8X2, type),
                                               block_bytes(INT8X2, type), c, per_block);
                    __m256i s1[INT8X2_ROWS], s2[INT8X2_ROWS], t1[INT8X2_ROWS], t2[INT8X2_ROWS];
                    for (int h = 0; h < 2; h++) {
                        if (h == 0 || type == Q6_K)
                            for (int r = 0; r < rows; r++) t1[r] = t2[r] = _mm256_setzero_si256();
                        if (h == 0 || bits(type) > 4)
                            for (int r = 0; r < rows; r++) s1[r] = s2[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
                        for (int t = 0; t < 4; t++) {
                            const int64_t at = v0 + 32 * c + 16 * h + 4 * t;
                            const __m256i q = int8_run(type, values, h, t, i);
                            add_run8(type, rows, q, xq1 + at, K, s1, t1);
                            add_run8(type, rows, q, xq2 + at, K, s2, t2);
                        }
                        if (bits(type) != 8 && (bits(type) > 4 || h == 1))
                            for (int r = 0; r < rows; r++)
                                t1[r] = _mm256_add_epi32(t1[r], widen(s1[r])), t2[r] = _mm256_add_epi32(t2[r], widen(s2[r]));
                        if (type != Q6_K && h == 0) continue;
                        const int s = type == Q6_K ? 2 * c + h : c;
                        const __m128i sc = has_sub_scales(type) ? load8(header + scale_field(type, GROUP, s) + 8 * i) : _mm_setzero_si128();
                        const __m256i scale = type == Q6_K ? _mm256_cvtepi8_epi32(sc) : _mm256_cvtepu8_epi32(sc);
                        for (int r = 0; r < rows; r++) {
                            a1[r] = _mm256_add_epi32(a1[r], has_sub_scales(type) ? _mm256_mullo_epi32(t1[r], scale) : t1[r]);
                            a2[r] = _mm256_add_epi32(a2[r], has_sub_scales(type) ? _mm256_mullo_epi32(t2[r], scale) : t2[r]);
                        }
                        if (type != Q4_K && type != Q5_K) continue;
                        const __m256 m = u8_floats(load8(header + min_field(GROUP, s) + 8 * i));
                        for (int r = 0; r < rows; r++)
                            offset[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(xc[r * (K / 32) + v0 / 32 + c]), offset[r]);
                    }
                }
                const __m256 d = half8(header + 16 * i);
                const __m256 m = type == Q4_0 ? _mm256_mul_ps(d, _mm256_set1_ps(-8.0f)) : half8(header + offset_field(GROUP) + 16 * i);
                for (int r = 0; r < rows; r++) {
                    const int64_t block = r * (K / B) + v0 / B;
                    const __m256 sum = _mm256_fmadd_ps(_mm256_set1_ps(xd2[block]), _mm256_cvtepi32_ps(a2[r]),
                                                       _mm256_mul_ps(_mm256_set1_ps(xd1[block]), _mm256_cvtepi32_ps(a1[r])));
                    acc[r] = _mm256_fmadd_ps(d, sum, acc[r]);
                    if (block_offset(type)) acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(xc[r * (K / 32) + v0 / 32]), acc[r]);
                    if (type == Q4_K || type == Q5_K) acc[r] = _mm256_fnmadd_ps(m, offset[r], acc[r]);
                }
            }
            for (int r = 0; r < rows; r++) _mm256_storeu_ps(out + (r * groups + g) * 16 + 8 * i, acc[r]);
        }
}

#endif /* !RILLET_AVX512 */

#endif
