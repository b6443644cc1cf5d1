// Decode attention over the fp16 KV cache: one query per head, split over the sequence
// (attention.cuh has the layout, the grouping and the shared online-softmax pieces).
#include "attention.cuh"
#include "pdl.cuh"

#ifndef ATTN_PRE
#define ATTN_PRE 1  // 0: wait for the previous kernel (PDL) before loading any key
#endif
#define MAX_SPLITS 32  // decode splits per head at most (cuda/forward.py's MAX_SPLITS)

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

// Decode: grid (n_heads, n_splits), AW*32 threads. The query at pos = *pos_dev sees the keys
// [lo, L), L = pos + 1, lo = first_key(pos, window); split s of head h takes keys
// [lo + s * chunk, lo + (s + 1) * chunk) of them, chunk = ceil((L - lo) / n_splits). With
// several splits each block leaves (m, l, acc) in part[(h * n_splits + s) * (HEAD_DIM + 2)], and
// the last block of a head to finish (counted in counters[h], reset to 0 after) merges them.
// ROPE (the fused decode step): qkv holds q, k, v before the rotary embedding; every block
// rotates its q and the new key itself, uses the new key and value from registers (rounded to
// fp16, as the cache holds them), and block (first head of the kv group, split 0) stores them in
// the cache at *pos_dev. This replaces the separate rope_kv_write launch. With q_norm / k_norm
// (gemma3) q and the new key are RMS-normed per head before the rotation.
template <bool ROPE>
__device__ __forceinline__ void decode_impl(const float *__restrict__ qkv, __half *k_cache,
                                            __half *v_cache, float *__restrict__ out,
                                            const int *__restrict__ pos_dev, float *part,
                                            unsigned *counters, const float *__restrict__ cos_t,
                                            const float *__restrict__ sin_t,
                                            const float *__restrict__ q_norm,
                                            const float *__restrict__ k_norm, float norm_eps,
                                            int n_heads, int n_kv, int max_ctx, int rope_half,
                                            int neox, float scale, int window,
                                            const float *__restrict__ sinks, int n_splits) {
    // s_m, s_l hold the warps' states (AW + 1), later the splits' (MAX_SPLITS)
    __shared__ float s_m[MAX_SPLITS], s_l[MAX_SPLITS], s_w[MAX_SPLITS];
    __shared__ float s_acc[(AW + 1) * HEAD_DIM];
    __shared__ unsigned s_ticket;
    const int h = blockIdx.x, s = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = n_heads / n_kv, g = h / group;
    pdl_trigger();
    if (!ATTN_PRE) pdl_wait();
    // Before waiting for the qkv product (PDL, pdl.cuh): the position and the cached keys of
    // earlier steps are final, so this warp's first KPRE keys (t < pos) and the rope row are
    // loaded now, and the rest of its share is prefetched into L2.
    const int pos = *pos_dev, L = pos + 1, lo = first_key(pos, window);
    const int chunk = (L - lo + n_splits - 1) / n_splits;
    const int t0 = lo + s * chunk, t1 = min(L, t0 + chunk);
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
        if (q_norm != nullptr) head_rms_norm(q, q_norm, norm_eps, lane);
        if (k_norm != nullptr) head_rms_norm(ck, k_norm, norm_eps, lane);
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
        const float inv = 1.f / (s_l[AW] + sink_term(sinks, h, s_m[AW]));
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
    const float inv = 1.f / (l + sink_term(sinks, h, m_max));
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
                unsigned *counters, int n_heads, int n_kv, int max_ctx, float scale, int window) {
    decode_impl<false>(qkv, k_cache, v_cache, out, pos_dev, part, counters, nullptr, nullptr,
                       nullptr, nullptr, 0.f, n_heads, n_kv, max_ctx, 0, 0, scale, window,
                       nullptr, gridDim.y);
}

extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode_rope(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                     float *__restrict__ out, const int *__restrict__ pos_dev, float *part,
                     unsigned *counters, const float *__restrict__ cos_t,
                     const float *__restrict__ sin_t, const float *__restrict__ q_norm,
                     const float *__restrict__ k_norm, float norm_eps, int n_heads, int n_kv,
                     int max_ctx, int rope_half, int neox, float scale, int window) {
    decode_impl<true>(qkv, k_cache, v_cache, out, pos_dev, part, counters, cos_t, sin_t, q_norm,
                      k_norm, norm_eps, n_heads, n_kv, max_ctx, rope_half, neox, scale, window,
                      nullptr, gridDim.y);
}

// attn_decode_rope with gpt-oss's attention sinks: sinks (n_heads,) f32, one logit per head.
extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode_rope_sinks(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                           float *__restrict__ out, const int *__restrict__ pos_dev, float *part,
                           unsigned *counters, const float *__restrict__ cos_t,
                           const float *__restrict__ sin_t, const float *__restrict__ q_norm,
                           const float *__restrict__ k_norm, float norm_eps, int n_heads, int n_kv,
                           int max_ctx, int rope_half, int neox, float scale, int window,
                           const float *__restrict__ sinks) {
    decode_impl<true>(qkv, k_cache, v_cache, out, pos_dev, part, counters, cos_t, sin_t, q_norm,
                      k_norm, norm_eps, n_heads, n_kv, max_ctx, rope_half, neox, scale, window,
                      sinks, gridDim.y);
}

// attn_decode (after rope_kv_write) with attention sinks.
extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode_sinks(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                      float *__restrict__ out, const int *__restrict__ pos_dev, float *part,
                      unsigned *counters, int n_heads, int n_kv, int max_ctx, float scale,
                      int window, const float *__restrict__ sinks) {
    decode_impl<false>(qkv, k_cache, v_cache, out, pos_dev, part, counters, nullptr, nullptr,
                       nullptr, nullptr, 0.f, n_heads, n_kv, max_ctx, 0, 0, scale, window, sinks,
                       gridDim.y);
}

// The batched decode step: grid (n_heads, splits, rows), one query row per sequence. Row r is
// slot slots[r]: its q | k | v at qkv + r * qkv_stride, its output at out + r * out_stride,
// its position pos_all[slot], its layer's cache at k_cache / v_cache + slot * slot_kv (halves),
// its partials and counters in row r of part / counters. The row's split count is the one the
// single-sequence step is launched with (cuda/forward.py's splits_for of its length), so the
// row's arithmetic is that step's whatever the other rows; blocks past it return at once (the
// grid holds the most any row of the batch needs).
extern "C" __global__ void __launch_bounds__(AW * 32)
    attn_decode_rope_rows(const float *__restrict__ qkv, __half *k_cache, __half *v_cache,
                          float *__restrict__ out, const int *__restrict__ pos_all, float *part,
                          unsigned *counters, const float *__restrict__ cos_t,
                          const float *__restrict__ sin_t, const float *__restrict__ q_norm,
                          const float *__restrict__ k_norm, float norm_eps, int n_heads,
                          int n_kv, int max_ctx, int rope_half, int neox, float scale,
                          int window, const float *__restrict__ sinks,
                          const int *__restrict__ slots, int qkv_stride, int out_stride,
                          long long slot_kv) {
    const int r = blockIdx.z, slot = slots[r];
    const int len = pos_all[slot] + 1, need = (len + 31) / 32;
    int n_splits = 1;
    while (n_splits < need && n_splits < MAX_SPLITS) n_splits <<= 1;
    if ((int)blockIdx.y >= n_splits) return;
    decode_impl<true>(qkv + (size_t)r * qkv_stride, k_cache + slot * slot_kv,
                      v_cache + slot * slot_kv, out + (size_t)r * out_stride, pos_all + slot,
                      part + (size_t)r * n_heads * MAX_SPLITS * (HEAD_DIM + 2),
                      counters + (size_t)r * n_heads, cos_t, sin_t, q_norm, k_norm, norm_eps,
                      n_heads, n_kv, max_ctx, rope_half, neox, scale, window, sinks, n_splits);
}
