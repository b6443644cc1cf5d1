// Small element-wise kernels: the gated activations (SwiGLU, GELU-tanh GLU), in-place add, and
// the residency checksum.
//
// All take sizes as arguments and device pointers only, so they are graph capturable.
#include <stdint.h>

#include "activations.cuh"
#include "pdl.cuh"  // swiglu and add_inplace may run in a PDL decode step

// gate_up (n, 2 * d_ff) = [gate | up] -> h (n, d_ff) = act(gate) * up (activations.cuh: the
// same function as the fused decode matvec). Grid-stride, any sizes.
template <int GLU>
__device__ __forceinline__ void glu_impl(const float *__restrict__ gate_up, float *__restrict__ h,
                                         int d_ff, int n) {
    pdl_wait();
    const long total = (long)n * d_ff;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const long t = i / d_ff, j = i - t * d_ff;
        const float g = __ldcg(gate_up + t * 2 * d_ff + j);
        const float u = __ldcg(gate_up + t * 2 * d_ff + d_ff + j);
        h[i] = glu_act<GLU>(g) * u;
    }
}

extern "C" __global__ void swiglu(const float *__restrict__ gate_up, float *__restrict__ h,
                                  int d_ff, int n) {
    glu_impl<GLU_SILU>(gate_up, h, d_ff, n);
}

extern "C" __global__ void geglu(const float *__restrict__ gate_up, float *__restrict__ h,
                                 int d_ff, int n) {
    glu_impl<GLU_GELU>(gate_up, h, d_ff, n);
}

// x[i] += y[i] for i < n.
extern "C" __global__ void add_inplace(float *__restrict__ x, const float *__restrict__ y, int n) {
    pdl_wait();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] += y[i];
}

// Order-independent checksum of n_words 32-bit words: sum_i word_i * (2 i + 1) mod 2^64.
// Integer arithmetic, so the atomic accumulation gives the same value whatever the schedule;
// the host computes the same sum with numpy uint64 (cuda/residency.py). *out must start at 0.
extern "C" __global__ void checksum_words(const uint32_t *__restrict__ p, long n_words,
                                          unsigned long long *out) {
    unsigned long long acc = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n_words;
         i += (long)gridDim.x * blockDim.x)
        acc += (unsigned long long)p[i] * (unsigned long long)(2 * i + 1);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, acc);
}
