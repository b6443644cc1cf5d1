// Attention over the fp16 KV cache: decode (one query per head, split over the sequence) and
// prefill (a chunk of causal queries that attend to the cache, which already holds the chunk).
//
// Grouped-query: query head h reads kv head h / (n_heads / n_kv) (llama.cpp's grouping).
// Cache layer layout (n_kv, max_ctx, HEAD_DIM) fp16; queries come from the fused qkv rows
// (n_tokens, q_dim + 2 * kv_dim) after rope_kv_write; outputs (n_tokens, n_heads * HEAD_DIM) fp32.
// Each warp runs an online softmax (running max m, sum l, weighted V sum) over its share of the
// keys; lane i holds dims i*DPL .. i*DPL+DPL-1 of q, k, v, so a warp reads a key row as one
// coalesced span. The position comes from device memory (*pos_dev = tokens before this pass),
// so the decode launch is graph capturable.
#include <cuda_fp16.h>

#include "pdl.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define DPL (HEAD_DIM / 32)  // dims per lane: HEAD_DIM must be a multiple of 32, at most 256
#define AW 4                 // warps per block
#ifndef ATTN_PRE
#define ATTN_PRE 1  // 0: wait for the previous kernel (PDL) before loading any key
#endif
#define MAX_SPLITS 32        // decode splits per head at most (cuda/forward.py's MAX_SPLITS)

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

// KPRE keys per warp (AW * KPRE = 32 per block: the split size cuda/forward.py aims at, so
// contexts up to 1024 keys need no more) are loaded into registers before the PDL wait, and
// scored together: their loads overlap the kernel before, and the warp reductions of their
// dot products interleave. Keys past those (longer splits) go through scan_keys.
#define KPRE (DPL >= 8 ? 2 : 16 / DPL)

// Fold KPRE keys (k, v; valid[i] false for keys outside the share) into st at once.
__device__ __forceinline__ void fold_batch(Online &st, const float *q, float (*k)[DPL],
                                           float (*v)[DPL], const bool *valid) {
    float d[KPRE];
#pragma unroll
    for (int i = 0; i < KPRE; ++i) {
        d[i] = 0.f;
#pragma unroll
        for (int j = 0; j < DPL; ++j) d[i] += q[j] * k[i][j];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int i = 0; i < KPRE; ++i) d[i] += __shfl_xor_sync(0xffffffffu, d[i], o);
    float m_new = st.m;
#pragma unroll
    for (int i = 0; i < KPRE; ++i) m_new = valid[i] ? fmaxf(m_new, d[i]) : m_new;
    if (m_new == -INFINITY) return;  // no key yet (warp-uniform)
    const float corr = expf(st.m - m_new);  // st.m = -inf: corr = 0
    st.l *= corr;
#pragma unroll
    for (int j = 0; j < DPL; ++j) st.acc[j] *= corr;
#pragma unroll
    for (int i = 0; i < KPRE; ++i) {
        const float p = valid[i] ? expf(d[i] - m_new) : 0.f;
        st.l += p;
#pragma unroll
        for (int j = 0; j < DPL; ++j) st.acc[j] += p * v[i][j];
    }
    st.m = m_new;
}

