/* matmul.c's microkernels on AArch64 NEON: a group's 16 outputs in four registers of four lanes,
 * integer products by sdot where the CPU has it (else widening
 * multiplies). Each lane is one output's sums in the portable C path's order (matmul_scalar.h), vfmaq
 * where it has fmaf; the outputs' totals are kept in out. Checked under qemu against the scalar build
 * (tests/model/test_kernel_neon.py), not measured on ARM hardware. Included by matmul.c after
 * matmul_table.h. */
#ifndef RILLET_MATMUL_NEON_H
#define RILLET_MATMUL_NEON_H

#include <string.h>

#define FLOAT_ROWS 1          /* batches take the tiles */
#define FLOAT_ROWS_LIMIT 1
#define FLOAT_GROUPS(rows) 4  /* a single row's groups side by side */
#define TILE_ROWS 6
#define TILE_GROUPS 1
#define INT8_ROWS 4
#define INT8_GROUPS(rows) ((rows) == 1 ? 2 : 1)
#define INT8X2_ROWS 2
#define INT8X2_GROUPS(rows) (0 * (rows) + 1)

static inline float32x4_t half4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

/* Four bytes as floats, unsigned and signed. */
static inline uint8x8_t load4(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return vreinterpret_u8_u32(vdup_n_u32(v));
}
static inline float32x4_t u8x4_floats(const uint8_t *p) { return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(load4(p))))); }
static inline float32x4_t i8x4_floats(const uint8_t *p) {
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(load4(p))))));
}

/* 16 bytes as floats (unsigned, signed): f[i] holds rows 4i..4i+3. */
INLINE void u8x16_floats(uint8x16_t v, float32x4_t f[4]) {
    const uint16x8_t a = vmovl_u8(vget_low_u8(v)), b = vmovl_high_u8(v);
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a))), f[1] = vcvtq_f32_u32(vmovl_high_u16(a));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b))), f[3] = vcvtq_f32_u32(vmovl_high_u16(b));
}

INLINE void i8x16_floats(int8x16_t v, float32x4_t f[4]) {
    const int16x8_t a = vmovl_s8(vget_low_s8(v)), b = vmovl_high_s8(v);
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), f[1] = vcvtq_f32_s32(vmovl_high_s16(a));
    f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), f[3] = vcvtq_f32_s32(vmovl_high_s16(b));
}

/* The sum of a block of 32 float32 activations, the AVX2 path's tree: s[0..3] and s[4..7] in two
 * registers, then h = s[i] + s[i + 4]. */
static inline float block_sum(const float *x) {
    float32x4_t s[2];
    for (int i = 0; i < 2; i++)
        s[i] = vaddq_f32(vaddq_f32(vld1q_f32(x + 4 * i), vld1q_f32(x + 8 + 4 * i)),
                         vaddq_f32(vld1q_f32(x + 16 + 4 * i), vld1q_f32(x + 24 + 4 * i)));
    const float32x4_t h = vaddq_f32(s[0], s[1]);
    return vpadds_f32(vadd_f32(vget_low_f32(h), vget_high_f32(h))); /* (h0 + h2) + (h1 + h3) */
}

/* One block of 32 floats -> 32 int8, its scale dx and sx = dx * sum(q): the portable C steps, four
 * values at a time (vcvtnq rounds to nearest even, as nearbyintf does). */
