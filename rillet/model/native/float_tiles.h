/* The tile shape the float kernels (quant_matmul.c, kquant_matmul.c) share: groups of 16 outputs,
 * batched rows in register tiles, single rows a few groups side by side. Included after isa.h. */
#ifndef RILLET_FLOAT_TILES_H
#define RILLET_FLOAT_TILES_H

#define GROUP 16
#define MAX_ROWS 6 /* rows of x per register tile: 12 partial sums + 2 weights + 1 broadcast */
#ifdef RILLET_AVX512
#define TILE_GROUPS 2 /* groups per register tile: 6 rows x 32 outputs, 24 registers of sums */
#else
#define TILE_GROUPS 1
#endif
#define ROW_GROUPS 4 /* groups side by side for a single row: 8 independent chains */
#define CHUNK_BYTES (256 << 10) /* rows of x per pass over the weights: about half of L2 */

#endif
