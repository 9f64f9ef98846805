/* What int8_matmul.c and kquant_int8_matmul.c share: rounding a block of 32 activations to int8, so
 * that both formats (and every code path) round them exactly alike, and on AVX2 and NEON broadcasting
 * four of their bytes and adding products. Included after isa.h (and <immintrin.h> on AVX2), <math.h>
 * and <string.h>. */
#ifndef RILLET_INT8_ACTIVATIONS_H
#define RILLET_INT8_ACTIVATIONS_H

#ifdef RILLET_AVX2

/* Integer sums of u8 x s8 products, four adjacent products to a 32-bit lane: VNNI adds them in one
 * instruction into 32-bit sums; AVX2 pairs them into 16-bit sums that widen() turns into 32-bit ones
 * (exact where the caller keeps the 16-bit sums in range), and subtract() takes such sums from each
 * other. The same integers either way. */
#ifdef RILLET_AVX512
static inline __m256i add_products(__m256i sum, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(sum, u, s); }
static inline __m256i widen(__m256i sum) { return sum; }
#else
static inline __m256i add_products(__m256i sum, __m256i u, __m256i s) { return _mm256_add_epi16(sum, _mm256_maddubs_epi16(u, s)); }
static inline __m256i widen(__m256i sum) { return _mm256_madd_epi16(sum, _mm256_set1_epi16(1)); }
#endif

static inline __m256i subtract(__m256i sum, __m256i products) {
#ifdef RILLET_AVX512
    return _mm256_sub_epi32(sum, products);
#else
    return _mm256_sub_epi16(sum, products);
#endif
}

#ifdef RILLET_AVX512
/* Groups of 8 outputs in pairs: the 32 bytes at first (the first group's) in the low half of a 512-bit
 * register and those group_bytes on (the second's) in the high half; a lone last group (both = 0) is
 * read twice and its copy dropped. */
static inline __m512i two_groups(const uint8_t *first, int64_t group_bytes, int both) {
    const __m256i low = _mm256_loadu_si256((const __m256i *)first);
    const __m256i high = _mm256_loadu_si256((const __m256i *)(both ? first + group_bytes : first));
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

/* The 32-bit sums of a pair's first group (high = 0) or second. */
static inline __m256i half_of(__m512i v, int high) { return high ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v); }

/* Four bytes of x's integers, repeated across a 512-bit register. */
static inline __m512i broadcast4x16(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
#endif

/* Four bytes of x's integers, repeated across a register. */
static inline __m256i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
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
    const __m256i ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, ordered);
    *dx = d;
    *sx = d * (float)_mm_cvtsi128_si32(t);
}

#elif defined(RILLET_NEON)

/* NEON: add_products(sum, w, x) adds to each 32-bit lane n the four products w[4n + i] x[4n + i]: sdot
 * where the CPU has it; else widening multiplies, pairs added in 16 bits (at most 2 * 128 * 127, as x
 * is in -127..127) and then into the 32-bit lanes. The same integers either way. */
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

#else

/* The same rounding in portable C: round to nearest even, as _mm256_round_ps does. */
static void quantize_block(const float *x, int8_t *q, float *dx, float *sx) {
    float amax = 0.0f;
    for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int k = 0; k < 32; k++) sum += q[k] = (int8_t)nearbyintf(x[k] * inv);
    *dx = amax / 127.0f;
    *sx = *dx * (float)sum;
}

#endif

#endif