static void quantize_block(const float *x, int8_t *q, float *dx, float *sx) {
    float32x4_t v[8], a = vdupq_n_f32(0.0f);
    for (int j = 0; j < 8; j++) v[j] = vld1q_f32(x + 4 * j), a = vmaxnmq_f32(a, vabsq_f32(v[j]));
    const float amax = vmaxnmvq_f32(a);
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int32x4_t i[8], sum = vdupq_n_s32(0);
    for (int j = 0; j < 8; j++) i[j] = vcvtnq_s32_f32(vmulq_n_f32(v[j], inv)), sum = vaddq_s32(sum, i[j]);
    for (int j = 0; j < 2; j++) {
        const int16x8_t h0 = vcombine_s16(vmovn_s32(i[4 * j]), vmovn_s32(i[4 * j + 1]));
        const int16x8_t h1 = vcombine_s16(vmovn_s32(i[4 * j + 2]), vmovn_s32(i[4 * j + 3]));
        vst1q_s8(q + 16 * j, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
    }
    *dx = amax / 127.0f;
    *sx = *dx * (float)vaddvq_s32(sum);
}

/* INT8X2 mode: B floats rounded to int8 q with its scale d, the sums of q per 16 values (as floats) in
 * sums, and (where rest is not NULL) what is left, rest = x - d q in one fma: the portable C's steps,
 * four values at a time. */
static void quantize_part(const float *x, int B, int8_t *q, float *d, float *sums, float *rest) {
    float32x4_t a = vdupq_n_f32(0.0f);
    for (int k = 0; k < B; k += 4) a = vmaxnmq_f32(a, vabsq_f32(vld1q_f32(x + k)));
    const float amax = vmaxnmvq_f32(a);
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    *d = amax / 127.0f;
    for (int k = 0; k < B; k += 16) {
        int32x4_t i[4];
        for (int j = 0; j < 4; j++) {
            const float32x4_t v = vld1q_f32(x + k + 4 * j);
            i[j] = vcvtnq_s32_f32(vmulq_n_f32(v, inv));
            if (rest != NULL) vst1q_f32(rest + k + 4 * j, vfmsq_n_f32(v, vcvtq_f32_s32(i[j]), *d));
        }
        const int16x8_t h0 = vcombine_s16(vmovn_s32(i[0]), vmovn_s32(i[1])), h1 = vcombine_s16(vmovn_s32(i[2]), vmovn_s32(i[3]));
        vst1q_s8(q + k, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
        sums[k / 16] = (float)vaddvq_s32(vaddq_s32(vaddq_s32(i[0], i[1]), vaddq_s32(i[2], i[3])));
    }
}

/* a and b of sub-block s for rows n0..n0 + 3 of a group of G rows, from its block header h. */
INLINE void scales4(int t, int G, const uint8_t *h, int s, int n0, float32x4_t *a, float32x4_t *b) {
    *a = half4(h + 2 * n0), *b = vdupq_n_f32(0.0f);
    if (t == Q4 || t == Q5_1) *b = half4(h + offset_field(G) + 2 * n0);
    if (t == Q4_0) *b = vmulq_n_f32(*a, -8.0f);
    if (t == Q4_K || t == Q5_K) {
        *a = vmulq_f32(*a, u8x4_floats(h + scale_field(t, G, s) + n0));
        *b = vnegq_f32(vmulq_f32(half4(h + offset_field(G) + 2 * n0), u8x4_floats(h + min_field(G, s) + n0)));
    }
    if (t == Q6_K) *a = vmulq_f32(*a, i8x4_floats(h + scale_field(t, G, s) + n0));
}

/* FLOAT32 mode: value k of a sub-block for the 16 rows as floats, q - bias (portable C's float_value). */
INLINE void value_floats(int t, const uint8_t *sub, int k, float32x4_t f[4]) {
    if (bits(t) == 8) {
        i8x16_floats(vld1q_s8((const int8_t *)sub + 16 * k), f);
        return;
    }
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
    if (bias(t)) i8x16_floats(vreinterpretq_s8_u8(vsubq_u8(q, vdupq_n_u8((uint8_t)bias(t)))), f);
    else u8x16_floats(q, f);
}

/* FLOAT32 mode's unpacking for the batched tiles: one block of a group, its integers as float32
 * [block_values][16] into qf, each sub-block's a then b ([block_values / S][32]) into ab. */
INLINE void float_unpack(int t, const uint8_t *block, float *restrict qf, float *restrict ab) {
    const int S = sub_values(t);
    for (int s = 0; s < block_values(t) / S; s++) {
        const uint8_t *sub = block + header_bytes(FLOAT32, t) + s * sub_bytes(t);
        for (int k = 0; k < S; k++) {
            float32x4_t q[4];
            value_floats(t, sub, k, q);
            for (int i = 0; i < 4; i++) vst1q_f32(qf + (s * S + k) * 16 + 4 * i, q[i]);
        }
        for (int i = 0; i < 4; i++) {
            float32x4_t a, b;
            scales4(t, 16, block, s, 4 * i, &a, &b);
            vst1q_f32(ab + s * 32 + 4 * i, a), vst1q_f32(ab + s * 32 + 16 + 4 * i, b);
        }
    }
}

/* out[0..15] = fma(b, xs, fma(a, p, out)), b only for the types with an offset. */
INLINE void fold(int offset, float *out, const float32x4_t a[4], const float32x4_t p[4], const float32x4_t b[4], float xs) {
    for (int i = 0; i < 4; i++) {
        const float32x4_t acc = vfmaq_f32(vld1q_f32(out + 4 * i), a[i], p[i]);
        vst1q_f32(out + 4 * i, offset ? vfmaq_n_f32(acc, b[i], xs) : acc);
    }
}

/* FLOAT32 mode, a single row (rows 1) against groups groups side by side, reading each block's
 * integers straight into its sums; out [groups * 16]. xsum: the row's sums per 32 values. */
INLINE void float_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                       const float *xsum, float *out) {
    (void)rows; /* FLOAT_ROWS: 1 */
    const int S = sub_values(t);
    for (int n = 0; n < groups * 16; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        FLOAT_SUB_BLOCK(t, w, v0);
        prefetch_chunk(w, groups, group_bytes, block - w, block_bytes(FLOAT32, t), s, block_values(t) / sub_values(t));
        float32x4_t p[4][4];
        for (int g = 0; g < groups; g++) {
            for (int i = 0; i < 4; i++) p[g][i] = vdupq_n_f32(0.0f);
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
            float32x4_t a[4], b[4];
            for (int i = 0; i < 4; i++) scales4(t, 16, block + g * group_bytes, s, 4 * i, &a[i], &b[i]);
            fold(has_offset(t), out + g * 16, a, p[g], b, xsum[v0 / 32]);
        }
    }
}

/* FLOAT32 mode, rows (1..TILE_ROWS) rows of x times one group's unpacked blocks; out [rows][16]. */
INLINE void float_tile(int rows, int groups, int S, int offset, const float *x, int64_t K, const float *restrict qf,
                       const float *restrict ab, const float *xsum, float *out) {
    (void)groups; /* TILE_GROUPS: 1 */
    for (int n = 0; n < rows * 16; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t v0 = 0; v0 < K; v0 += S) {
        float32x4_t p[TILE_ROWS][4];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < 4; i++) p[r][i] = vdupq_n_f32(0.0f);
        for (int k = 0; k < S; k++) {
            float32x4_t w[4];
            for (int i = 0; i < 4; i++) w[i] = vld1q_f32(qf + (v0 + k) * 16 + 4 * i);
            for (int r = 0; r < rows; r++) {
                const float xk = x[r * K + v0 + k];
                for (int i = 0; i < 4; i++) p[r][i] = vfmaq_n_f32(p[r][i], w[i], xk);
            }
        }
        float32x4_t a[4], b[4];
        for (int i = 0; i < 4; i++) a[i] = vld1q_f32(ab + v0 / S * 32 + 4 * i), b[i] = vld1q_f32(ab + v0 / S * 32 + 16 + 4 * i);
        for (int r = 0; r < rows; r++) fold(offset, out + r * 16, a, p[r], b, xsum[r * (K / 32) + v0 / 32]);
    }
}

