// Matrix-vector product for decode (batch 1): y[r] = sum_c W[r, c] * x[c]  (+ y[r] when accumulate).
//
// W: rows x cols weights as raw GGML blocks (row-major, row_bytes = cols / QK * BYTES).
// One warp per output row; lane i takes the 8-value slots i, i+32, ... of the row, so a warp's
// loads of one step cover consecutive bytes of the row, each weight byte is loaded once, and x is
// read as float4 (cached in L1: every warp of the grid reads the same x). fp32 accumulation, then a
// shuffle reduction. cols must be a multiple of the type's QK (8 for F32/F16); rows are arbitrary.
// No host-side value changes per decode step, so launches are CUDA-graph capturable.
#include "ggml_blocks.cuh"

#ifndef MV_WARPS
#define MV_WARPS 4  // rows (warps) per block of threads
#endif

template <class T>
__device__ __forceinline__ void matvec_impl(const uint8_t *__restrict__ W, int rows, int cols,
                                            const float *__restrict__ x, float *__restrict__ y,
                                            int accumulate) {
    constexpr int NS = T::QK / 8;  // slots per block
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int nblk = cols / T::QK;
    const uint8_t *wr = W + (size_t)row * nblk * T::BYTES;
    const int nslot = nblk * NS;
    float acc = 0.f;
#pragma unroll 4
    for (int s = lane; s < nslot; s += 32) {
        const int b = s / NS, k = s % NS;
        float4 a, c;
        T::slot8(wr + (size_t)b * T::BYTES, k, a, c);
        const float *xb = x + b * T::QK;
        const float4 xa = *reinterpret_cast<const float4 *>(xb + T::P0(k));
        const float4 xc = *reinterpret_cast<const float4 *>(xb + T::P1(k));
        acc += a.x * xa.x + a.y * xa.y + a.z * xa.z + a.w * xa.w;
        acc += c.x * xc.x + c.y * xc.y + c.z * xc.z + c.w * xc.w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

#define MATVEC_KERNEL(T, name)                                                                 \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                \
        matvec_##name(const uint8_t *__restrict__ W, int rows, int cols,                       \
                      const float *__restrict__ x, float *__restrict__ y, int accumulate) {    \
        matvec_impl<ggml::T>(W, rows, cols, x, y, accumulate);                                 \
    }
GGML_FOR_EACH_TYPE(MATVEC_KERNEL)
