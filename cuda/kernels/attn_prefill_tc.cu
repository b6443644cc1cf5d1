// Prefill attention on tensor cores (WMMA m16n16k16, fp16 inputs, fp32 accumulation), for head
// sizes up to 128: a block of TW warps takes QT = 16 * TW consecutive queries of one head, each
// warp 16 of them, and walks the keys they see in tiles of KT, staged in shared memory once for
// all the block's queries (attn_prefill.cu reads every key once per query and head).
//
// Two passes over the key tiles, so no accumulator ever needs rescaling: pass 1 computes
// S = Q K^T per tile and keeps each row's running max m and sum l of exp(s - m); pass 2
// recomputes S, forms P = exp(S - m) (0 where masked) in fp16 and accumulates O = P V in WMMA
// fragments; the output is O / l. Queries are scaled, then rounded to fp16, as the cached keys
// and values already are; P rounds to fp16 too (relative error ~1e-3, like the tensor-core
// products of the prefill).
//
// Visibility as attention.cuh: the query at position p sees keys first_key(p, window) .. p.
// Key tiles sit at absolute multiples of KT, and a row's masked keys contribute exact zeros, so a
// query's result does not depend on which other queries share its pass (batch invariance). Keys
// past the chunk load as zeros (the cache beyond holds garbage, possibly NaN: 0 * NaN = NaN).
// Grid (ceil(n_tokens / QT), n_heads), TW * 32 threads; HEAD_DIM a multiple of 32, <= 128.
#include <cuda_fp16.h>
#include <mma.h>

#include "attention.cuh"

static_assert(HEAD_DIM <= 128, "the tensor-core prefill attention takes head_dim <= 128");

#define TW 4                    // warps per block
#define QT (16 * TW)            // queries per block
#define KT 32                   // keys per tile
#define LDH (HEAD_DIM + 8)      // halves per shared row of Q, K, V
#define LDS (KT + 4)            // floats per row of S
#define LDP (2 * LDS)           // halves per row of P (P overlays its warp's S rows)
#define LDO (HEAD_DIM + 4)      // floats per row of the output staging
#define KV_VECS (KT * HEAD_DIM / 8 / (TW * 32))  // uint4 (8 halves) per thread per K or V tile

struct __align__(32) AttnSmem {
    union {
        struct {
            __half q[QT][LDH];
            __half k[KT][LDH];
            __half v[KT][LDH];
        } in;
        float o[TW][16][LDO];  // after both passes
    } u;
    union {
        float s[TW][16][LDS];
        __half p[TW][16][LDP];  // row r of P shares the bytes of row r of S
    } sp;
    float l[TW][16];
};

using namespace nvcuda;

