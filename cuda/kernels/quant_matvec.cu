// Matrix-vector product for decode (batch 1): y[r] = sum_c W[r, c] * x[c]  (+ y[r] when accumulate).
//
// W: rows x cols weights as raw GGML blocks (row-major, row_bytes = cols / QK * BYTES).
// One warp per output row; lane i takes the 8-value slots i, i+32, ... of the row, so a warp's
// loads of one step cover consecutive bytes of the row, each weight byte is loaded once, and x is
// read as float4 (cached in L1: every warp of the grid reads the same x). fp32 accumulation, then a
// shuffle reduction. cols must be a multiple of the type's QK (8 for F32/F16); rows are arbitrary.
// No host-side value changes per decode step, so launches are CUDA-graph capturable.
// PDL (pdl.cuh): every kernel lets the next one launch at once, loads and decodes its first
// slots (MV_PRE) and prefetches the rest of its weight rows into L2 (weights never change), and
// only then waits for the kernel before it to finish, so the weights' DRAM round trip overlaps
// the previous kernel.
#include "activations.cuh"
#include "ggml_blocks.cuh"
#include "matvec_common.cuh"
#include "pdl.cuh"

#ifndef MV_WARPS
#define MV_WARPS 4  // rows (warps) per block of threads
#endif
#ifndef MV_BATCH
#define MV_BATCH 0  // 1: batched branch-free slot loop in every kernel (see matvec_gen)
#endif
#ifndef MV_PRE
#define MV_PRE 1  // 1: a lane's first slots are loaded and decoded before the PDL wait
#endif

// Generalised kernel. A row group of WPR warps computes R weight rows:
//   R > 1 reuses every x load for R rows (x loads are half of the L1 traffic: the tall head);
//   WPR > 1 splits a long row over more warps, so fewer sequential load rounds remain.
// Fusions for the decode step (each saves a launch per layer):
//   NORM:   the input is rmsnorm(x) * g: every warp computes the sum of squares of x itself
//           (x is a few KB, L1-resident), the dot products use x * g, and the result is scaled
//           by 1 / sqrt(mean(x^2) + eps) at the end.
//   GLU:    W is gate | up stacked (2 * rows rows); output i is act(gate_i . x) * (up_i . x),
//           the two rows computed by one warp (R = 2) sharing their x loads; act is SiLU
//           (GLU_SILU: SwiGLU, llama / qwen2) or GELU-tanh (GLU_GELU: gemma3).
//   bias:   null, or one float per output row added at the end (qwen2's q/k/v bias).
// row0 is this row group's first output (the callers below derive it from the block index).
// Partial sums of a row's warps meet in shared memory. Rows past the end are clamped for
// loading and never stored.
template <class T, int R, int WPR, bool NORM, int GLU>
__device__ __forceinline__ void matvec_gen(const uint8_t *__restrict__ W, int rows, int cols,
                                           const float *__restrict__ x,
                                           const float *__restrict__ g, float eps,
                                           float *__restrict__ y,
                                           const float *__restrict__ bias, int accumulate,
                                           int row0) {
    static_assert(GLU == GLU_NONE || R == 2, "a GLU pairs a gate row with an up row");
    constexpr int NS = T::QK / 8;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = warp % WPR;
    const int nblk = cols / T::QK, nslot = nblk * NS;
    const size_t row_bytes = (size_t)nblk * T::BYTES;
    const uint8_t *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int wrow = GLU ? min(row0, rows - 1) + r * rows : min(row0 + r, rows - 1);
        wr[r] = W + (size_t)wrow * row_bytes;
    }
    pdl_trigger();
    if (row0 < rows) {
        const size_t share = (row_bytes + WPR - 1) / WPR;  // a row's warps split its lines
#pragma unroll
        for (int r = 0; r < R; ++r)
            prefetch_l2(wr[r] + sub * share, min(share, row_bytes - min(row_bytes, sub * share)),
                        lane);
    }
#if !MV_BATCH
    const int start = row0 < rows ? sub * 32 + lane : nslot;  // idle groups skip the loops
    // The lane's first PRE slot rounds (all of a 576-wide row) are loaded and decoded now,
    // before the wait: weights never change, so this overlaps the kernel before (PDL).
    constexpr int PRE = MV_PRE ? (R >= 4 ? 1 : 3) : 0, PRE1 = PRE > 0 ? PRE : 1;
    float4 pa[PRE1][R], pc[PRE1][R];
#pragma unroll
    for (int u = 0; u < PRE; ++u) {
        const int sc = min(start + u * 32 * WPR, nslot - 1);  // clamped; unused past the end
#pragma unroll
        for (int r = 0; r < R; ++r)
            T::slot8(wr[r] + (size_t)(sc / NS) * T::BYTES, sc % NS, pa[u][r], pc[u][r]);
    }
