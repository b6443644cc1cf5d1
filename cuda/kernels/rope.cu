// Rotary embedding of q and k, fused with the write of k and v into the fp16 KV cache.
//
// qkv (n_tokens, q_dim + 2 * kv_dim) rows [q | k | v] as the fused projection wrote them. Token t
// sits at position pos0 + t, where pos0 is read from device memory (*pos_dev), so the decode
// step's launch has no per-step host argument and can live in a CUDA graph. q is rotated in
// place (attention reads it from qkv); k is rotated and, like v, rounded to fp16 into the cache
// layer (n_kv, max_ctx, head_dim). cos/sin are the (max_ctx, rope_half) fp32 tables computed in
// float64 on the host, exactly those of the numpy reference.
//
// Style: norm (GGML mode 0, llama) rotates adjacent pairs (2i, 2i+1); neox rotates
// (i, i + rope_half). Dimensions past rope_dim = 2 * rope_half are copied unrotated.
// Grid (n_tokens), any blockDim; each thread takes (head, slot) items, slot < head_dim / 2.
#include <cuda_fp16.h>

#include "pdl.cuh"

extern "C" __global__ void rope_kv_write(float *__restrict__ qkv, int n_tokens,
                                         const int *__restrict__ pos_dev,
                                         const float *__restrict__ cos_t,
                                         const float *__restrict__ sin_t,
                                         __half *__restrict__ k_cache, __half *__restrict__ v_cache,
                                         int n_heads, int n_kv, int head_dim, int rope_half,
                                         int max_ctx, int neox) {
    const int t = blockIdx.x;
    pdl_wait();
    const int pos = *pos_dev + t;
    const int q_dim = n_heads * head_dim, kv_dim = n_kv * head_dim;
    float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const int half_d = head_dim / 2;
    const int items = (n_heads + n_kv) * half_d;
    const float *cs = cos_t + (size_t)pos * rope_half, *sn = sin_t + (size_t)pos * rope_half;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
        const int head = it / half_d, i = it - head * half_d;  // head < n_heads: q, else k
        float *v = row + head * head_dim;  // q heads then k heads are contiguous in the row
        int a, b;
        float va, vb;
        if (i < rope_half) {
            a = neox ? i : 2 * i;
            b = neox ? i + rope_half : 2 * i + 1;
            const float x0 = v[a], x1 = v[b], c = cs[i], s = sn[i];
            va = x0 * c - x1 * s;
            vb = x0 * s + x1 * c;
        } else {
            a = 2 * rope_half + 2 * (i - rope_half);
            b = a + 1;
            va = v[a];
            vb = v[b];
        }
        if (head < n_heads) {
            v[a] = va;
            v[b] = vb;
        } else {
            const int kh = head - n_heads;
            __half *kc = k_cache + ((size_t)kh * max_ctx + pos) * head_dim;
            kc[a] = __float2half_rn(va);
            kc[b] = __float2half_rn(vb);
        }
    }
    const float *vrow = row + q_dim + kv_dim;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        const int kh = j / head_dim, d = j - kh * head_dim;
        v_cache[((size_t)kh * max_ctx + pos) * head_dim + d] = __float2half_rn(vrow[j]);
    }
}

// The decode step ends by moving the position on: *pos_dev += 1 (one thread), so a replayed
// graph advances its own position. seq_len (= pos + 1 during the step) is derived by the readers.
extern "C" __global__ void advance_position(int *pos_dev, int by) {
    pdl_wait();
    if (threadIdx.x == 0 && blockIdx.x == 0) *pos_dev += by;
}