// S (16 x KT) of this warp's queries against the staged key tile, into sm.sp.s[warp].
__device__ __forceinline__ void tile_scores(AttnSmem &sm, int warp) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[KT / 16];
#pragma unroll
    for (int j = 0; j < KT / 16; ++j) wmma::fill_fragment(acc[j], 0.f);
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::load_matrix_sync(a, &sm.u.in.q[warp * 16][kk], LDH);
#pragma unroll
        for (int j = 0; j < KT / 16; ++j) {  // K rows are keys: col-major B = K^T
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
            wmma::load_matrix_sync(b, &sm.u.in.k[16 * j][kk], LDH);
            wmma::mma_sync(acc[j], a, b, acc[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < KT / 16; ++j)
        wmma::store_matrix_sync(&sm.sp.s[warp][0][16 * j], acc[j], LDS, wmma::mem_row_major);
}

// sinks: null, or one logit per head joining each softmax row (attention.cuh)
__device__ __forceinline__ void prefill_tc_impl(const float *__restrict__ qkv,
                                                const __half *__restrict__ k_cache,
                                                const __half *__restrict__ v_cache,
                                                float *__restrict__ out,
                                                const int *__restrict__ pos_dev, int n_tokens,
                                                int n_heads, int n_kv, int max_ctx, float scale,
                                                int window, const float *__restrict__ sinks) {
    __shared__ AttnSmem sm;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.y, g = h / (n_heads / n_kv), t0 = blockIdx.x * QT;
    const int q_dim = n_heads * HEAD_DIM, row_len = q_dim + 2 * n_kv * HEAD_DIM;
    const int pos0 = *pos_dev;
    const int k_last = pos0 + min(t0 + QT, n_tokens) - 1;  // the block's last real query
    const int k_first = first_key(pos0 + t0, window) / KT * KT;
    const size_t base = (size_t)g * max_ctx * HEAD_DIM;
    // this lane's softmax row (a lane pair per row, 16 columns each) and the keys it sees
    const int rr = lane >> 1, hc = lane & 1;
    const int p_row = pos0 + t0 + warp * 16 + rr, lo_row = first_key(p_row, window);

    for (int i = tid; i < QT * HEAD_DIM / 4; i += TW * 32) {  // Q: scaled, fp16
        const int r = i / (HEAD_DIM / 4), c = 4 * (i % (HEAD_DIM / 4));
        const int t = min(t0 + r, n_tokens - 1);  // padding rows repeat the last; never stored
        const float4 x = *reinterpret_cast<const float4 *>(qkv + (size_t)t * row_len + h * HEAD_DIM + c);
        *reinterpret_cast<__half2 *>(&sm.u.in.q[r][c]) = __floats2half2_rn(x.x * scale, x.y * scale);
        *reinterpret_cast<__half2 *>(&sm.u.in.q[r][c + 2]) = __floats2half2_rn(x.z * scale, x.w * scale);
    }

    uint4 nk[KV_VECS], nv[KV_VECS];  // the next tile, in flight during the current one
    auto fetch = [&](int kb, bool with_v) {
#pragma unroll
        for (int i = 0; i < KV_VECS; ++i) {
            const int idx = tid + i * TW * 32, r = idx / (HEAD_DIM / 8), c = 8 * (idx % (HEAD_DIM / 8));
            const int key = kb + r;
            const size_t at = base + (size_t)min(key, k_last) * HEAD_DIM + c;  // clamped address
            const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
            const uint4 kv = *reinterpret_cast<const uint4 *>(k_cache + at);
            nk[i] = key <= k_last ? kv : zero;
            if (with_v) {
                const uint4 vv = *reinterpret_cast<const uint4 *>(v_cache + at);
                nv[i] = key <= k_last ? vv : zero;
            }
        }
    };
    auto stage = [&](bool with_v) {
#pragma unroll
        for (int i = 0; i < KV_VECS; ++i) {
            const int idx = tid + i * TW * 32, r = idx / (HEAD_DIM / 8), c = 8 * (idx % (HEAD_DIM / 8));
            *reinterpret_cast<uint4 *>(&sm.u.in.k[r][c]) = nk[i];
            if (with_v) *reinterpret_cast<uint4 *>(&sm.u.in.v[r][c]) = nv[i];
        }
    };

    // pass 1: each row's max m and sum l of exp(s - m) over the keys it sees
    float m = -INFINITY, l = 0.f;
    fetch(k_first, false);
    for (int kb = k_first; kb <= k_last; kb += KT) {
        __syncthreads();  // the previous tile's reads are done (and Q is staged)
        stage(false);
        __syncthreads();
        if (kb + KT <= k_last) fetch(kb + KT, false);
        tile_scores(sm, warp);
        __syncwarp();
        float tmax = -INFINITY;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const int key = kb + 16 * hc + c;
            if (key >= lo_row && key <= p_row) tmax = fmaxf(tmax, sm.sp.s[warp][rr][16 * hc + c]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        const float m_new = fmaxf(m, tmax);  // -inf while the row has seen no key yet
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const int key = kb + 16 * hc + c;
            if (key >= lo_row && key <= p_row) sum += expf(sm.sp.s[warp][rr][16 * hc + c] - m_new);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);  // every lane; a + b == b + a: pairs agree
        if (m_new != -INFINITY) {  // (a tile with no visible key adds exactly nothing)
            l = (m == -INFINITY ? 0.f : l * expf(m - m_new)) + sum;
            m = m_new;
        }
    }

    // pass 2: O = sum over tiles of P V, P = exp(S - m) masked
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[HEAD_DIM / 16];
#pragma unroll
    for (int n = 0; n < HEAD_DIM / 16; ++n) wmma::fill_fragment(o[n], 0.f);
    fetch(k_first, true);
    for (int kb = k_first; kb <= k_last; kb += KT) {
        __syncthreads();
        stage(true);
        __syncthreads();
        if (kb + KT <= k_last) fetch(kb + KT, true);
        tile_scores(sm, warp);
        __syncwarp();
        float pv[16];
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const int key = kb + 16 * hc + c;
            const bool seen = key >= lo_row && key <= p_row && m != -INFINITY;
            pv[c] = seen ? expf(sm.sp.s[warp][rr][16 * hc + c] - m) : 0.f;
        }
        __syncwarp();  // every lane has read its S values before P overwrites the rows
#pragma unroll
        for (int c = 0; c < 16; c += 2)
            *reinterpret_cast<__half2 *>(&sm.sp.p[warp][rr][16 * hc + c]) =
                __floats2half2_rn(pv[c], pv[c + 1]);
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < KT; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
            wmma::load_matrix_sync(a, &sm.sp.p[warp][0][kk], LDP);
#pragma unroll
            for (int n = 0; n < HEAD_DIM / 16; ++n) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
                wmma::load_matrix_sync(b, &sm.u.in.v[kk][16 * n], LDH);
                wmma::mma_sync(o[n], a, b, o[n]);
            }
        }
    }
    __syncthreads();  // Q, K, V are no longer read: their bytes become the output staging