#endif
    pdl_wait();
    const float inv = NORM ? rms_inv(x, cols, eps, lane) : 1.f;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#if MV_BATCH
    // Rounds of U slots per lane with clamped indices and no branch inside a round, so all of
    // a round's loads are in flight together (a guarded slot's decode waits for its own load).
    constexpr int U = R >= 4 ? 3 : 4;
    const int n_eff = row0 < rows ? nslot : 0;  // idle groups skip the loop
    for (int s0 = 0; s0 < n_eff; s0 += 32 * WPR * U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = s0 + (u * WPR + sub) * 32 + lane;
            const float on = s < n_eff ? 1.f : 0.f;  // slots past the end count 0
            const int sc = min(s, n_eff - 1);
            const int b = sc / NS, k = sc % NS;
            float4 xa, xc;
            x_slot<NORM>(x, g, b * T::QK + T::P0(k), b * T::QK + T::P1(k), xa, xc);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float4 a, c;
                T::slot8(wr[r] + (size_t)b * T::BYTES, k, a, c);
                acc[r] += on * (a.x * xa.x + a.y * xa.y + a.z * xa.z + a.w * xa.w +
                                c.x * xc.x + c.y * xc.y + c.z * xc.z + c.w * xc.w);
            }
        }
    }
#else
#pragma unroll
    for (int u = 0; u < PRE; ++u) {
        const int s = start + u * 32 * WPR;
        if (s < nslot) {
            const int b = s / NS, k = s % NS;
            float4 xa, xc;
            x_slot<NORM>(x, g, b * T::QK + T::P0(k), b * T::QK + T::P1(k), xa, xc);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += dot8(pa[u][r], pc[u][r], xa, xc);
        }
    }
#pragma unroll 2
    for (int s = start + PRE * 32 * WPR; s < nslot; s += 32 * WPR) {
        const int b = s / NS, k = s % NS;
        float4 xa, xc;
        x_slot<NORM>(x, g, b * T::QK + T::P0(k), b * T::QK + T::P1(k), xa, xc);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float4 a, c;
            T::slot8(wr[r] + (size_t)b * T::BYTES, k, a, c);
            acc[r] += dot8(a, c, xa, xc);
        }
    }
#endif
    reduce_rows<R, WPR, MV_WARPS>(acc, lane, warp, sub);
    if (sub != 0 || lane != 0) return;
    store_rows<GLU, GLU ? 1 : R>(acc, inv, y, bias, accumulate, row0, rows);
}

// The plain kernels' row groups: WPR warps per group, R rows each (one output for a GLU).
template <class T, int R, int WPR, bool NORM, int GLU>
__device__ __forceinline__ void matvec_grid(const uint8_t *__restrict__ W, int rows, int cols,
                                            const float *__restrict__ x,
                                            const float *__restrict__ g, float eps,
                                            float *__restrict__ y, int accumulate) {
    constexpr int GROUPS = MV_WARPS / WPR, OUT = GLU ? 1 : R;
    const int group = (threadIdx.x >> 5) / WPR;
    matvec_gen<T, R, WPR, NORM, GLU>(W, rows, cols, x, g, eps, y, nullptr, accumulate,
                                     (blockIdx.x * GROUPS + group) * OUT);
}

// Arguments of every kernel: W, rows, cols, x, y, accumulate; the fused ones add g, eps after x.
#define MV_ARGS const uint8_t *__restrict__ W, int rows, int cols, const float *__restrict__ x
#define MV_OUT float *__restrict__ y, int accumulate
#define MV_NORM const float *__restrict__ g, float eps
#define MV_SIG(kname, ...) \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32) kname(__VA_ARGS__)
#define MV_CALL(T, R, WPR, NORM, GLU) \
    matvec_grid<ggml::T, R, WPR, NORM, GLU>(W, rows, cols, x, g, eps, y, accumulate)

