/* The tile shape the int8 kernels (int8_matmul.c, kquant_int8_matmul.c) share: groups of 8 outputs,
 * batched rows in tiles of several groups, single rows a few groups side by side. Included after isa.h. */
#ifndef RILLET_INT8_TILES_H
#define RILLET_INT8_TILES_H

#define GROUP 8
#define TILE_ROWS 4   /* rows of x per tile when batched */
#ifdef RILLET_AVX512
#define TILE_GROUPS 4 /* groups of 8 outputs per tile when batched: two registers of 16 on AVX-512 */
#else
#define TILE_GROUPS 2 /* groups of 8 outputs per tile when batched */
#endif
#define ROW_GROUPS 4  /* groups per tile for a single row */
#define CHUNK_BYTES (256 << 10) /* int8 rows of x per pass over the weights: about half of L2 */

#endif