/* add_products(sum, w, x) adds to each 32-bit lane n the four products w[4n + i] x[4n + i]: sdot where
 * the CPU has it; else widening multiplies, pairs added in 16 bits (at most 2 * 128 * 127, as x is in
 * -127..127) and then into the 32-bit lanes. The same integers either way. */
static inline int32x4_t add_products(int32x4_t sum, int8x16_t w, int8x16_t x) {
#ifdef RILLET_NEON_DOTPROD
    return vdotq_s32(sum, w, x);
#else
    const int16x8_t low = vmull_s8(vget_low_s8(w), vget_low_s8(x)), high = vmull_high_s8(w, x);
    return vpadalq_s16(sum, vpaddq_s16(low, high));
#endif
}

/* Four bytes of x's integers, repeated across a register. */
static inline int8x16_t broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

/* INT8 mode: run t of half h of 32 values (value 16h + 4t + i of row n in byte 4n + i; 8-bit q: run
 * 4h + t): q - bias for rows 4j..4j + 3 in q[j], as int8. */
INLINE void int8_run(int type, const uint8_t *values, int h, int t, int8x16_t q[4]) {
    for (int j = 0; j < 4; j++) {
        if (bits(type) == 8) {
            q[j] = vld1q_s8((const int8_t *)values + 64 * (4 * h + t) + 16 * j);
            continue;
        }
        const uint8x16_t v = vld1q_u8(values + 64 * t + 16 * j);
        uint8x16_t u = h ? vshrq_n_u8(v, 4) : vandq_u8(v, vdupq_n_u8(15));
        if (bits(type) == 5) {
            const uint8x16_t p = vshlq_u8(vld1q_u8(values + 256 + 16 * j), vdupq_n_s8((int8_t)-(4 * h + t)));
            u = vorrq_u8(u, vshlq_n_u8(vandq_u8(p, vdupq_n_u8(1)), 4));
        } else if (bits(type) == 6) {
            const uint8x16_t p = vshlq_u8(vld1q_u8(values + 256 + 64 * h + 16 * j), vdupq_n_s8((int8_t)(-2 * t)));
            u = vorrq_u8(u, vshlq_n_u8(vandq_u8(p, vdupq_n_u8(3)), 4));
        }
        q[j] = vreinterpretq_s8_u8(vsubq_u8(u, vdupq_n_u8((uint8_t)bias(type))));
    }
}

