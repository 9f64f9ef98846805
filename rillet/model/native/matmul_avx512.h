/* matmul.c's microkernels on AVX-512 with VNNI: a group's 16 outputs in one register, in FLOAT32 and
 * INT8 mode alike, so that one vpdpbusd adds four products to each of 16 outputs. The rest (helpers, the
 * unpacking for tiles, the activations) is matmul_avx2.h's. Each output's sums are the portable C path's
 * (matmul_scalar.h), step for step. Included by matmul.c after matmul_table.h. */
#ifndef RILLET_MATMUL_AVX512_H
#define RILLET_MATMUL_AVX512_H

#include "matmul_avx2.h"

/* One group a pass, whatever the rows: each thread then reads its run of groups as one stream from
 * start to end, which the hardware prefetcher follows. Two or four groups side by side (fewer loads of x)
 * looked faster with the weights in L3 but were as many streams from memory: a decode step's matrices
 * read from memory at one row (bench/kernel_ab.py --step) went 1.2-1.4x faster with one (Zen 4). */
#define FLOAT_ROWS 8          /* rows a pass of float_rows takes */
#define FLOAT_ROWS_LIMIT 32   /* batches up to this many rows read the packed blocks (measured: as fast as tiles at 64) */
#define FLOAT_GROUPS(rows) 1
#define TILE_ROWS 6           /* rows of x per register tile */
#define TILE_GROUPS 2         /* groups per register tile: 6 rows x 32 outputs, 24 registers of sums */
#define INT8_ROWS 4
#define INT8_GROUPS(rows) 1
#define INT8X2_ROWS 4 /* 1.05-1.3x over 2 rows at 8 and 64 rows on Zen 4 (Q4_K the least); 6 rows spill */
#define INT8X2_GROUPS(rows) 1

static inline __m512 half16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 u8_floats16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
static inline __m512 i8_floats16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }

/* FLOAT32 mode: values 2j (w[0]) and 2j + 1 (w[1]) of a sub-block for the 16 rows. */
INLINE void pair_floats16(int t, const uint8_t *sub, int j, __m512 w[2]) {
    if (bits(t) == 4) {
        const __m512i a = _mm512_cvtepu8_epi32(load16(sub + 16 * j));
        w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(a, _mm512_set1_epi32(15)));
        w[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(a, 4));
        return;
    }
    for (int i = 0; i < 2; i++) {
        const __m128i q = float_values(t, sub, 2 * j + i);
        w[i] = is_signed(t) ? i8_floats16(q) : u8_floats16(q);
    }
}

/* a (ab[0]) and b (ab[1]) of sub-block s for the 16 rows of a FLOAT32 group, from its block header h. */
INLINE void scales16(int t, const uint8_t *h, int s, __m512 ab[2]) {
    ab[0] = half16(h);
    ab[1] = t == Q4 || t == Q5_1 ? half16(h + offset_field(16))
          : t == Q4_0 ? _mm512_mul_ps(ab[0], _mm512_set1_ps(-8.0f)) : _mm512_setzero_ps();
    if (t == Q4_K || t == Q5_K) {
        const __m512i sign = _mm512_set1_epi32(INT32_MIN);
        ab[0] = _mm512_mul_ps(ab[0], u8_floats16(load16(h + scale_field(t, 16, s))));
        ab[1] = _mm512_castsi512_ps(_mm512_xor_si512(sign, _mm512_castps_si512(_mm512_mul_ps(
            half16(h + offset_field(16)), u8_floats16(load16(h + min_field(16, s)))))));
    }
    if (t == Q6_K) ab[0] = _mm512_mul_ps(ab[0], i8_floats16(load16(h + scale_field(t, 16, s))));
}

/* acc = fma(b, xs, fma(a, partial, acc)), b only for the types with an offset. */
INLINE __m512 fold16(int offset, __m512 acc, __m512 a, __m512 partial, __m512 b, const float *xs) {
    acc = _mm512_fmadd_ps(a, partial, acc);
    return offset ? _mm512_fmadd_ps(b, _mm512_set1_ps(*xs), acc) : acc;
}

/* FLOAT32 mode, rows (1..FLOAT_ROWS) rows of x against groups (FLOAT_GROUPS(rows)) groups side by side:
 * each sub-block's integers converted once for all the rows; out [rows][groups * 16]. A single row is
 * rows 1; every row's sums are the same fused steps in the same order whatever the row count. */
