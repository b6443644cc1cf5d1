// Attention over the fp16 KV cache, the pieces shared by decode (attention.cu: one query per
// head, split over the sequence) and prefill (attn_prefill.cu: a chunk of causal queries that
// attend to the cache, which already holds the chunk).
//
// Grouped-query: query head h reads kv head h / (n_heads / n_kv) (llama.cpp's grouping).
// Cache layer layout (n_kv, max_ctx, HEAD_DIM) fp16; queries come from the fused qkv rows
// (n_tokens, q_dim + 2 * kv_dim) after rope_kv_write; outputs (n_tokens, n_heads * HEAD_DIM) fp32.
// Each warp runs an online softmax (running max m, sum l, weighted V sum) over its share of the
// keys; lane i holds dims i*DPL .. i*DPL+DPL-1 of q, k, v, so a warp reads a key row as one
// coalesced span. The position comes from device memory (*pos_dev = tokens before this pass),
// so the decode launch is graph capturable.
// Window (gemma3's sliding-window layers): a query at position t sees the key at position p iff
// 0 <= t - p < window; window 0 means every earlier key (full causal attention).
// Sinks (gpt-oss; the *_sinks kernels): head h's softmax row has one more logit, sinks[h], which
// weighs no value: the output is acc / (l + exp(sinks[h] - m)) for the row's max m and sum l.
#pragma once
#include <cuda_fp16.h>

#include "pdl.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define DPL (HEAD_DIM / 32)  // dims per lane: HEAD_DIM must be a multiple of 32, at most 256
#define AW 4                 // warps per block

static_assert(HEAD_DIM % 32 == 0 && HEAD_DIM <= 256, "HEAD_DIM must be a multiple of 32 <= 256");

struct Online {  // one warp's running softmax state; acc holds this lane's DPL dims
    float m, l, acc[DPL];
};

__device__ __forceinline__ void load_row(const __half *p, float *v) {
#pragma unroll
    for (int j = 0; j < DPL; ++j) v[j] = __half2float(p[j]);
}

__device__ __forceinline__ void fetch_key(const __half *kc, const __half *vc, int t, int lane,
                                          int cur, const float *cur_k, const float *cur_v,
                                          float *k, float *v) {
    if (t == cur) {
#pragma unroll
        for (int j = 0; j < DPL; ++j) k[j] = cur_k[j], v[j] = cur_v[j];
    } else {
        load_row(kc + (size_t)t * HEAD_DIM + lane * DPL, k);
        load_row(vc + (size_t)t * HEAD_DIM + lane * DPL, v);
    }
}

__device__ __forceinline__ float warp_dot(const float *q, const float *k) {
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) dot += q[j] * k[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    return dot;
}

__device__ __forceinline__ void fold(Online &st, float dot, const float *v) {
    const float m_new = fmaxf(st.m, dot);
    const float corr = expf(st.m - m_new);  // st.m = -inf on the first key: corr = 0
    const float p = expf(dot - m_new);
    st.l = st.l * corr + p;
#pragma unroll
    for (int j = 0; j < DPL; ++j) st.acc[j] = st.acc[j] * corr + p * v[j];
    st.m = m_new;
}

// Fold keys t0, t0 + step, ... < t1 of kv head row block kc/vc into st (one warp), two keys per
// round so their loads are in flight together. Key `cur` (if any) comes from registers (cur_k,
// cur_v): the fused decode step writes it to the cache in the same launch, so no block may read
// it back from there.
__device__ __forceinline__ void scan_keys(Online &st, const float *q, const __half *kc,
                                          const __half *vc, int t0, int t1, int step, int lane,
                                          int cur = -1, const float *cur_k = nullptr,
                                          const float *cur_v = nullptr) {
    int t = t0;
    for (; t + step < t1; t += 2 * step) {
        float k0[DPL], v0[DPL], k1[DPL], v1[DPL];
        fetch_key(kc, vc, t, lane, cur, cur_k, cur_v, k0, v0);
        fetch_key(kc, vc, t + step, lane, cur, cur_k, cur_v, k1, v1);
        const float d0 = warp_dot(q, k0), d1 = warp_dot(q, k1);
        fold(st, d0, v0);
        fold(st, d1, v1);
    }
    if (t < t1) {
        float k0[DPL], v0[DPL];
        fetch_key(kc, vc, t, lane, cur, cur_k, cur_v, k0, v0);
        fold(st, warp_dot(q, k0), v0);
    }
}

