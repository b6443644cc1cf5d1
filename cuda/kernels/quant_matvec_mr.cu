// Decode matrix-vector variants with more loads in flight per warp ("mr": several rows per warp,
// raw loads first). Same products as quant_matvec.cu (y = W x, the fused RMSNorm, the fused
// GLU, the segmented q|k|v), same lane -> slot mapping and the same per-row arithmetic order;
// what changes is when the weight bytes are loaded:
//
//   - a warp (or WPR warps, splitting the row) takes RPW rows; a chunk is U slot rounds of all
//     of them, and all of a chunk's loads are issued before any of its values is decoded. The
//     loads keep the slot's raw words (T::raw: 2-5 registers) rather than 8 decoded floats, so
//     U x RPW slots fit in registers: all of a 576..1024-wide row in one chunk (U = 4).
//   - the first chunk is loaded before the PDL wait (weights never change): the kernel's DRAM
//     round trip overlaps the kernel before it, and a row of <= 32 U slots per lane needs no
//     other round trip (quant_matvec.cu preloads 3 rounds, so an 896-wide row pays a second one
//     after the wait).
//   - rounds past a warp's end are skipped by a warp-uniform test, not loaded clamped.
//   - only rows longer than one chunk prefetch their remaining lines into L2.
//
// Per output row the sum is over the lane's slots lane + sub*32 + j*32*WPR in ascending j,
// a butterfly, then the row's warps' partials in order: the same for any RPW and block size
// (and for the kernels of quant_matvec.cu with the same WPR), so a batched form that keeps
// acc[row][token] in this order gives every token the single-sequence result bit for bit.
// Built with GGML_FAST_CVT=1 by cuda/quant_ops.py (exact integer->float without I2F).
//
// Kernels (one per variant and type; cuda/quant_ops.py names the variants):
//   mvx_mv_<cfg>_<t>        y = W x (+ y)                      args W, rows, cols, x, y, acc
//   mvx_norm_<cfg>_<t>      y = W (rmsnorm(x) * g) (+ y)       args W, rows, cols, x, g, eps, y, acc
//   mvx_swiglu_<cfg>_<t> / mvx_geglu_<cfg>_<t>: the fused GLU (gate | up stacked, RPW / 2 pairs)
//   mvx_seg_<cfg> / mvx_seg_<cfg>_norm: the segmented product (quant_matvec.cu's arguments)
// MVX_PART (0..3) compiles one of the four kinds (and kinds 0..2 for one type: see below), so
// the builds run in parallel; cvt, the variants and the defaults are in cuda/quant_ops.py.
#include "activations.cuh"
#include "ggml_blocks.cuh"
#include "matvec_common.cuh"
#include "pdl.cuh"

#ifndef MVX_PART
#define MVX_PART 3  // 0: mv, 1: norm, 2: glu (each for one type, MVX_T), 3: seg (every type)
#endif

