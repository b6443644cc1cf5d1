// RMSNorm over rows: y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w, and the post-norm
// residual add of gemma3 (RMSNorm of a projection's output before it joins the residual).
//
// One block per row (grid = n_rows); any blockDim that is a multiple of 32 (<= 1024) and any
// n_cols. fp32 throughout, like the numpy reference (runtime/numpy_layers.rms_norm); each row is
// reduced in the same fixed order whatever the number of rows (batch invariant). No per-step host
// values: graph capturable. PDL-safe (pdl.cuh).
#include "pdl.cuh"

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// 1 / sqrt(sum / n_cols + eps) of the block's partial sums `ss` (every thread gets it).
__device__ float block_inv_rms(float ss, int n_cols, float eps) {
    __shared__ float partial[32];
    ss = warp_sum(ss);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // every thread has read the previous call's result
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        float v = lane < nw ? partial[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) partial[0] = rsqrtf(v / (float)n_cols + eps);
    }
    __syncthreads();
    return partial[0];
}

extern "C" __global__ void rms_norm(const float *__restrict__ x, const float *__restrict__ w,
                                    float *__restrict__ y, int n_cols, float eps) {
    pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * n_cols;
    float *yr = y + (size_t)blockIdx.x * n_cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) ss += __ldcg(xr + c) * __ldcg(xr + c);
    const float inv = block_inv_rms(ss, n_cols, eps);
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) yr[c] = __ldcg(xr + c) * inv * w[c];
}

// x[t] += rmsnorm(y[t]) * w_post (gemma3's post_attention_norm / post_ffw_norm), then, when xn
// is not null, xn[t] = rmsnorm(x[t]) * w_next: the next projection's input norm in the same
// launch (prefill). xn may be y (each thread reads and writes only its own columns); x may not.
extern "C" __global__ void add_rms_norm(const float *y, const float *__restrict__ w_post,
                                        float *x, const float *__restrict__ w_next, float *xn,
                                        int n_cols, float eps) {
    pdl_wait();
    const size_t off = (size_t)blockIdx.x * n_cols;
    const float *yr = y + off;
    float *xr = x + off;
    float ss = 0.f;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) ss += __ldcg(yr + c) * __ldcg(yr + c);
    const float inv = block_inv_rms(ss, n_cols, eps);
    float ss_x = 0.f;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) {
        const float v = __ldcg(xr + c) + __ldcg(yr + c) * inv * w_post[c];
        xr[c] = v;
        ss_x += v * v;
    }
    if (xn == nullptr) return;  // uniform over the grid
    const float inv_x = block_inv_rms(ss_x, n_cols, eps);
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) xn[off + c] = xr[c] * inv_x * w_next[c];
}