INLINE void float_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                       const float *xsum, float *out) {
    const int S = sub_values(t);
    __m512 acc[FLOAT_ROWS][4];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        FLOAT_SUB_BLOCK(t, w, v0);
        prefetch_chunk(w, groups, group_bytes, block - w, block_bytes(FLOAT32, t), s, block_values(t) / sub_values(t));
        __m512 p[FLOAT_ROWS][4];
        for (int g = 0; g < groups; g++) {
            for (int r = 0; r < rows; r++) p[r][g] = _mm512_setzero_ps();
        }
        if (bits(t) == 8) /* a value at a time */
            for (int k = 0; k < S; k++) {
                __m512 xk[FLOAT_ROWS];
                for (int r = 0; r < rows; r++) xk[r] = _mm512_set1_ps(x[r * K + v0 + k]);
                for (int g = 0; g < groups; g++) {
                    const __m512 q = i8_floats16(load16(sub + g * group_bytes + 16 * k));
                    for (int r = 0; r < rows; r++) p[r][g] = _mm512_fmadd_ps(xk[r], q, p[r][g]);
                }
            }
        else
        for (int j = 0; j < S / 2; j++) {
            __m512 x0[FLOAT_ROWS], x1[FLOAT_ROWS];
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
                acc[r][g] = fold16(has_offset(t), acc[r][g], ab[0], p[r][g], ab[1], xsum + r * (K / 32) + v0 / 32);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * 16, acc[r][g]);
}

/* FLOAT32 mode, rows (1..TILE_ROWS) rows of x times groups (1..TILE_GROUPS) groups' unpacked blocks
 * (float_unpack): group i's qf at qf + i K 16, its ab at ab + i K / S 32; out [rows][groups * 16]. Two
 * groups a tile load two weights for each broadcast of x: fewer loads per multiply-add than one group
 * of more rows. */
INLINE void float_tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                       const float *restrict ab, const float *xsum, float *out) {
    __m512 acc[TILE_ROWS][TILE_GROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        __m512 p[TILE_ROWS][TILE_GROUPS];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) p[r][g] = _mm512_setzero_ps();
        for (int k = 0; k < S; k++) {
            __m512 w[TILE_GROUPS];
            for (int g = 0; g < groups; g++) w[g] = _mm512_loadu_ps(qf + g * K * 16 + (v0 + k) * 16);
            for (int r = 0; r < rows; r++) {
                const __m512 xk = _mm512_set1_ps(x[r * K + v0 + k]);
                for (int g = 0; g < groups; g++) p[r][g] = _mm512_fmadd_ps(xk, w[g], p[r][g]);
            }
        }
        for (int g = 0; g < groups; g++) {
            const float *s = ab + g * (K / S) * 32 + v0 / S * 32;
            const __m512 a = _mm512_loadu_ps(s), b = _mm512_loadu_ps(s + 16);
            for (int r = 0; r < rows; r++)
                acc[r][g] = fold16(offset, acc[r][g], a, p[r][g], b, xsum + r * (K / 32) + v0 / 32);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * 16, acc[r][g]);
}

static inline __m512i load64(const uint8_t *p) { return _mm512_loadu_si512((const void *)p); }

/* Four bytes of x's integers, repeated across a 512-bit register. */
static inline __m512i broadcast4x16(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* INT8 mode: run t (0..3) of half h of 32 values (value 16h + 4t + i of row n in byte 4n + i) for the
 * 16 rows: q as bytes, before the bias (8-bit q: run 4h + t, signed). The 16-bit shifts move the wanted
 * bits to the bottom of their own byte before the mask, so none crosses bytes. */
INLINE __m512i int8_run16(int type, const uint8_t *values, int h, int t) {
    if (bits(type) == 8) return load64(values + 64 * (4 * h + t));
    const __m512i v = load64(values + 64 * t);
    __m512i q = _mm512_and_si512(h ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(15));
    const uint8_t *planes = values + 256;
    if (bits(type) == 5) {
        const __m512i p = load64(planes);
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(p, 4 * h + t), _mm512_set1_epi8(1)), 4));
    } else if (bits(type) == 6) {
        const __m512i p = load64(planes + 64 * h);
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(p, 2 * t), _mm512_set1_epi8(3)), 4));
    }
    return q;
}

/* INT8 mode, rows (1..INT8_ROWS) rows of x times groups (1..2) groups: a group's 16 outputs in one
 * register, one vpdpbusd adding four products to each (32-bit sums, so no widening), the float steps
 * of the portable C path lane by lane; out [rows][groups * 16]. */
INLINE void int8_rows(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                      const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32;
    __m512 acc[INT8_ROWS][2];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        INT8_RUN(type, w, b);
        prefetch_chunk(w, groups, group_bytes, header - w, block_bytes(INT8, type), (int)(b % per_block), per_block);
        __m512i sum[INT8_ROWS][2];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++) sum[r][g] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            if (h == 1 && type == Q6_K)
                for (int r = 0; r < rows; r++)
                    for (int g = 0; g < groups; g++) sum[r][g] = _mm512_setzero_si512();
