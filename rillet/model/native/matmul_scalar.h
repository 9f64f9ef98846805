/* matmul.c's microkernels in portable C: one output at a time, each sum in the order every vector path
 * keeps (fmaf where they fuse), so this build is the reference the others equal bit for bit.
 * Included by matmul.c after matmul_table.h. */
#ifndef RILLET_MATMUL_SCALAR_H
#define RILLET_MATMUL_SCALAR_H

#include <math.h>

#include "half_float.h"

/* No batched passes of their own: every batch goes through the single-row products, row by row. */
#define FLOAT_ROWS 1
#define FLOAT_ROWS_LIMIT INT64_MAX
#define FLOAT_GROUPS(rows) (0 * (rows) + 1)
#define INT8_ROWS 1
#define INT8_GROUPS(rows) (0 * (rows) + 1)
#define INT8X2_ROWS 1
#define INT8X2_GROUPS(rows) (0 * (rows) + 1)

/* The sum of a block of 32 float32 activations, in the vector paths' tree order. */
static float block_sum(const float *x) {
    float s[8], h[4];
    for (int j = 0; j < 8; j++) s[j] = (x[j] + x[j + 8]) + (x[j + 16] + x[j + 24]);
    for (int i = 0; i < 4; i++) h[i] = s[i] + s[i + 4];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

/* One block of 32 floats -> 32 int8, its scale dx and sx = dx * sum(q); round to nearest even. */
static void quantize_block(const float *x, int8_t *q, float *dx, float *sx) {
    float amax = 0.0f;
    for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int k = 0; k < 32; k++) sum += q[k] = (int8_t)nearbyintf(x[k] * inv);
    *dx = amax / 127.0f;
    *sx = *dx * (float)sum;
}

/* INT8X2 mode: B floats rounded to int8 q with its scale d, the sums of q per 16 values (integers, as
 * floats) in sums, and (where rest is not NULL) what is left, rest = x - d q in one fma. */
static void quantize_part(const float *x, int B, int8_t *q, float *d, float *sums, float *rest) {
    float amax = 0.0f;
    for (int k = 0; k < B; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    *d = amax / 127.0f;
    for (int k = 0; k < B; k++) {
        q[k] = (int8_t)nearbyintf(x[k] * inv);
        if (rest != NULL) rest[k] = fmaf(-*d, (float)q[k], x[k]);
    }
    for (int c = 0; c < B / 16; c++) {
        int sum = 0;
        for (int k = 16 * c; k < 16 * c + 16; k++) sum += q[k];
        sums[c] = (float)sum;
    }
}

/* a and b of sub-block s for row n of a group of G rows, from its block header h. */
static void scale_of(int t, int G, const uint8_t *h, int n, int s, float *a, float *b) {
    *a = half_to_float(h + 2 * n), *b = 0.0f;
    if (t == Q4 || t == Q5_1) *b = half_to_float(h + offset_field(G) + 2 * n);
    if (t == Q4_0) *b = -8.0f * *a;
    if (t == Q4_K || t == Q5_K)
        *a *= h[scale_field(t, G, s) + n], *b = -(half_to_float(h + offset_field(G) + 2 * n) * h[min_field(G, s) + n]);
    if (t == Q6_K) *a *= (int8_t)h[scale_field(t, G, s) + n];
}

/* FLOAT32 mode: q - bias of row n, value k of a sub-block. */
static int float_value(int t, const uint8_t *sub, int n, int k) {
    if (bits(t) == 8) return (int8_t)sub[16 * k + n];
    int q = (sub[16 * (k / 2) + n] >> (4 * (k % 2))) & 15;
    const uint8_t *planes = sub + 8 * sub_values(t);
    if (bits(t) == 5) q |= ((planes[16 * (k / 8) + n] >> (k % 8)) & 1) << 4;
    if (bits(t) == 6) q |= ((planes[16 * (k / 4) + n] >> (2 * (k % 4))) & 3) << 4;
    return q - bias(t);
}

/* rows rows of x times groups groups of W (each group_bytes long) in FLOAT32 mode; out [rows][groups * 16].
 * xsum: the rows' sums per 32 values, [rows][K / 32]. */
static void float_rows(int t, int rows, int groups, const float *x, int64_t K, const uint8_t *w, int64_t group_bytes,
                       const float *xsum, float *out) {
    const int S = sub_values(t);
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int n = 0; n < 16; n++) {
                float acc = 0.0f;
                for (int64_t v0 = 0; v0 < K; v0 += S) {
                    FLOAT_SUB_BLOCK(t, w + g * group_bytes, v0);
                    float p = 0.0f, a, b;
                    for (int k = 0; k < S; k++) p = fmaf(x[r * K + v0 + k], (float)float_value(t, sub, n, k), p);
                    scale_of(t, GROUP, block, n, s, &a, &b);
                    acc = fmaf(a, p, acc);
                    if (has_offset(t)) acc = fmaf(b, xsum[r * (K / 32) + v0 / 32], acc);
                }
                out[(r * groups + g) * 16 + n] = acc;
            }
}

