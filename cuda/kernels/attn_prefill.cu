// Prefill attention over the fp16 KV cache: a chunk of causal queries that attend to the cache,
// which already holds the chunk's keys and values (rope_kv_write wrote them). attention.cuh has
// the layout, the grouping, the window rule and the shared online-softmax pieces.
#include "attention.cuh"
#include "pdl.cuh"

// Grid (n_tokens, n_heads), AW*32 threads. Query t sits at position p = *pos_dev + t and sees
// keys first_key(p, window) .. p. sinks: null, or one logit per head (attention.cuh).
__device__ __forceinline__ void prefill_impl(const float *__restrict__ qkv,
                                             const __half *__restrict__ k_cache,
                                             const __half *__restrict__ v_cache,
                                             float *__restrict__ out,
                                             const int *__restrict__ pos_dev, int n_heads,
                                             int n_kv, int max_ctx, float scale, int window,
                                             const float *__restrict__ sinks) {
    __shared__ float s_m[AW + 1], s_l[AW + 1], s_acc[(AW + 1) * HEAD_DIM];
    const int t = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (n_heads / n_kv);
    const int q_dim = n_heads * HEAD_DIM, row_len = q_dim + 2 * n_kv * HEAD_DIM;
    pdl_wait();
    const int p = *pos_dev + t, L = p + 1;
    float q[DPL];
#pragma unroll
    for (int j = 0; j < DPL; ++j)
        q[j] = qkv[(size_t)t * row_len + h * HEAD_DIM + lane * DPL + j] * scale;
    Online st;
    st.m = -INFINITY;
    st.l = 0.f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) st.acc[j] = 0.f;
    const size_t base = (size_t)g * max_ctx * HEAD_DIM;
    scan_keys(st, q, k_cache + base, v_cache + base, first_key(p, window) + warp, L, AW, lane);
    block_merge(st, s_m, s_l, s_acc, lane, warp);
    const float inv = 1.f / (s_l[AW] + sink_term(sinks, h, s_m[AW]));
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x)
        out[(size_t)t * q_dim + h * HEAD_DIM + d] = s_acc[AW * HEAD_DIM + d] * inv;
}

extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_prefill(const float *__restrict__ qkv, const __half *__restrict__ k_cache,
                 const __half *__restrict__ v_cache, float *__restrict__ out,
                 const int *__restrict__ pos_dev, int n_heads, int n_kv, int max_ctx,
                 float scale, int window) {
    prefill_impl(qkv, k_cache, v_cache, out, pos_dev, n_heads, n_kv, max_ctx, scale, window,
                 nullptr);
}

// attn_prefill with gpt-oss's attention sinks, (n_heads,) f32.
extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_prefill_sinks(const float *__restrict__ qkv, const __half *__restrict__ k_cache,
                       const __half *__restrict__ v_cache, float *__restrict__ out,
                       const int *__restrict__ pos_dev, int n_heads, int n_kv, int max_ctx,
                       float scale, int window, const float *__restrict__ sinks) {
    prefill_impl(qkv, k_cache, v_cache, out, pos_dev, n_heads, n_kv, max_ctx, scale, window,
                 sinks);
}
