/* A float16 as float32 in portable C, for the scalar fallbacks of the block kernels (the AVX2
 * paths convert with F16C). Normals, subnormals, infinities and NaN as IEEE defines them. */
#ifndef RILLET_HALF_FLOAT_H
#define RILLET_HALF_FLOAT_H

#include <stdint.h>

static float half_to_float(const uint8_t *p) {
    const uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    const int exponent = (h >> 10) & 31, mantissa = h & 1023;
    float value = exponent == 0 ? mantissa * (1.0f / 16777216.0f)
                : exponent == 31 ? (mantissa ? __builtin_nanf("") : __builtin_inff())
                : (1024 + mantissa) * __builtin_ldexpf(1.0f, exponent - 25);
    return h & 0x8000 ? -value : value;
}

#endif