// One row group: RPW rows (GLU: RPW / 2 gate rows and their up rows) whose outputs start at
// row0, computed by WPR warps (sub = this warp's index among them). WPB: warps per block (the
// partial sums' shared array). Rows past the end are clamped for loading and never stored.
//
// NT > 1 (the batched decode step, mvb_* kernels below): the group computes its rows for nt <= NT
// tokens at once, token t's input at x + t * xs and its outputs in row yrow[t] (or t) of y,
// ys floats apart. The raw loads and the decode of a slot happen once; each token's sum then
// takes the slot's product in the single-token order (acc[t][r] as acc[r] alone), so every
// token's outputs are the single-token kernel's bit for bit, whatever nt and its place.
template <class T, int RPW, int WPR, int U, int WPB, bool NORM, int GLU, int NT = 1>
__device__ __forceinline__ void mr_group(const uint8_t *__restrict__ W, int rows, int cols,
                                         const float *__restrict__ x,
                                         const float *__restrict__ g, float eps,
                                         float *__restrict__ y, const float *__restrict__ bias,
                                         int accumulate, int row0, int nt = 1, int xs = 0,
                                         int ys = 0, const int *__restrict__ yrow = nullptr) {
    static_assert(GLU == GLU_NONE || RPW % 2 == 0, "a GLU pairs gate rows with up rows");
    constexpr int NS = T::QK / 8, P = GLU ? RPW / 2 : RPW;  // P: outputs of the group
    constexpr int STEP = 32 * WPR;                          // slots between a lane's rounds
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = warp % WPR;
    const int nblk = cols / T::QK, nslot = nblk * NS;
    const size_t row_bytes = (size_t)nblk * T::BYTES;
    const uint8_t *wr[RPW];
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
        const int out = min(row0 + (GLU ? r % P : r), rows - 1);
        wr[r] = W + (size_t)(out + (GLU && r >= P ? rows : 0)) * row_bytes;
    }
    pdl_trigger();
    const int first = sub * 32 + lane;  // the lane's slot of round j: first + j * STEP
    // rounds in which this warp has a slot (warp-uniform); none for an idle group
    const int n_rounds = row0 < rows && nslot > sub * 32 ? (nslot - sub * 32 + STEP - 1) / STEP : 0;
    if (n_rounds > U) {  // rows longer than a chunk: the later chunks' lines into L2 now,
        // split between the row's warps
        const size_t from = (size_t)(U * STEP) / NS * T::BYTES;
        const size_t share = (row_bytes - min(row_bytes, from) + WPR - 1) / WPR;
        const size_t lo = min(row_bytes, from + sub * share);
#pragma unroll
        for (int r = 0; r < RPW; ++r) prefetch_l2(wr[r] + lo, min(share, row_bytes - lo), lane);
    }
    typename T::Raw raw[U][RPW];
    auto load = [&](int j0) {
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (j0 + u < n_rounds) {
                const int sc = min(first + (j0 + u) * STEP, nslot - 1);  // unused past the end
#pragma unroll
                for (int r = 0; r < RPW; ++r)
                    raw[u][r] = T::raw(wr[r] + (size_t)(sc / NS) * T::BYTES, sc % NS);
            }
    };
    load(0);
    pdl_wait();
    float inv[NT], acc[NT * RPW];  // acc[t * RPW + r]: token t's sum of row r
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        inv[t] = NORM && t < nt ? rms_inv(x + (size_t)t * xs, cols, eps, lane) : 1.f;
#pragma unroll
        for (int r = 0; r < RPW; ++r) acc[t * RPW + r] = 0.f;
    }
    for (int j0 = 0; j0 < n_rounds; j0 += U) {
        if (j0 > 0) load(j0);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = first + (j0 + u) * STEP;
            if (j0 + u < n_rounds && s < nslot) {
                const int b = s / NS, k = s % NS;
                if constexpr (NT == 1) {  // the single-token kernels' code, unchanged
                    float4 xa, xc;
                    x_slot<NORM>(x, g, b * T::QK + T::P0(k), b * T::QK + T::P1(k), xa, xc);
#pragma unroll
                    for (int r = 0; r < RPW; ++r) {
                        float4 a, c;
                        T::decode(raw[u][r], k, a, c);
                        acc[r] += dot8(a, c, xa, xc);
                    }
                } else {
                    float4 a[RPW], c[RPW];
#pragma unroll
                    for (int r = 0; r < RPW; ++r) T::decode(raw[u][r], k, a[r], c[r]);
                    const int c0 = b * T::QK + T::P0(k), c1 = b * T::QK + T::P1(k);
                    float4 ga, gc;  // the norm weights once for all tokens (x_slot's products)
                    if (NORM) g_slot(g, c0, c1, ga, gc);
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        if (t >= nt) break;  // warp-uniform
                        float4 xa, xc;
                        x_slot_g<NORM>(x + (size_t)t * xs, ga, gc, c0, c1, xa, xc);
#pragma unroll
                        for (int r = 0; r < RPW; ++r)
                            acc[t * RPW + r] += dot8(a[r], c[r], xa, xc);
                    }
                }
            }
        }
    }
    reduce_rows<NT * RPW, WPR, WPB>(acc, lane, warp, sub);
    if (sub != 0 || lane != 0) return;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= nt) break;
        float mine[RPW];
#pragma unroll
        for (int r = 0; r < RPW; ++r) mine[r] = acc[t * RPW + r];
        const int row = yrow == nullptr ? t : yrow[t];
        store_rows<GLU, P>(mine, inv[t], y + (size_t)row * ys, bias, accumulate, row0, rows);
    }
}

// The plain grid: a block of WPB warps holds WPB / WPR groups.
template <class T, int RPW, int WPR, int U, int WPB, bool NORM, int GLU>
__device__ __forceinline__ void mr_grid(const uint8_t *__restrict__ W, int rows, int cols,
                                        const float *__restrict__ x, const float *__restrict__ g,
                                        float eps, float *__restrict__ y, int accumulate) {
    constexpr int P = GLU ? RPW / 2 : RPW;
    const int group = blockIdx.x * (WPB / WPR) + (threadIdx.x >> 5) / WPR;
    mr_group<T, RPW, WPR, U, WPB, NORM, GLU>(W, rows, cols, x, g, eps, y, nullptr, accumulate,
                                             group * P);
}

