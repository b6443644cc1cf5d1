// Embedding gather: out[t, :] = dequantized row ids[t] of W times scale (n_tokens x n_cols
// float32). scale is 1 for most models; gemma3 multiplies its embeddings by sqrt(d_model).
//
// Grid (ceil(slots / threads), n_tokens): each thread decodes one 8-value slot of the row and
// writes two float4. ids live in device memory (int32), so a decode step's launch is graph
// capturable. For F32/F16 rows the "block" is 8 values: n_cols must be a multiple of 8 (the
// plain-copy kernel embed_plain_* below handles any n_cols). PDL: see pdl.cuh.
#include "ggml_blocks.cuh"
#include "pdl.cuh"

template <class T>
__device__ __forceinline__ void embed_impl(const uint8_t *__restrict__ W, int n_cols,
                                           const int *__restrict__ ids, float *__restrict__ out,
                                           float scale) {
    constexpr int NS = T::QK / 8;
    const int t = blockIdx.y;
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    const int nblk = n_cols / T::QK;
    pdl_trigger();  // the decode step's first kernel: the next one may start prefetching
    pdl_wait();
    if (s >= nblk * NS) return;
    const int b = s / NS, k = s % NS;
    const uint8_t *blk = W + ((size_t)ids[t] * nblk + b) * T::BYTES;
    float4 a, c;
    T::slot8(blk, k, a, c);
    float *o = out + (size_t)t * n_cols + b * T::QK;
    *reinterpret_cast<float4 *>(o + T::P0(k)) =
        make_float4(a.x * scale, a.y * scale, a.z * scale, a.w * scale);
    *reinterpret_cast<float4 *>(o + T::P1(k)) =
        make_float4(c.x * scale, c.y * scale, c.z * scale, c.w * scale);
}

#define EMBED_KERNEL(T, name)                                                                  \
    extern "C" __global__ void embed_##name(const uint8_t *__restrict__ W, int n_cols,         \
                                            const int *__restrict__ ids,                       \
                                            float *__restrict__ out, float scale) {            \
        embed_impl<ggml::T>(W, n_cols, ids, out, scale);                                       \
    }
GGML_FOR_EACH_TYPE(EMBED_KERNEL)

// Any n_cols for plain float rows: one thread per value.
extern "C" __global__ void embed_plain_f32(const float *__restrict__ W, int n_cols,
                                           const int *__restrict__ ids, float *__restrict__ out,
                                           float scale) {
    const int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    pdl_wait();
    if (c < n_cols) out[(size_t)t * n_cols + c] = W[(size_t)ids[t] * n_cols + c] * scale;
}
extern "C" __global__ void embed_plain_f16(const __half *__restrict__ W, int n_cols,
                                           const int *__restrict__ ids, float *__restrict__ out,
                                           float scale) {
    const int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    pdl_wait();
    if (c < n_cols)
        out[(size_t)t * n_cols + c] = __half2float(W[(size_t)ids[t] * n_cols + c]) * scale;
}
