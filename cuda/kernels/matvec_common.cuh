// Pieces shared by the decode matrix-vector kernels (quant_matvec.cu, quant_matvec_mr.cu):
// the x loads, the slot dot product and the fused RMSNorm's 1 / rms. One definition, so every
// variant computes a row in the same arithmetic order.
#pragma once

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