// Decode: grid (n_heads, n_splits), AW*32 threads. Split s of head h takes keys
// [s * chunk, (s + 1) * chunk) of the L = *pos_dev + 1 keys, chunk = ceil(L / n_splits). With
// several splits each block leaves (m, l, acc) in part[(h * n_splits + s) * (HEAD_DIM + 2)], and
// the last block of a head to finish (counted in counters[h], reset to 0 after) merges them.
// ROPE (the fused decode step): qkv holds q, k, v before the rotary embedding; every block
// rotates its q and the new key itself, uses the new key and value from registers (rounded to
// fp16, as the cache holds them), and block (first head of the kv group, split 0) stores them in
// the cache at *pos_dev. This replaces the separate rope_kv_write launch.
template <bool ROPE>
__device__ __forceinline__ void decode_impl(const float *__restrict__ qkv, __half *k_cache,
                                            __half *v_cache, float *__restrict__ out,
                                            const int *__restrict__ pos_dev, float *part,
                                            unsigned *counters, const float *__restrict__ cos_t,
                                            const float *__restrict__ sin_t, int n_heads, int n_kv,
                                            int max_ctx, int rope_half, int neox, float scale) {
    // s_m, s_l hold the warps' states (AW + 1), later the splits' (MAX_SPLITS)
    __shared__ float s_m[MAX_SPLITS], s_l[MAX_SPLITS], s_w[MAX_SPLITS];
    __shared__ float s_acc[(AW + 1) * HEAD_DIM];
    __shared__ unsigned s_ticket;
    const int h = blockIdx.x, s = blockIdx.y, n_splits = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = n_heads / n_kv, g = h / group;
    pdl_trigger();
    if (!ATTN_PRE) pdl_wait();
    // Before waiting for the qkv product (PDL, pdl.cuh): the position and the cached keys of
    // earlier steps are final, so this warp's first KPRE keys (t < pos) and the rope row are
    // loaded now, and the rest of its share is prefetched into L2.
    const int pos = *pos_dev, L = pos + 1;
    const int chunk = (L + n_splits - 1) / n_splits;
    const int t0 = s * chunk, t1 = min(L, t0 + chunk);
    const size_t base = (size_t)g * max_ctx * HEAD_DIM;
    const __half *kc = k_cache + base, *vc = v_cache + base;
    float pk[KPRE][DPL], pv[KPRE][DPL];
    bool valid[KPRE];
#pragma unroll
    for (int i = 0; i < KPRE; ++i) {
        const int t = t0 + warp + AW * i;
        valid[i] = t < t1;
        const int tc = t < min(t1, pos) ? t : 0;  // clamped: no branch around the loads
        load_row(kc + (size_t)tc * HEAD_DIM + lane * DPL, pk[i]);
        load_row(vc + (size_t)tc * HEAD_DIM + lane * DPL, pv[i]);
    }
    for (int t = t0 + warp + AW * (KPRE + lane); t < min(t1, pos); t += AW * 32) {
#pragma unroll
        for (int b = 0; b < HEAD_DIM * 2; b += 128) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(kc + (size_t)t * HEAD_DIM + b / 2));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(vc + (size_t)t * HEAD_DIM + b / 2));
        }
    }
    float rc[DPL], rs[DPL];
    if (ROPE)
        rope_coefs(cos_t + (size_t)pos * rope_half, sin_t + (size_t)pos * rope_half, rope_half,
                   neox, lane, rc, rs);
    pdl_wait();
    float q[DPL], ck[DPL], cv[DPL];
#pragma unroll
    for (int j = 0; j < DPL; ++j) q[j] = __ldcg(qkv + h * HEAD_DIM + lane * DPL + j);
    if (ROPE) {
        const int kv_off = n_heads * HEAD_DIM + g * HEAD_DIM + lane * DPL;
#pragma unroll
        for (int j = 0; j < DPL; ++j) {
            ck[j] = __ldcg(qkv + kv_off + j);
            cv[j] = __ldcg(qkv + kv_off + n_kv * HEAD_DIM + j);
        }
        rotate_lane(q, rc, rs, rope_half, neox, lane);
        rotate_lane(ck, rc, rs, rope_half, neox, lane);
        const bool writer = h % group == 0 && s == 0 && warp == 0;
#pragma unroll
        for (int j = 0; j < DPL; ++j) {
            const __half hk = __float2half_rn(ck[j]), hv = __float2half_rn(cv[j]);
            if (writer) {
                k_cache[base + (size_t)pos * HEAD_DIM + lane * DPL + j] = hk;
                v_cache[base + (size_t)pos * HEAD_DIM + lane * DPL + j] = hv;
            }
            ck[j] = __half2float(hk);
            cv[j] = __half2float(hv);
        }
    } else {  // the previous kernel (rope_kv_write) wrote key pos: read it only now
        load_row(kc + (size_t)pos * HEAD_DIM + lane * DPL, ck);
        load_row(vc + (size_t)pos * HEAD_DIM + lane * DPL, cv);
    }
#pragma unroll
    for (int i = 0; i < KPRE; ++i) {  // the new key, if in this warp's batch
        if (t0 + warp + AW * i == pos) {
#pragma unroll
            for (int j = 0; j < DPL; ++j) pk[i][j] = ck[j], pv[i][j] = cv[j];
        }
    }
