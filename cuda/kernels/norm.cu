// RMSNorm over rows: y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w.
//
// One block per row (grid = n_rows); any blockDim that is a multiple of 32 (<= 1024) and any
// n_cols. fp32 throughout, like the numpy reference (runtime/numpy_layers.rms_norm). x and y may
// be the same buffer. No per-step host values: graph capturable. PDL-safe (pdl.cuh).
#include "pdl.cuh"

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void rms_norm(const float *__restrict__ x, const float *__restrict__ w,
                                    float *__restrict__ y, int n_cols, float eps) {
    __shared__ float partial[32];
    pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * n_cols;
    float *yr = y + (size_t)blockIdx.x * n_cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) ss += __ldcg(xr + c) * __ldcg(xr + c);
    ss = warp_sum(ss);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        float v = lane < nw ? partial[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) partial[0] = rsqrtf(v / (float)n_cols + eps);
    }
    __syncthreads();
    const float inv = partial[0];
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) yr[c] = __ldcg(xr + c) * inv * w[c];
}