#define MATVEC_KERNEL(T, name)                                                                  \
    MV_SIG(matvec_##name, MV_ARGS, MV_OUT) {                                                    \
        const float *g = nullptr;                                                               \
        const float eps = 0.f;                                                                  \
        MV_CALL(T, 1, 1, false, GLU_NONE);                                                      \
    }                                                                                           \
    MV_SIG(matvec_tall_##name, MV_ARGS, MV_OUT) {                                               \
        const float *g = nullptr;                                                               \
        const float eps = 0.f;                                                                  \
        MV_CALL(T, 4, 1, false, GLU_NONE);                                                      \
    }                                                                                           \
    MV_SIG(matvec_wide_##name, MV_ARGS, MV_OUT) {                                               \
        const float *g = nullptr;                                                               \
        const float eps = 0.f;                                                                  \
        MV_CALL(T, 1, 2, false, GLU_NONE);                                                      \
    }                                                                                           \
    MV_SIG(matvec_wide4_##name, MV_ARGS, MV_OUT) {                                              \
        const float *g = nullptr;                                                               \
        const float eps = 0.f;                                                                  \
        MV_CALL(T, 1, 4, false, GLU_NONE);                                                      \
    }                                                                                           \
    MV_SIG(matvec_norm_##name, MV_ARGS, MV_NORM, MV_OUT) { MV_CALL(T, 1, 1, true, GLU_NONE); }  \
    MV_SIG(matvec_norm_tall_##name, MV_ARGS, MV_NORM, MV_OUT) {                                 \
        MV_CALL(T, 4, 1, true, GLU_NONE);                                                       \
    }                                                                                           \
    MV_SIG(matvec_norm_swiglu_##name, MV_ARGS, MV_NORM, MV_OUT) {                               \
        MV_CALL(T, 2, 1, true, GLU_SILU);                                                       \
    }                                                                                           \
    MV_SIG(matvec_norm_geglu_##name, MV_ARGS, MV_NORM, MV_OUT) {                                \
        MV_CALL(T, 2, 1, true, GLU_GELU);                                                       \
    }
GGML_FOR_EACH_TYPE(MATVEC_KERNEL)

// Segmented matrix-vector product: up to three matrices of different types that read the same
// x and write consecutive outputs (q | k | v of a mixed-quant file) in one launch, with an
// optional bias per output (qwen2). Output rows [0, n0) come from W0 (type t0), the next n1
// from W1, the next n2 from W2 (n = 0: unused); a warp per row, as the plain kernel. A warp's
// segment is warp-uniform, so the switch over the type codes costs no divergence; the codes
// are the order of GGML_FOR_EACH_TYPE (cuda/quant_ops.py's _TYPES).
template <bool NORM>
__device__ __forceinline__ void matvec_seg_row(int type, const uint8_t *__restrict__ W, int rows,
                                               int cols, const float *__restrict__ x,
                                               const float *__restrict__ g, float eps,
                                               float *__restrict__ y,
                                               const float *__restrict__ bias, int accumulate,
                                               int row) {
#define MV_SEG_CASE(code, T)                                                                   \
    case code:                                                                                 \
        matvec_gen<ggml::T, 1, 1, NORM, GLU_NONE>(W, rows, cols, x, g, eps, y, bias,            \
                                                   accumulate, row);                            \
        break;
    switch (type) {
        MV_SEG_CASE(0, F32)
        MV_SEG_CASE(1, F16)
        MV_SEG_CASE(2, Q8_0)
        MV_SEG_CASE(3, Q4_0)
        MV_SEG_CASE(4, Q4_1)
        MV_SEG_CASE(5, Q5_0)
        MV_SEG_CASE(6, Q4_K)
        MV_SEG_CASE(7, Q6_K)
        MV_SEG_CASE(8, MXFP4)
        default:
            break;
    }
#undef MV_SEG_CASE
}

#define MV_SEG_ARGS                                                                            \
    int cols, const float *__restrict__ x, const float *__restrict__ g, float eps,             \
        float *__restrict__ y, const float *__restrict__ bias, int accumulate,                 \
        const uint8_t *__restrict__ W0, int t0, int n0, const uint8_t *__restrict__ W1, int t1, \
        int n1, const uint8_t *__restrict__ W2, int t2, int n2

template <bool NORM>
__device__ __forceinline__ void matvec_seg_impl(MV_SEG_ARGS) {
    const int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);  // of the whole group
    // A warp past the group's end has nothing to do; returning here (not idling inside
    // matvec_gen) matters: an empty segment has no row for matvec_gen's clamped preload to
    // read. (A PDL dependent may start once every block has triggered or exited.)
    if (row >= n0 + n1 + n2) return;
    const int s = row < n0 ? 0 : row < n0 + n1 ? 1 : 2;
    const int first = s == 0 ? 0 : s == 1 ? n0 : n0 + n1;  // the segment's first output
    const uint8_t *W = s == 0 ? W0 : s == 1 ? W1 : W2;
    const int type = s == 0 ? t0 : s == 1 ? t1 : t2, rows = s == 0 ? n0 : s == 1 ? n1 : n2;
    matvec_seg_row<NORM>(type, W, rows, cols, x, g, eps, y + first,
                         bias == nullptr ? nullptr : bias + first, accumulate, row - first);
}

#define MV_SEG_PASS cols, x, g, eps, y, bias, accumulate, W0, t0, n0, W1, t1, n1, W2, t2, n2
MV_SIG(matvec_seg, MV_SEG_ARGS) { matvec_seg_impl<false>(MV_SEG_PASS); }
MV_SIG(matvec_seg_norm, MV_SEG_ARGS) { matvec_seg_impl<true>(MV_SEG_PASS); }