#pragma unroll
    for (int j = 0; j < DPL; ++j) q[j] *= scale;
    Online st;
    st.m = -INFINITY;
    st.l = 0.f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) st.acc[j] = 0.f;
    fold_batch(st, q, pk, pv, valid);
    scan_keys(st, q, kc, vc, t0 + warp + AW * KPRE, t1, AW, lane, pos, ck, cv);
    block_merge(st, s_m, s_l, s_acc, lane, warp);
    if (n_splits == 1) {
        const float inv = 1.f / s_l[AW];
        for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x)
            out[h * HEAD_DIM + d] = s_acc[AW * HEAD_DIM + d] * inv;
        return;
    }
    float *mine = part + ((size_t)h * n_splits + s) * (HEAD_DIM + 2);
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) mine[2 + d] = s_acc[AW * HEAD_DIM + d];
    if (threadIdx.x == 0) {
        mine[0] = s_m[AW];
        mine[1] = s_l[AW];
    }
    __threadfence();  // our partial is visible device-wide before we take a ticket
    __syncthreads();
    if (threadIdx.x == 0) s_ticket = atomicAdd(&counters[h], 1u);
    __syncthreads();
    if (s_ticket != (unsigned)n_splits - 1) return;
    __threadfence();  // the last block sees every other block's partial
    // merge: the split maxima and sums into shared memory first, then every dim's weighted sum
    // with all its loads independent (L2 reads: __ldcg, nothing stale from L1)
    const float *all = part + (size_t)h * n_splits * (HEAD_DIM + 2);
    if (threadIdx.x < n_splits) {
        s_m[threadIdx.x] = __ldcg(all + threadIdx.x * (HEAD_DIM + 2));
        s_l[threadIdx.x] = __ldcg(all + threadIdx.x * (HEAD_DIM + 2) + 1);
    }
    __syncthreads();
    float m_max = -INFINITY;
    for (int i = 0; i < n_splits; ++i) m_max = fmaxf(m_max, s_m[i]);
    __syncthreads();
    float l = 0.f;
    if (threadIdx.x < n_splits) s_w[threadIdx.x] = weight_of(s_m[threadIdx.x], m_max);
    __syncthreads();
    for (int i = 0; i < n_splits; ++i) l += s_l[i] * s_w[i];
    const float inv = 1.f / l;
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float a = 0.f;
#pragma unroll 4
        for (int i = 0; i < n_splits; ++i) a += __ldcg(all + i * (HEAD_DIM + 2) + 2 + d) * s_w[i];
        out[h * HEAD_DIM + d] = a * inv;
    }
    if (threadIdx.x == 0) counters[h] = 0;  // ready for the next step (graph replay)
}

extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                float *__restrict__ out, const int *__restrict__ pos_dev, float *part,
                unsigned *counters, int n_heads, int n_kv, int max_ctx, float scale) {
    decode_impl<false>(qkv, k_cache, v_cache, out, pos_dev, part, counters, nullptr, nullptr,
                       n_heads, n_kv, max_ctx, 0, 0, scale);
}

extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode_rope(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                     float *__restrict__ out, const int *__restrict__ pos_dev, float *part,
                     unsigned *counters, const float *__restrict__ cos_t,
                     const float *__restrict__ sin_t, int n_heads, int n_kv, int max_ctx,
                     int rope_half, int neox, float scale) {
    decode_impl<true>(qkv, k_cache, v_cache, out, pos_dev, part, counters, cos_t, sin_t, n_heads,
                      n_kv, max_ctx, rope_half, neox, scale);
}

// Prefill: grid (n_tokens, n_heads), AW*32 threads. Query t sits at position p = *pos_dev + t
// and sees keys 0 .. p (the chunk's own keys were written by rope_kv_write before).
extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_prefill(const float *__restrict__ qkv, const __half *__restrict__ k_cache,
                 const __half *__restrict__ v_cache, float *__restrict__ out,
                 const int *__restrict__ pos_dev, int n_heads, int n_kv, int max_ctx,
                 float scale) {
    __shared__ float s_m[AW + 1], s_l[AW + 1], s_acc[(AW + 1) * HEAD_DIM];
    const int t = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (n_heads / n_kv);
    const int q_dim = n_heads * HEAD_DIM, row_len = q_dim + 2 * n_kv * HEAD_DIM;
    pdl_wait();
    const int L = *pos_dev + t + 1;
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
    scan_keys(st, q, k_cache + base, v_cache + base, warp, L, AW, lane);
    block_merge(st, s_m, s_l, s_acc, lane, warp);
    const float inv = 1.f / s_l[AW];
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x)
        out[(size_t)t * q_dim + h * HEAD_DIM + d] = s_acc[AW * HEAD_DIM + d] * inv;
}