/* INT8 mode: q - bias of row n, value k (0..31) of a run of 32 values. */
static int int8_value(int t, const uint8_t *values, int n, int k) {
    if (bits(t) == 8) return (int8_t)values[4 * GROUP * (k / 4) + 4 * n + k % 4];
    const int h = k / 16, i = k % 4, run = k % 16 / 4;
    int q = (values[4 * GROUP * run + 4 * n + i] >> (4 * h)) & 15;
    const uint8_t *planes = values + 16 * GROUP;
    if (bits(t) == 5) q |= ((planes[4 * n + i] >> (k / 4)) & 1) << 4;
    if (bits(t) == 6) q |= ((planes[4 * GROUP * h + 4 * n + i] >> (2 * run)) & 3) << 4;
    return q - bias(t);
}

/* rows rows of x (integers xq [rows][K], scales xd and sums xs [rows][K / 32]) times groups groups of
 * W in INT8 mode; out [rows][groups * 16]. Q6_K's halves each have their own scale. */
static void int8_rows(int t, int rows, int groups, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                      const uint8_t *w, int64_t group_bytes, float *out) {
    const int64_t blocks = K / 32, per_block = block_values(t) / 32;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int n = 0; n < GROUP; n++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < blocks; b++) {
                    INT8_RUN(t, w + g * group_bytes, b);
                    const int8_t *x = xq + r * K + b * 32;
                    const int s = (int)(b % per_block);
                    int sums[2] = {0, 0};
                    for (int k = 0; k < 32; k++) sums[k / 16] += int8_value(t, values, n, k) * x[k];
                    const float dx = xd[r * blocks + b];
                    float a, offset;
                    if (t == Q6_K) {
                        for (int h = 0; h < 2; h++) {
                            scale_of(t, GROUP, header, n, 2 * s + h, &a, &offset);
                            acc = fmaf(a * dx, (float)sums[h], acc);
                        }
                        continue;
                    }
                    scale_of(t, GROUP, header, n, s, &a, &offset);
                    acc = fmaf(a * dx, (float)(sums[0] + sums[1]), acc);
                    if (has_offset(t)) acc = fmaf(offset, xs[r * blocks + b], acc);
                }
                out[(r * groups + g) * GROUP + n] = acc;
            }
}

/* rows rows of x (both roundings xq1, xq2 [rows][K], their scales xd1, xd2 [rows][K / block_values],
 * their sums per 16 values xb1, xb2 [rows][K / 16] and x's sum as both hold it per 32 values xc [rows][K /
 * 32]) times groups groups of W in INT8X2 mode; out [rows][groups * 16]. Per block, each rounding's
 * integer sum is scaled by its own scale and the two added before d multiplies them; the offsets (a
 * block's m, or a K type's 6-bit mins) multiply xc. */
static void int8x2_rows(int t, int rows, int groups, const int8_t *xq1, const int8_t *xq2, const float *xd1,
                        const float *xd2, const float *xb1, const float *xb2, const float *xc, int64_t K,
                        const uint8_t *w, int64_t group_bytes, float *out) {
    (void)xb1, (void)xb2;
    const int64_t per_block = block_values(t) / 32;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            for (int n = 0; n < GROUP; n++) {
                float acc = 0.0f;
                for (int64_t v0 = 0; v0 < K; v0 += block_values(t)) {
                    const int64_t block = v0 / block_values(t);
                    int a1 = 0, a2 = 0;
                    float offset = 0.0f;
                    for (int64_t c = 0; c < per_block; c++) {
                        INT8_RUN(t, w + g * group_bytes, v0 / 32 + c);
                        int sums[2][2] = {{0, 0}, {0, 0}};
                        for (int k = 0; k < 32; k++) {
                            const int q = int8_value(t, values, n, k);
                            sums[0][k / 16] += q * xq1[r * K + v0 + 32 * c + k];
                            sums[1][k / 16] += q * xq2[r * K + v0 + 32 * c + k];
                        }
                        for (int h = 0; h < 2; h++) {
                            if (t != Q6_K && h == 0) continue;
                            const int s = t == Q6_K ? 2 * (int)c + h : (int)c;
                            const int j1 = t == Q6_K ? sums[0][h] : sums[0][0] + sums[0][1];
                            const int j2 = t == Q6_K ? sums[1][h] : sums[1][0] + sums[1][1];
                            const int sc = t == Q6_K ? (int8_t)header[scale_field(t, GROUP, s) + n]
                                         : has_sub_scales(t) ? header[scale_field(t, GROUP, s) + n] : 1;
                            a1 += sc * j1, a2 += sc * j2;
                            if (t == Q4_K || t == Q5_K)
                                offset = fmaf((float)header[min_field(GROUP, s) + n], xc[r * (K / 32) + v0 / 32 + c], offset);
                        }
                    }
                    const uint8_t *header = w + g * group_bytes + block * block_bytes(INT8X2, t);
                    const float d = half_to_float(header + 2 * n);
                    const float m = t == Q4_0 ? -8.0f * d : half_to_float(header + offset_field(GROUP) + 2 * n);
                    const float dx1 = xd1[r * (K / block_values(t)) + block], dx2 = xd2[r * (K / block_values(t)) + block];
                    acc = fmaf(d, fmaf(dx2, (float)a2, dx1 * (float)a1), acc);
                    if (block_offset(t)) acc = fmaf(m, xc[r * (K / 32) + v0 / 32], acc);
                    if (t == Q4_K || t == Q5_K) acc = fmaf(-m, offset, acc);
                }
                out[(r * groups + g) * GROUP + n] = acc;
            }
}

#endif