/* INT8 mode, rows (1..INT8_ROWS) rows of x (integers xq [rows][K], scales xd and sums xs [rows][K / 32])
 * times groups (1..2) groups; out [rows][groups * 16]. Q6_K: each half (16 values) its own sum and
 * scale; the others: one sum over both halves. */
INLINE void int8_rows(int type, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                      const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32;
    const int per_block = block_values(type) / 32;
    for (int n = 0; n < rows * groups * 16; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < blocks; b++) {
        INT8_RUN(type, w, b);
        prefetch_chunk(w, groups, group_bytes, header - w, block_bytes(INT8, type), (int)(b % per_block), per_block);
        int32x4_t sum[INT8_ROWS][2][4];
        for (int h = 0; h < 2; h++) {
            if (h == 0 || type == Q6_K)
                for (int r = 0; r < rows; r++)
                    for (int g = 0; g < groups; g++)
                        for (int j = 0; j < 4; j++) sum[r][g][j] = vdupq_n_s32(0);
            for (int t = 0; t < 4; t++) {
                int8x16_t xt[INT8_ROWS];
                for (int r = 0; r < rows; r++) xt[r] = broadcast4(xq + r * K + b * 32 + 16 * h + 4 * t);
                for (int g = 0; g < groups; g++) {
                    int8x16_t q[4];
                    int8_run(type, values + g * group_bytes, h, t, q);
                    for (int r = 0; r < rows; r++)
                        for (int j = 0; j < 4; j++) sum[r][g][j] = add_products(sum[r][g][j], q[j], xt[r]);
                }
            }
            if (type != Q6_K && h == 0) continue;
            for (int g = 0; g < groups; g++) {
                const int s = type == Q6_K ? 2 * (int)(b % per_block) + h : (int)(b % per_block);
                for (int j = 0; j < 4; j++) {
                    float32x4_t a, offset;
                    scales4(type, GROUP, header + g * group_bytes, s, 4 * j, &a, &offset);
                    for (int r = 0; r < rows; r++) {
                        float *o = out + (r * groups + g) * 16 + 4 * j;
                        const float32x4_t scaled = vmulq_n_f32(a, xd[r * blocks + b]);
                        float32x4_t acc = vfmaq_f32(vld1q_f32(o), scaled, vcvtq_f32_s32(sum[r][g][j]));
                        if (has_offset(type)) acc = vfmaq_n_f32(acc, offset, xs[r * blocks + b]);
                        vst1q_f32(o, acc);
                    }
                }
            }
        }
    }
}

/* INT8X2 mode, rows (1..INT8X2_ROWS) rows of x (both roundings xq1, xq2, their scales per block of the
 * type xd1, xd2, x's sum per 32 as both hold it xc) times one group; out [rows][16]. Each sub-block's two
 * integer sums scaled by its sc in integers, the block's float steps the portable C path's lane by lane. */