#define RUN(t)                                                                                               \
    {                                                                                                        \
        __m512i xt[INT8_ROWS], xb[INT8_ROWS];                                                                \
        for (int r = 0; r < rows; r++) {                                                                     \
            xt[r] = broadcast4x16(xq + r * K + b * 32 + 16 * h + 4 * (t));                                   \
            if (bias(type)) xb[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)bias(type)), xt[r]); \
        }                                                                                                    \
        for (int g = 0; g < groups; g++) {                                                                   \
            const __m512i q = int8_run16(type, values + g * group_bytes, h, t);                              \
            /* 8-bit q: |q| times x with q's sign (x is never -128, so negating it is exact) */             \
            const __m512i magnitude = bits(type) == 8 ? _mm512_abs_epi8(q) : q;                              \
            const __mmask64 negative = bits(type) == 8 ? _mm512_movepi8_mask(q) : 0;                         \
            for (int r = 0; r < rows; r++) {                                                                 \
                const __m512i x = bits(type) == 8 ? _mm512_mask_sub_epi8(xt[r], negative, _mm512_setzero_si512(), xt[r]) : xt[r]; \
                sum[r][g] = _mm512_dpbusd_epi32(sum[r][g], magnitude, x);                                    \
                if (bias(type)) sum[r][g] = _mm512_sub_epi32(sum[r][g], xb[r]);                              \
            }                                                                                                \
        }                                                                                                    \
    }
            FOR_EACH_RUN(type, RUN)
#undef RUN
            if (type != Q6_K) continue;
            for (int g = 0; g < groups; g++) {
                __m512 ab[2];
                scales16(type, header + g * group_bytes, 2 * (int)(b % per_block) + h, ab);
                for (int r = 0; r < rows; r++) {
                    const __m512 scaled = _mm512_mul_ps(ab[0], _mm512_set1_ps(xd[r * blocks + b]));
                    acc[r][g] = _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(sum[r][g]), acc[r][g]);
                }
            }
        }
        if (type == Q6_K) continue;
        for (int g = 0; g < groups; g++) {
            __m512 ab[2];
            scales16(type, header + g * group_bytes, (int)(b % per_block), ab);
            for (int r = 0; r < rows; r++) {
                const __m512 scaled = _mm512_mul_ps(ab[0], _mm512_set1_ps(xd[r * blocks + b]));
                acc[r][g] = _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(sum[r][g]), acc[r][g]);
                if (has_offset(type)) acc[r][g] = _mm512_fmadd_ps(ab[1], _mm512_set1_ps(xs[r * blocks + b]), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * 16, acc[r][g]);
}

/* INT8X2 mode: what is added to q to make it an unsigned byte for vpdpbusd (8-bit q: q + 128, its bits
 * with the top one flipped), and what the unsigned sums then take off per value of x: that plus the
 * bias, times the sum of x's integers (of 16 values, held as floats). */
INLINE int unsigned_shift(int type) { return bits(type) == 8 ? 128 : 0; }
INLINE int sum_shift(int type) { return unsigned_shift(type) + bias(type); }

/* The products of run t of half h (q, unsigned: see unsigned_shift) with x's integers xq (at the run's
 * first value, row stride K) for rows rows, added to sum. */
INLINE void add_run16(int type, int rows, __m512i q, const int8_t *xq, int64_t K, __m512i sum[]) {
    const __m512i u = unsigned_shift(type) ? _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80)) : q;
    for (int r = 0; r < rows; r++) sum[r] = _mm512_dpbusd_epi32(sum[r], u, broadcast4x16(xq + r * K));
}

/* INT8X2 mode, rows (1..INT8X2_ROWS) rows of x (both roundings xq1, xq2, their scales per block of the
 * type xd1, xd2, their sums per 16 xb1, xb2, x's sum per 32 as both hold it xc) times groups (1..2)
 * groups; out [rows][groups * 16]. Each sub-block's two integer sums are scaled by its sc in integers
 * (vpmulld), the block's float steps are the portable C path's lane by lane. */
