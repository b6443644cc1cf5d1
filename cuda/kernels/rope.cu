// Rotary embedding of q and k, fused with the write of k and v into the fp16 KV cache, and with
// gemma3's per-head RMSNorm of q and k before the rotation.
//
// qkv (n_tokens, q_dim + 2 * kv_dim) rows [q | k | v] as the projection wrote them. Token t
// sits at position pos0 + t, where pos0 is read from device memory (*pos_dev), so the decode
// step's launch has no per-step host argument and can live in a CUDA graph. q is rotated in
// place (attention reads it from qkv); k is rotated and, like v, rounded to fp16 into the cache
// layer (n_kv, max_ctx, head_dim). cos/sin are (max_ctx, rope_half) fp32 tables computed in
// float64 on the host, exactly those of the numpy reference; the caller passes the layer's own
// (gemma3 rotates its sliding-window layers with another base than its global ones).
//
// Style: norm (GGML mode 0, llama) rotates adjacent pairs (2i, 2i+1); neox rotates
// (i, i + rope_half). Dimensions past rope_dim = 2 * rope_half are copied unrotated.
// q_norm / k_norm: null, or head_dim weights: each head is first replaced by
// v / sqrt(mean(v^2) + eps) * w (reduced in a fixed order: the same result for any n_tokens).
// Grid (n_tokens), ROPE_WARPS * 32 threads; a warp takes one head at a time, staged in shared
// memory so any rotation partner can be read; head_dim at most ROPE_MAX_DIM.
#include <cuda_fp16.h>

#include "pdl.cuh"

#define ROPE_WARPS 4
#define ROPE_MAX_DIM 256

extern "C" __global__ void __launch_bounds__(ROPE_WARPS * 32)
    rope_kv_write(float *__restrict__ qkv, int n_tokens, const int *__restrict__ pos_dev,
                  const float *__restrict__ cos_t, const float *__restrict__ sin_t,
                  __half *__restrict__ k_cache, __half *__restrict__ v_cache, int n_heads,
                  int n_kv, int head_dim, int rope_half, int max_ctx, int neox,
                  const float *__restrict__ q_norm, const float *__restrict__ k_norm, float eps) {
    __shared__ float buf[ROPE_WARPS][ROPE_MAX_DIM];
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    pdl_wait();
    const int pos = *pos_dev + t;
    const int q_dim = n_heads * head_dim, kv_dim = n_kv * head_dim;
    float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const float *cs = cos_t + (size_t)pos * rope_half, *sn = sin_t + (size_t)pos * rope_half;
    float *hb = buf[warp];
    for (int head = warp; head < n_heads + n_kv; head += ROPE_WARPS) {  // q heads, then k heads
        float *v = row + head * head_dim;  // q heads then k heads are contiguous in the row
        const float *w = head < n_heads ? q_norm : k_norm;
        float ss = 0.f;
        for (int c = lane; c < head_dim; c += 32) {
            const float x = v[c];
            hb[c] = x;
            ss += x * x;
        }
        if (w != nullptr) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            const float inv = rsqrtf(ss / (float)head_dim + eps);
            for (int c = lane; c < head_dim; c += 32) hb[c] = hb[c] * inv * w[c];
        }
        __syncwarp();
        for (int c = lane; c < head_dim; c += 32) {
            const float x = hb[c];
            float r = x;
            if (c < 2 * rope_half) {
                const bool first = neox ? c < rope_half : (c & 1) == 0;
                const int i = neox ? (first ? c : c - rope_half) : c >> 1;
                const int partner = neox ? (first ? c + rope_half : c - rope_half) : c ^ 1;
                const float y = hb[partner];
                // (a, b) -> (a cos - b sin, a sin + b cos), a the first of the pair
                r = first ? x * cs[i] - y * sn[i] : y * sn[i] + x * cs[i];
            }
            if (head < n_heads) {
                v[c] = r;
            } else {
                const int kh = head - n_heads;
                k_cache[((size_t)kh * max_ctx + pos) * head_dim + c] = __float2half_rn(r);
            }
        }
        __syncwarp();  // the head's partners are read before the next head overwrites hb
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