// The batched decode step's grid (mvb_* kernels): blockIdx.x a tile of NT of the n_tok tokens
// (rows of x, xs floats apart; outputs in rows yrow[t] of y, or t), blockIdx.y the row groups
// as mr_grid's blockIdx.x: the tiles of one row group run together, so its weights come from
// DRAM once even where the matrix is larger than L2 (the output heads).
template <class T, int RPW, int WPR, int U, int WPB, bool NORM, int GLU, int NT>
__device__ __forceinline__ void mr_grid_rows(const uint8_t *__restrict__ W, int rows, int cols,
                                             const float *__restrict__ x,
                                             const float *__restrict__ g, float eps,
                                             float *__restrict__ y, int accumulate, int n_tok,
                                             int xs, int ys, const int *__restrict__ yrow) {
    constexpr int P = GLU ? RPW / 2 : RPW;
    const int group = blockIdx.y * (WPB / WPR) + (threadIdx.x >> 5) / WPR;
    const int t0 = blockIdx.x * NT, nt = min(NT, n_tok - t0);
    mr_group<T, RPW, WPR, U, WPB, NORM, GLU, NT>(
        W, rows, cols, x + (size_t)t0 * xs, g, eps, yrow == nullptr ? y + (size_t)t0 * ys : y,
        nullptr, accumulate, group * P, nt, xs, ys, yrow == nullptr ? nullptr : yrow + t0);
}

#ifndef MVB_NT
#define MVB_NT 8  // tokens per block of the batched kernels (cuda/quant_ops.py's BATCH_TILE)
#endif

// Persistent form for the output heads (matvec_norm over 49k..262k rows of <= 32 U slots):
// a grid of as many blocks as fit on the GPU, each warp looping over groups of RPW rows with a
// stride of the grid's warps. x * g (and 1 / rms) are computed once per warp and kept in
// registers (a lane's columns are the same in every row): the per-row-group x and g loads and
// the per-warp norm of the other forms go away, which for a 151,936-row head are most of the
// L1 traffic besides the weights. The next group's raw loads are issued before the current
// group is decoded, so a warp always has a group's bytes in flight. Per row the arithmetic is
// mr_group's (and quant_matvec.cu's plain / tall kernels'): the same slots, order and products.
// Rows must have at most 32 U slots (cuda/quant_ops.py checks); WPR = 1.
template <class T, int RPW, int U, int WPB>
__device__ __forceinline__ void mr_persist(const uint8_t *__restrict__ W, int rows, int cols,
                                           const float *__restrict__ x,
                                           const float *__restrict__ g, float eps,
                                           float *__restrict__ y, int accumulate) {
    constexpr int NS = T::QK / 8;
    const int lane = threadIdx.x & 31;
    const int nblk = cols / T::QK, nslot = nblk * NS;
    const size_t row_bytes = (size_t)nblk * T::BYTES;
    const int n_groups = (rows + RPW - 1) / RPW;
    const int stride = gridDim.x * WPB;
    int grp = blockIdx.x * WPB + (threadIdx.x >> 5);
    pdl_trigger();
    typename T::Raw cur[U][RPW], nxt[U][RPW];
    auto load = [&](typename T::Raw(&raw)[U][RPW], int group) {
#pragma unroll
        for (int r = 0; r < RPW; ++r) {
            const uint8_t *wr = W + (size_t)min(group * RPW + r, rows - 1) * row_bytes;
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (u * 32 < nslot) {  // warp-uniform: rounds the row has
                    const int sc = min(lane + u * 32, nslot - 1);
                    raw[u][r] = T::raw(wr + (size_t)(sc / NS) * T::BYTES, sc % NS);
                }
        }
    };
    if (grp < n_groups) load(cur, grp);
    pdl_wait();
    const float inv = rms_inv(x, cols, eps, lane);
    float4 xa[U], xc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int sc = min(lane + u * 32, nslot - 1), b = sc / NS, k = sc % NS;
        x_slot<true>(x, g, b * T::QK + T::P0(k), b * T::QK + T::P1(k), xa[u], xc[u]);
    }
    for (; grp < n_groups; grp += stride) {
        if (grp + stride < n_groups) load(nxt, grp + stride);
        float acc[RPW];
#pragma unroll
        for (int r = 0; r < RPW; ++r) acc[r] = 0.f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = lane + u * 32;
            if (u * 32 < nslot && s < nslot) {
                const int k = s % NS;
#pragma unroll
                for (int r = 0; r < RPW; ++r) {
                    float4 a, c;
                    T::decode(cur[u][r], k, a, c);
                    acc[r] += dot8(a, c, xa[u], xc[u]);
                }
            }
        }
        reduce_rows<RPW, 1, WPB>(acc, lane, 0, 0);  // one warp per group: no barrier
        if (lane == 0) store_rows<GLU_NONE, RPW>(acc, inv, y, nullptr, accumulate, grp * RPW, rows);
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int r = 0; r < RPW; ++r) cur[u][r] = nxt[u][r];
    }
}

