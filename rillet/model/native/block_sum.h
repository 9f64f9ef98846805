/* What quant_matmul.c and kquant_matmul.c share: the sum of a block of 32 float32 activations, in
 * one order on every code path (the b * sum(x) term of a block with an offset). Included after isa.h. */
#ifndef RILLET_BLOCK_SUM_H
#define RILLET_BLOCK_SUM_H

#ifdef RILLET_AVX2
#include <immintrin.h>

static inline float block_sum(const float *x) {
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                   _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#elif defined(RILLET_NEON)
/* The AVX2 path's tree: s[0..3] and s[4..7] in two registers, then h = s[i] + s[i + 4]. */
static inline float block_sum(const float *x) {
    float32x4_t s[2];
    for (int i = 0; i < 2; i++)
        s[i] = vaddq_f32(vaddq_f32(vld1q_f32(x + 4 * i), vld1q_f32(x + 8 + 4 * i)),
                         vaddq_f32(vld1q_f32(x + 16 + 4 * i), vld1q_f32(x + 24 + 4 * i)));
    const float32x4_t h = vaddq_f32(s[0], s[1]);
    return vpadds_f32(vadd_f32(vget_low_f32(h), vget_high_f32(h))); /* (h0 + h2) + (h1 + h3) */
}
#else
/* The same additions in the same order. */
static float block_sum(const float *x) {
    float s[8], h[4];
    for (int j = 0; j < 8; j++) s[j] = (x[j] + x[j + 8]) + (x[j + 16] + x[j + 24]);
    for (int i = 0; i < 4; i++) h[i] = s[i] + s[i + 4];
    return (h[0] + h[2]) + (h[1] + h[3]);
}
#endif

#endif