INLINE void int8x2_rows(int type, int rows, int groups, const int8_t *xq1, const int8_t *xq2, const float *xd1,
                        const float *xd2, const float *xb1, const float *xb2, const float *xc, int64_t K,
                        const uint8_t *w, int64_t group_bytes, float *out) {
    const int B = block_values(type), per_block = B / 32;
    __m512 acc[INT8X2_ROWS][2];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t v0 = 0; v0 < K; v0 += B) {
        const uint8_t *header = w + v0 / B * block_bytes(INT8X2, type);
        __m512i a1[2][INT8X2_ROWS], a2[2][INT8X2_ROWS];
        __m512 offset[2][INT8X2_ROWS];
        for (int g = 0; g < groups; g++)
            for (int r = 0; r < rows; r++) a1[g][r] = a2[g][r] = _mm512_setzero_si512(), offset[g][r] = _mm512_setzero_ps();
        for (int c = 0; c < per_block; c++) {
            const uint8_t *values = header + header_bytes(INT8X2, type) + c * run_bytes(type);
            prefetch_chunk(w, groups, group_bytes, header - w, block_bytes(INT8X2, type), c, per_block);
            __m512i s1[2][INT8X2_ROWS], s2[2][INT8X2_ROWS];
            for (int h = 0; h < 2; h++) {
                if (h == 0 || type == Q6_K)
                    for (int g = 0; g < groups; g++)
                        for (int r = 0; r < rows; r++) s1[g][r] = s2[g][r] = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    const int64_t at = v0 + 32 * c + 16 * h + 4 * t;
                    for (int g = 0; g < groups; g++) {
                        const __m512i q = int8_run16(type, values + g * group_bytes, h, t);
                        add_run16(type, rows, q, xq1 + at, K, s1[g]);
                        add_run16(type, rows, q, xq2 + at, K, s2[g]);
                    }
                }
                if (type != Q6_K && h == 0) continue;
                const int s = type == Q6_K ? 2 * c + h : c;
                if (sum_shift(type)) /* the sums over this sub-block's values of x, times the shift */
                    for (int r = 0; r < rows; r++) {
                        const float *b1 = xb1 + r * (K / 16) + v0 / 16 + 2 * c, *b2 = xb2 + r * (K / 16) + v0 / 16 + 2 * c;
                        const int n1 = (int)(type == Q6_K ? b1[h] : b1[0] + b1[1]), n2 = (int)(type == Q6_K ? b2[h] : b2[0] + b2[1]);
                        for (int g = 0; g < groups; g++) {
                            s1[g][r] = _mm512_sub_epi32(s1[g][r], _mm512_set1_epi32(sum_shift(type) * n1));
                            s2[g][r] = _mm512_sub_epi32(s2[g][r], _mm512_set1_epi32(sum_shift(type) * n2));
                        }
                    }
                for (int g = 0; g < groups; g++) {
                    const uint8_t *group = header + g * group_bytes;
                    const __m128i sc = has_sub_scales(type) ? load16(group + scale_field(type, GROUP, s)) : _mm_setzero_si128();
                    const __m512i scale = type == Q6_K ? _mm512_cvtepi8_epi32(sc) : _mm512_cvtepu8_epi32(sc);
                    for (int r = 0; r < rows; r++) {
                        a1[g][r] = _mm512_add_epi32(a1[g][r], has_sub_scales(type) ? _mm512_mullo_epi32(s1[g][r], scale) : s1[g][r]);
                        a2[g][r] = _mm512_add_epi32(a2[g][r], has_sub_scales(type) ? _mm512_mullo_epi32(s2[g][r], scale) : s2[g][r]);
                    }
                    if (type != Q4_K && type != Q5_K) continue;
                    const __m512 m = u8_floats16(load16(group + min_field(GROUP, s)));
                    for (int r = 0; r < rows; r++)
                        offset[g][r] = _mm512_fmadd_ps(m, _mm512_set1_ps(xc[r * (K / 32) + v0 / 32 + c]), offset[g][r]);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            const uint8_t *group = header + g * group_bytes;
            const __m512 d = half16(group);
            const __m512 m = type == Q4_0 ? _mm512_mul_ps(d, _mm512_set1_ps(-8.0f))
                           : has_offset(type) ? half16(group + offset_field(GROUP)) : d;
            for (int r = 0; r < rows; r++) {
                const int64_t block = r * (K / B) + v0 / B;
                const __m512 sum = _mm512_fmadd_ps(_mm512_set1_ps(xd2[block]), _mm512_cvtepi32_ps(a2[g][r]),
                                                   _mm512_mul_ps(_mm512_set1_ps(xd1[block]), _mm512_cvtepi32_ps(a1[g][r])));
                acc[r][g] = _mm512_fmadd_ps(d, sum, acc[r][g]);
                if (block_offset(type)) acc[r][g] = _mm512_fmadd_ps(m, _mm512_set1_ps(xc[r * (K / 32) + v0 / 32]), acc[r][g]);
                if (type == Q4_K || type == Q5_K) acc[r][g] = _mm512_fnmadd_ps(m, offset[g][r], acc[r][g]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) _mm512_storeu_ps(out + (r * groups + g) * 16, acc[r][g]);
}


#endif