#define MVX_ARGS const uint8_t *__restrict__ W, int rows, int cols, const float *__restrict__ x
#define MVX_OUT float *__restrict__ y, int accumulate
#define MVX_NORM const float *__restrict__ g, float eps
#define MVB_ROWS int n_tok, int xs, int ys, const int *__restrict__ yrow
#define MVX_SIG(kname, WPB, ...) \
    extern "C" __global__ void __launch_bounds__(WPB * 32) kname(__VA_ARGS__)

// A configuration: name, rows per warp, warps per row, rounds per chunk, warps per block.
// Kinds 0..2 are built for one weight type, MVX_T (the ggml struct) / MVX_SFX (the kernel
// suffix), so the type builds run in parallel (cuda/quant_ops.py's mr_sources).
#if MVX_PART <= 2
#if !defined(MVX_T) || !defined(MVX_SFX)
#error "MVX_T and MVX_SFX name the weight type of this build"
#endif
#define MVX_K(kind, cfg, sfx, NORM, GLU, RPW, WPR, U, WPB)                                   \
    MVX_SIG(mvx_##kind##_##cfg##_##sfx, WPB, MVX_ARGS, MVX_NORM, MVX_OUT) {                  \
        mr_grid<ggml::MVX_T, RPW, WPR, U, WPB, NORM, GLU>(W, rows, cols, x, g, eps, y,       \
                                                          accumulate);                       \
    }
#define MVB_K(kind, cfg, sfx, NORM, GLU, RPW, WPR, U, WPB)                                  \
    MVX_SIG(mvb_##kind##_##cfg##_##sfx, WPB, MVX_ARGS, MVX_NORM, MVX_OUT, MVB_ROWS) {        \
        mr_grid_rows<ggml::MVX_T, RPW, WPR, U, WPB, NORM, GLU, MVB_NT>(                       \
            W, rows, cols, x, g, eps, y, accumulate, n_tok, xs, ys, yrow);                    \
    }
#if MVX_PART == 0
// the plain product takes no g / eps: its own signature
#define MVX_MV(cfg, sfx, RPW, WPR, U, WPB)                                                    \
    MVX_SIG(mvx_mv_##cfg##_##sfx, WPB, MVX_ARGS, MVX_OUT) {                                   \
        mr_grid<ggml::MVX_T, RPW, WPR, U, WPB, false, GLU_NONE>(W, rows, cols, x, nullptr,    \
                                                                0.f, y, accumulate);          \
    }
// batched: y rows = W x rows (cuda/quant_ops.py's matvec_rows); cfg b<WPR>
#define MVB_MV(cfg, sfx, RPW, WPR, U, WPB)                                                    \
    MVX_SIG(mvb_mv_##cfg##_##sfx, WPB, MVX_ARGS, MVX_OUT, MVB_ROWS) {                         \
        mr_grid_rows<ggml::MVX_T, RPW, WPR, U, WPB, false, GLU_NONE, MVB_NT>(                  \
            W, rows, cols, x, nullptr, 0.f, y, accumulate, n_tok, xs, ys, yrow);              \
    }
#define MVX_KERNELS(sfx)             \
    MVB_MV(b1, sfx, 4, 1, 2, 4)      \
    MVB_MV(b2, sfx, 2, 2, 2, 4)      \
    MVB_MV(b4, sfx, 2, 4, 2, 4)      \
    MVB_MV(b8, sfx, 2, 8, 2, 8)      \
    MVX_MV(r1, sfx, 1, 1, 4, 4)      \
    MVX_MV(r2, sfx, 2, 1, 4, 4)      \
    MVX_MV(r4, sfx, 4, 1, 4, 4)      \
    MVX_MV(r1b8, sfx, 1, 1, 4, 8)    \
    MVX_MV(w2, sfx, 1, 2, 4, 4)      \
    MVX_MV(w4, sfx, 1, 4, 5, 4)      \
    MVX_MV(w4r2, sfx, 2, 4, 5, 4)    \
    MVX_MV(w8, sfx, 1, 8, 3, 8)
