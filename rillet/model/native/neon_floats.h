/* What the float kernels' NEON paths (quant_matmul.c, kquant_matmul.c) share: float16 and 8-bit
 * integers widened to float32. Included inside their RILLET_NEON branch. */
#ifndef RILLET_NEON_FLOATS_H
#define RILLET_NEON_FLOATS_H

static inline float32x4_t half4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

/* 16 bytes as floats (unsigned, signed): f[i] holds rows 4i..4i+3. */
static inline __attribute__((always_inline)) void u8_floats(uint8x16_t v, float32x4_t f[4]) {
    const uint16x8_t a = vmovl_u8(vget_low_u8(v)), b = vmovl_high_u8(v);
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a))), f[1] = vcvtq_f32_u32(vmovl_high_u16(a));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b))), f[3] = vcvtq_f32_u32(vmovl_high_u16(b));
}

static inline __attribute__((always_inline)) void i8_floats(int8x16_t v, float32x4_t f[4]) {
    const int16x8_t a = vmovl_s8(vget_low_s8(v)), b = vmovl_high_s8(v);
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), f[1] = vcvtq_f32_s32(vmovl_high_s16(a));
    f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), f[3] = vcvtq_f32_s32(vmovl_high_s16(b));
}

#endif