INLINE void int8x2_rows(int type, int rows, int groups, const int8_t *xq1, const int8_t *xq2, const float *xd1,
                        const float *xd2, const float *xb1, const float *xb2, const float *xc, int64_t K,
                        const uint8_t *w, int64_t group_bytes, float *out) {
    (void)groups, (void)xb1, (void)xb2; /* INT8X2_GROUPS: 1 */
    const int B = block_values(type), per_block = B / 32;
    for (int n = 0; n < rows * 16; n += 4) vst1q_f32(out + n, vdupq_n_f32(0.0f));
    for (int64_t v0 = 0; v0 < K; v0 += B) {
        const uint8_t *header = w + v0 / B * block_bytes(INT8X2, type);
        int32x4_t a1[INT8X2_ROWS][4], a2[INT8X2_ROWS][4];
        float32x4_t offset[INT8X2_ROWS][4];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < 4; j++) a1[r][j] = a2[r][j] = vdupq_n_s32(0), offset[r][j] = vdupq_n_f32(0.0f);
        for (int c = 0; c < per_block; c++) {
            const uint8_t *values = header + header_bytes(INT8X2, type) + c * run_bytes(type);
            prefetch_chunk(w, 1, group_bytes, header - w, block_bytes(INT8X2, type), c, per_block);
            int32x4_t s1[INT8X2_ROWS][4], s2[INT8X2_ROWS][4];
            for (int h = 0; h < 2; h++) {
                if (h == 0 || type == Q6_K)
                    for (int r = 0; r < rows; r++)
                        for (int j = 0; j < 4; j++) s1[r][j] = s2[r][j] = vdupq_n_s32(0);
                for (int t = 0; t < 4; t++) {
                    const int64_t at = v0 + 32 * c + 16 * h + 4 * t;
                    int8x16_t q[4];
                    int8_run(type, values, h, t, q);
                    for (int r = 0; r < rows; r++) {
                        const int8x16_t x1 = broadcast4(xq1 + r * K + at), x2 = broadcast4(xq2 + r * K + at);
                        for (int j = 0; j < 4; j++) s1[r][j] = add_products(s1[r][j], q[j], x1), s2[r][j] = add_products(s2[r][j], q[j], x2);
                    }
                }
                if (type != Q6_K && h == 0) continue;
                const int s = type == Q6_K ? 2 * c + h : c;
                for (int j = 0; j < 4; j++) {
                    int32x4_t scale = vdupq_n_s32(1);
                    if (has_sub_scales(type)) {
                        const int16x8_t wide = type == Q6_K ? vmovl_s8(vreinterpret_s8_u8(load4(header + scale_field(type, GROUP, s) + 4 * j)))
                                                            : vreinterpretq_s16_u16(vmovl_u8(load4(header + scale_field(type, GROUP, s) + 4 * j)));
                        scale = vmovl_s16(vget_low_s16(wide));
                    }
                    for (int r = 0; r < rows; r++)
                        a1[r][j] = vmlaq_s32(a1[r][j], s1[r][j], scale), a2[r][j] = vmlaq_s32(a2[r][j], s2[r][j], scale);
                    if (type != Q4_K && type != Q5_K) continue;
                    const float32x4_t m = u8x4_floats(header + min_field(GROUP, s) + 4 * j);
                    for (int r = 0; r < rows; r++) offset[r][j] = vfmaq_n_f32(offset[r][j], m, xc[r * (K / 32) + v0 / 32 + c]);
                }
            }
        }
        for (int j = 0; j < 4; j++) {
            const float32x4_t d = half4(header + 8 * j);
            const float32x4_t m = type == Q4_0 ? vmulq_n_f32(d, -8.0f) : half4(header + offset_field(GROUP) + 8 * j);
            for (int r = 0; r < rows; r++) {
                const int64_t block = r * (K / B) + v0 / B;
                float *o = out + r * 16 + 4 * j;
                const float32x4_t sum = vfmaq_n_f32(vmulq_n_f32(vcvtq_f32_s32(a1[r][j]), xd1[block]), vcvtq_f32_s32(a2[r][j]), xd2[block]);
                float32x4_t acc = vfmaq_f32(vld1q_f32(o), d, sum);
                if (block_offset(type)) acc = vfmaq_n_f32(acc, m, xc[r * (K / 32) + v0 / 32]);
                if (type == Q4_K || type == Q5_K) acc = vfmsq_f32(acc, m, offset[r][j]);
                vst1q_f32(o, acc);
            }
        }
    }
}

#endif