#elif MVX_PART == 1
#define MVX_KERNELS(sfx)                                  \
    MVB_K(norm, b1, sfx, true, GLU_NONE, 4, 1, 2, 4)      \
    MVX_K(norm, r1, sfx, true, GLU_NONE, 1, 1, 4, 4)      \
    MVX_K(norm, r2, sfx, true, GLU_NONE, 2, 1, 4, 4)      \
    MVX_K(norm, r4, sfx, true, GLU_NONE, 4, 1, 4, 4)      \
    MVX_K(norm, r8, sfx, true, GLU_NONE, 8, 1, 4, 4)      \
    MVX_K(norm, r4b8, sfx, true, GLU_NONE, 4, 1, 4, 8)       \
    MVX_P(p2, sfx, 2, 4, 4)                                  \
    MVX_P(p4, sfx, 4, 4, 4)                                  \
    MVX_P(p2b8, sfx, 2, 4, 8)
#define MVX_P(cfg, sfx, RPW, U, WPB)                                                       \
    MVX_SIG(mvx_norm_##cfg##_##sfx, WPB, MVX_ARGS, MVX_NORM, MVX_OUT) {                   \
        mr_persist<ggml::MVX_T, RPW, U, WPB>(W, rows, cols, x, g, eps, y, accumulate);     \
    }
#else
#define MVX_GLU(cfg, sfx, RPW, WPB)                                \
    MVX_K(swiglu, cfg, sfx, true, GLU_SILU, RPW, 1, 4, WPB)        \
    MVX_K(geglu, cfg, sfx, true, GLU_GELU, RPW, 1, 4, WPB)
// r2o: one pair per warp with registers capped for 10 blocks of 4 warps per SM (<= 51), so
// qwen2's 1,216 blocks are resident at once (r2 takes 64 registers: 8 blocks, 1,056)
#define MVX_GLU_O(cfg, sfx, RPW, WPB, MINB)                                                      \
    extern "C" __global__ void __launch_bounds__(WPB * 32, MINB)                                 \
        mvx_swiglu_##cfg##_##sfx(MVX_ARGS, MVX_NORM, MVX_OUT) {                                 \
        mr_grid<ggml::MVX_T, RPW, 1, 4, WPB, true, GLU_SILU>(W, rows, cols, x, g, eps, y,       \
                                                             accumulate);                       \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(WPB * 32, MINB)                                 \
        mvx_geglu_##cfg##_##sfx(MVX_ARGS, MVX_NORM, MVX_OUT) {                                  \
        mr_grid<ggml::MVX_T, RPW, 1, 4, WPB, true, GLU_GELU>(W, rows, cols, x, g, eps, y,       \
                                                             accumulate);                       \
    }
#define MVX_KERNELS(sfx)         \
    MVB_K(swiglu, b1, sfx, true, GLU_SILU, 4, 1, 2, 4) \
    MVB_K(geglu, b1, sfx, true, GLU_GELU, 4, 1, 2, 4)  \
    MVX_GLU(r2, sfx, 2, 4)       \
    MVX_GLU(r4, sfx, 4, 4)       \
    MVX_GLU(r2b8, sfx, 2, 8)     \
    MVX_GLU(r4b8, sfx, 4, 8)     \
    MVX_GLU_O(r2o, sfx, 2, 4, 10)