#pragma unroll
    for (int n = 0; n < HEAD_DIM / 16; ++n)
        wmma::store_matrix_sync(&sm.u.o[warp][0][16 * n], o[n], LDO, wmma::mem_row_major);
    if (hc == 0) sm.l[warp][rr] = l + sink_term(sinks, h, m);
    __syncwarp();
    for (int idx = lane; idx < 16 * HEAD_DIM; idx += 32) {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM, t = t0 + warp * 16 + r;
        if (t < n_tokens) out[(size_t)t * q_dim + h * HEAD_DIM + d] = sm.u.o[warp][r][d] / sm.l[warp][r];
    }
}

extern "C" __global__ void __launch_bounds__(TW * 32)
    attn_prefill_tc(const float *__restrict__ qkv, const __half *__restrict__ k_cache,
                    const __half *__restrict__ v_cache, float *__restrict__ out,
                    const int *__restrict__ pos_dev, int n_tokens, int n_heads, int n_kv,
                    int max_ctx, float scale, int window) {
    prefill_tc_impl(qkv, k_cache, v_cache, out, pos_dev, n_tokens, n_heads, n_kv, max_ctx, scale,
                    window, nullptr);
}

// attn_prefill_tc with gpt-oss's attention sinks, (n_heads,) f32.
extern "C" __global__ void __launch_bounds__(TW * 32)
    attn_prefill_tc_sinks(const float *__restrict__ qkv, const __half *__restrict__ k_cache,
                          const __half *__restrict__ v_cache, float *__restrict__ out,
                          const int *__restrict__ pos_dev, int n_tokens, int n_heads, int n_kv,
                          int max_ctx, float scale, int window, const float *__restrict__ sinks) {
    prefill_tc_impl(qkv, k_cache, v_cache, out, pos_dev, n_tokens, n_heads, n_kv, max_ctx, scale,
                    window, sinks);
}
