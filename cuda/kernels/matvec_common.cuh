// Pieces shared by the decode matrix-vector kernels (quant_matvec.cu, quant_matvec_mr.cu):
// the x loads, the slot dot product, the fused RMSNorm's 1 / rms, the row reduction and the
// output epilogue. One definition, so every variant computes a row in the same arithmetic order.
#pragma once
#include "activations.cuh"

// One float4 of x. x is written by the kernel before, so not with the .nc load the compiler
// would pick for a const __restrict__ pointer (pdl.cuh): ld.global.ca, which PTX makes
// coherent after griddepcontrol.wait and which keeps x in L1 (every warp of the block reads
// it; L2-only loads by every warp hammer the few L2 lines that hold x: measured 2x slower).
__device__ __forceinline__ float4 x4(const float *x, int c) {
    return __ldca(reinterpret_cast<const float4 *>(x + c));
}

// x (times g, with NORM) at the two quads of one slot: columns c0 .. c0+3 and c1 .. c1+3
template <bool NORM>
__device__ __forceinline__ void x_slot(const float *x, const float *__restrict__ g, int c0, int c1,
                                       float4 &xa, float4 &xc) {
    xa = x4(x, c0);
    xc = x4(x, c1);
    if (NORM) {
        const float4 ga = *reinterpret_cast<const float4 *>(g + c0);
        const float4 gc = *reinterpret_cast<const float4 *>(g + c1);
        xa = make_float4(xa.x * ga.x, xa.y * ga.y, xa.z * ga.z, xa.w * ga.w);
        xc = make_float4(xc.x * gc.x, xc.y * gc.y, xc.z * gc.z, xc.w * gc.w);
    }
}

// x_slot in two halves, for the batched kernels: g's two quads once per slot (g_slot), then
// each token's x times them (x_slot_g): the very products x_slot makes.
__device__ __forceinline__ void g_slot(const float *__restrict__ g, int c0, int c1, float4 &ga,
                                       float4 &gc) {
    ga = *reinterpret_cast<const float4 *>(g + c0);
    gc = *reinterpret_cast<const float4 *>(g + c1);
}

template <bool NORM>
__device__ __forceinline__ void x_slot_g(const float *x, float4 ga, float4 gc, int c0, int c1,
                                         float4 &xa, float4 &xc) {
    xa = x4(x, c0);
    xc = x4(x, c1);
    if (NORM) {
        xa = make_float4(xa.x * ga.x, xa.y * ga.y, xa.z * ga.z, xa.w * ga.w);
        xc = make_float4(xc.x * gc.x, xc.y * gc.y, xc.z * gc.z, xc.w * gc.w);
    }
}

__device__ __forceinline__ float dot8(float4 a, float4 c, float4 xa, float4 xc) {
    return a.x * xa.x + a.y * xa.y + a.z * xa.z + a.w * xa.w + c.x * xc.x + c.y * xc.y +
           c.z * xc.z + c.w * xc.w;
}

// 1 / sqrt(mean(x^2) + eps) over x[0, cols), computed by one warp (every lane gets it); fixed
// order: lane-strided float4 sums, then a butterfly.
__device__ __forceinline__ float rms_inv(const float *x, int cols, float eps, int lane) {
    float ss = 0.f;
    for (int c = 4 * lane; c < cols; c += 128) {
        const float4 v = x4(x, c);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    return rsqrtf(ss / (float)cols + eps);
}

// The sums of R rows: a butterfly within each warp, then (WPR > 1) the row's warps' partials in
// warp order, met in shared memory (WPB: warps per block). The totals end in lane 0 of the
// group's first warp (sub == 0); every thread of the block must call this (a barrier).
template <int R, int WPR, int WPB>
__device__ __forceinline__ void reduce_rows(float (&acc)[R], int lane, int warp, int sub) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
    if (WPR > 1) {
        __shared__ float part[WPB][R];
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < R; ++r) part[warp][r] = acc[r];
        __syncthreads();
        if (sub == 0 && lane == 0)
#pragma unroll
            for (int r = 0; r < R; ++r)
                for (int j = 1; j < WPR; ++j) acc[r] += part[warp + j][r];
    }
}

// The group's P outputs from row0 on (those < rows): acc * inv (+ bias) or, for a GLU,
// act(gate * inv) * (up * inv) with the gate sums in acc[0, P) and the up sums in acc[P, 2P);
// plus the old y when accumulating.
template <int GLU, int P, int R>
__device__ __forceinline__ void store_rows(const float (&acc)[R], float inv, float *y,
                                           const float *__restrict__ bias, int accumulate,
                                           int row0, int rows) {
    static_assert(R == (GLU == GLU_NONE ? P : 2 * P), "a GLU has a gate and an up sum each");
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int out = row0 + p;
        if (out < rows) {
            float v;
            if constexpr (GLU != GLU_NONE) {
                v = glu_act<GLU>(acc[p] * inv) * (acc[P + p] * inv);
            } else {
                v = acc[p] * inv;
                if (bias != nullptr) v += bias[out];  // a weight: never written by a kernel
            }
            y[out] = accumulate ? __ldcg(y + out) + v : v;
        }
    }
}