#endif
#define MVX_EXPAND(sfx) MVX_KERNELS(sfx)  // expands MVX_SFX before the ## pasting
MVX_EXPAND(MVX_SFX)
#else
// The segmented product (quant_matvec.cu's matvec_seg): a warp takes RPW rows of one segment
// (segment s has ceil(n_s / RPW) groups), WPR = 1. Type codes: the order of GGML_FOR_EACH_TYPE.
// NT > 1: the batched form (mr_grid_rows' token tiles in blockIdx.y).
template <int RPW, int WPB, bool NORM, int NT = 1>
__device__ __forceinline__ void mr_seg(int cols, const float *__restrict__ x,
                                       const float *__restrict__ g, float eps,
                                       float *__restrict__ y, const float *__restrict__ bias,
                                       int accumulate, const uint8_t *__restrict__ W0, int t0,
                                       int n0, const uint8_t *__restrict__ W1, int t1, int n1,
                                       const uint8_t *__restrict__ W2, int t2, int n2,
                                       int n_tok = 1, int xs = 0, int ys = 0,
                                       const int *__restrict__ yrow = nullptr) {
    // NT > 1: blockIdx.x the token tile, blockIdx.y the row groups (as mr_grid_rows)
    const int tok0 = NT > 1 ? blockIdx.x * NT : 0, nt = min(NT, n_tok - tok0);
    x += (size_t)tok0 * xs;
    if (yrow == nullptr)
        y += (size_t)tok0 * ys;
    else
        yrow += tok0;
    const int group = (NT > 1 ? blockIdx.y : blockIdx.x) * WPB + (threadIdx.x >> 5);
    const int g0 = (n0 + RPW - 1) / RPW, g1 = (n1 + RPW - 1) / RPW, g2 = (n2 + RPW - 1) / RPW;
    // past the last group: nothing to load (an empty segment has no row to clamp to)
    if (group >= g0 + g1 + g2) return;
    const int s = group < g0 ? 0 : group < g0 + g1 ? 1 : 2;
    const int first = s == 0 ? 0 : s == 1 ? n0 : n0 + n1;  // the segment's first output
    const int local = group - (s == 0 ? 0 : s == 1 ? g0 : g0 + g1);
    const uint8_t *W = s == 0 ? W0 : s == 1 ? W1 : W2;
    const int type = s == 0 ? t0 : s == 1 ? t1 : t2, rows = s == 0 ? n0 : s == 1 ? n1 : n2;
    float *y_seg = y + first;  // each token's row: + its row * ys
    const float *bs = bias == nullptr ? nullptr : bias + first;
#define MVX_SEG_CASE(code, T)                                                                \
    case code:                                                                               \
        mr_group<ggml::T, RPW, 1, 4, WPB, NORM, GLU_NONE, NT>(W, rows, cols, x, g, eps,      \
                                                              y_seg, bs, accumulate,          \
                                                              local * RPW, nt, xs, ys, yrow); \
        break;
    switch (type) {
        MVX_SEG_CASE(0, F32)
        MVX_SEG_CASE(1, F16)
        MVX_SEG_CASE(2, Q8_0)
        MVX_SEG_CASE(3, Q4_0)
        MVX_SEG_CASE(4, Q4_1)
        MVX_SEG_CASE(5, Q5_0)
        MVX_SEG_CASE(6, Q4_K)
        MVX_SEG_CASE(7, Q6_K)
        MVX_SEG_CASE(8, MXFP4)
        default:
            break;
    }
#undef MVX_SEG_CASE
}

#define MVX_SEG_ARGS                                                                           \
    int cols, const float *__restrict__ x, const float *__restrict__ g, float eps,             \
        float *__restrict__ y, const float *__restrict__ bias, int accumulate,                 \
        const uint8_t *__restrict__ W0, int t0, int n0, const uint8_t *__restrict__ W1, int t1, \
        int n1, const uint8_t *__restrict__ W2, int t2, int n2
#define MVX_SEG_PASS cols, x, g, eps, y, bias, accumulate, W0, t0, n0, W1, t1, n1, W2, t2, n2
#define MVX_SEG_K(cfg, RPW, WPB)                                                         \
    MVX_SIG(mvx_seg_##cfg, WPB, MVX_SEG_ARGS) { mr_seg<RPW, WPB, false>(MVX_SEG_PASS); } \
    MVX_SIG(mvx_seg_##cfg##_norm, WPB, MVX_SEG_ARGS) { mr_seg<RPW, WPB, true>(MVX_SEG_PASS); }
#define MVB_SEG_K(cfg, RPW, WPB)                                                             \
    MVX_SIG(mvb_seg_##cfg, WPB, MVX_SEG_ARGS, MVB_ROWS) {                                     \
        mr_seg<RPW, WPB, false, MVB_NT>(MVX_SEG_PASS, n_tok, xs, ys, yrow);                   \
    }                                                                                         \
    MVX_SIG(mvb_seg_##cfg##_norm, WPB, MVX_SEG_ARGS, MVB_ROWS) {                              \
        mr_seg<RPW, WPB, true, MVB_NT>(MVX_SEG_PASS, n_tok, xs, ys, yrow);                    \
    }
MVB_SEG_K(b1, 2, 4)
MVX_SEG_K(r1, 1, 4)
MVX_SEG_K(r2, 2, 4)
MVX_SEG_K(r1b8, 1, 8)
#endif