// The sink's share of a softmax denominator whose scores have max m (0 without sinks). A sink
// far above every score makes it inf and the output 0, the limit.
__device__ __forceinline__ float sink_term(const float *sinks, int h, float m) {
    return sinks == nullptr ? 0.f : expf(sinks[h] - m);
}

__device__ __forceinline__ float weight_of(float m, float m_max) {
    return m == -INFINITY ? 0.f : expf(m - m_max);  // an empty share weighs nothing
}

// Merge the AW warps' states of this block into (m, l, acc[HEAD_DIM]) in shared memory.
__device__ void block_merge(const Online &st, float *s_m, float *s_l, float *s_acc, int lane,
                            int warp) {
    if (lane == 0) {
        s_m[warp] = st.m;
        s_l[warp] = st.l;
    }
#pragma unroll
    for (int j = 0; j < DPL; ++j) s_acc[warp * HEAD_DIM + lane * DPL + j] = st.acc[j];
    __syncthreads();
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < AW; ++w) m_max = fmaxf(m_max, s_m[w]);
    float l = 0.f;
#pragma unroll
    for (int w = 0; w < AW; ++w) l += s_l[w] * weight_of(s_m[w], m_max);
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < AW; ++w) a += s_acc[w * HEAD_DIM + d] * weight_of(s_m[w], m_max);
        s_acc[AW * HEAD_DIM + d] = a;  // the merged row sits after the per-warp rows
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        s_m[AW] = m_max;
        s_l[AW] = l;
    }
    __syncthreads();
}

// The rope coefficients of the DPL dims this lane holds (dims lane*DPL + j of one head) at one
// position row cs/sn: dims past 2 * rope_half get (1, 0), which leaves them as they are.
__device__ __forceinline__ void rope_coefs(const float *cs, const float *sn, int rope_half,
                                           int neox, int lane, float *c, float *s) {
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
        const int d = lane * DPL + j;
        const bool in = d < 2 * rope_half;
        const int i = in ? (neox ? (d < rope_half ? d : d - rope_half) : d >> 1) : 0;
        c[j] = in ? cs[i] : 1.f;
        s[j] = in ? sn[i] : 0.f;
    }
}

// Rotate the DPL dims this lane holds by the coefficients of rope_coefs.
// norm: pairs (2i, 2i+1); neox: (i, i + rope_half), which needs rope_half % DPL == 0 (the
// partner then sits at the same j of another lane).
__device__ __forceinline__ void rotate_lane(float *v, const float *c, const float *s,
                                            int rope_half, int neox, int lane) {
    float partner[DPL];
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
        const int d = lane * DPL + j;
        int pd = neox ? (d < rope_half ? d + rope_half : d - rope_half) : (d ^ 1);
        pd = min(pd, HEAD_DIM - 1);
        if (!neox && DPL >= 2)
            partner[j] = v[j ^ 1];  // the pair sits in this lane
        else
            partner[j] = __shfl_sync(0xffffffffu, v[j], pd / DPL);
    }
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
        const int d = lane * DPL + j;
        const bool first = neox ? d < rope_half : (d & 1) == 0;
        v[j] = first ? v[j] * c[j] - partner[j] * s[j] : partner[j] * s[j] + v[j] * c[j];
    }
}

// The first key a query at position p sees (keys first_key(p) .. p).
__device__ __forceinline__ int first_key(int p, int window) {
    return window > 0 ? max(0, p - window + 1) : 0;
}

// Per-head RMSNorm of the DPL dims this lane holds (the warp holds one head): gemma3's q / k
// norm, v = v / sqrt(mean(v^2) + eps) * w[dim], w of length HEAD_DIM.
__device__ __forceinline__ void head_rms_norm(float *v, const float *__restrict__ w, float eps,
                                              int lane) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) ss += v[j] * v[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = rsqrtf(ss / (float)HEAD_DIM + eps);
#pragma unroll
    for (int j = 0; j < DPL; ++j) v[j] = v[j] * inv * w[lane * DPL + j];
}
