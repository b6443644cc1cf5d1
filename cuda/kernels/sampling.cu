// Token sampling on the GPU: the chain of runtime/sampling.sample_from_logits, in float64.
//
// One block of ST threads does everything; only the chosen token id leaves the device.
//   sample_greedy: argmax after the repetition penalty, the lowest id among equal maxima.
//   sample_full:   penalty, / temperature, candidates x >= x_max - 40, order by (x desc, id asc),
//                  w = exp(x - x_max), sequential cumsum c, cut-off n from top_k / top_p / min_p,
//                  then the first i < n with c[i] > u * c[n - 1] (else n - 1).
// The ordering is walked in chunks of ST candidates: a radix select (MSB first, 8-bit digits) over
// the 88-bit key (ordered bits of x, 0xFFFFFF - id) finds the chunk's last key, the chunk is
// gathered and bitonic-sorted in shared memory, and thread 0 extends the cumsum left to right, as
// numpy's cumsum does. Usually one chunk suffices (the mass sits in the first few candidates).
// Deviation from the host chain, by rounding only: when no filter cuts the candidates, c[n - 1]
// is the block's (deterministic) tree sum instead of the sequential one.
// The penalty marks ids in `marks` (vocab bytes, all zero between calls) so each id is penalized
// once and membership is O(1); pen_ids must be distinct (the host passes np.unique(history)).
// Non-finite logits: every kernel here writes id -1 when any logit is NaN or +-inf (the host
// raises NonFiniteLogits; a token picked from NaN would be garbage, often a silent EOS). The
// scan that finds the maximum carries the flag as the pair (+inf, -1), which wins every later
// comparison, so the flag costs one isfinite per logit already loaded and no extra reduction.
// So ids that must never be sampled (padding rows of the head) are kept out by the length
// passed as `vocab` (runtime.models.vocab.sampled_prefix) where they end the vocabulary, else
// by mask_logits below, which writes the finite MASKED_LOGIT, never -inf, into them.
#include <stdint.h>

#include "pdl.cuh"

#define ST 1024
#define NEGLIGIBLE 40.0
#define ID_MASK 0xFFFFFFu  // ids < 2^24

__device__ __forceinline__ double penalize(double x, double p) { return x > 0.0 ? x / p : x * p; }

__device__ __forceinline__ uint64_t ord_key(double x) {  // larger x -> larger unsigned key
    const uint64_t b = (uint64_t)__double_as_longlong(x);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
__device__ __forceinline__ double unord_key(uint64_t k) {
    const uint64_t b = (k >> 63) ? (k & 0x7FFFFFFFFFFFFFFFull) : ~k;
    return __longlong_as_double((long long)b);
}
// (hi, lo) lexicographic: the key earlier in the sampling order is the larger one
__device__ __forceinline__ bool key_less(uint64_t ah, uint32_t al, uint64_t bh, uint32_t bl) {
    return ah < bh || (ah == bh && al < bl);
}

__device__ void mark_ids(unsigned char *marks, const int *ids, int n, unsigned char v) {
    for (int j = threadIdx.x; j < n; j += blockDim.x) marks[ids[j]] = v;
}

// Block-wide argmax of (x, id) with the lowest id among equal x; result in s_x[0], s_id[0].
__device__ void block_argmax(double x, int id, double *s_x, int *s_id) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const double ox = __shfl_xor_sync(0xffffffffu, x, o);
        const int oid = __shfl_xor_sync(0xffffffffu, id, o);
        if (ox > x || (ox == x && oid < id)) x = ox, id = oid;
    }
    if (lane == 0) s_x[warp] = x, s_id[warp] = id;
    __syncthreads();
    if (warp == 0) {
        x = lane < (int)(blockDim.x >> 5) ? s_x[lane] : -INFINITY;
        id = lane < (int)(blockDim.x >> 5) ? s_id[lane] : 0x7FFFFFFF;
        for (int o = 16; o > 0; o >>= 1) {
            const double ox = __shfl_xor_sync(0xffffffffu, x, o);
            const int oid = __shfl_xor_sync(0xffffffffu, id, o);
            if (ox > x || (ox == x && oid < id)) x = ox, id = oid;
        }
        if (lane == 0) s_x[0] = x, s_id[0] = id;
    }
    __syncthreads();
}

template <class T>
__device__ T block_sum(T v, T *s) {  // fixed shuffle tree: the same result on every run
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? s[lane] : T(0);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) s[0] = v;
    }
    __syncthreads();
    const T r = s[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void __launch_bounds__(ST)
    sample_greedy(const float *__restrict__ logits, int vocab, const int *__restrict__ pen_ids,
                  int n_pen, double penalty, unsigned char *marks, int *out) {
    __shared__ double s_x[32];
    __shared__ int s_id[32];
    mark_ids(marks, pen_ids, n_pen, 1);
    __syncthreads();
    double best = -INFINITY;
    int best_id = 0x7FFFFFFF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        double x = (double)logits[i];
        if (!isfinite(x)) {  // the non-finite flag: (+inf, -1) wins the argmax
            best = INFINITY, best_id = -1;
            break;
        }
        if (n_pen > 0 && marks[i]) x = penalize(x, penalty);
        if (x > best) best = x, best_id = i;  // ascending i per thread: first maximum kept
    }
    block_argmax(best, best_id, s_x, s_id);
    mark_ids(marks, pen_ids, n_pen, 0);
    if (threadIdx.x == 0) *out = s_id[0];
}

struct Chunk {  // shared-memory state of the chunk walk
    uint64_t hi[ST];
    uint32_t lo[ST];
    double w[ST];
    unsigned hist[256];
    int count;
    int sel;
};

// Gather and sort the (at most ST) candidates that follow key (ph, pl) in the order (all of them
// when `first`). Returns how many; sorted keys in c.hi/c.lo, weights exp(x - x_max) in c.w.
__device__ int next_chunk(Chunk &c, const double *xs, int vocab, double x_min, double x_max,
                          bool first, uint64_t ph, uint32_t pl) {
    // how many remain after the previous chunk
    int mine = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const double x = xs[i];
        if (x >= x_min && (first || key_less(ord_key(x), ID_MASK - i, ph, pl))) ++mine;
    }
    __shared__ int s_red[32];
    const int remain = block_sum<int>(mine, s_red);
    // threshold key (th, tl): the ST-th largest remaining key, or the smallest when fewer remain
    uint64_t th = 0;
    uint32_t tl = 0;
    if (remain > ST) {
        int need = ST;
        for (int d = 0; d < 11; ++d) {  // digits 0..7: hi bits 63..0; digits 8..10: lo bits 23..0
            for (int b = threadIdx.x; b < 256; b += blockDim.x) c.hist[b] = 0;
            __syncthreads();
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                const double x = xs[i];
                if (x < x_min) continue;
                const uint64_t kh = ord_key(x);
                const uint32_t kl = ID_MASK - i;
                if (!first && !key_less(kh, kl, ph, pl)) continue;
                int digit;
                bool match;
                if (d < 8) {
                    const int sh = 56 - 8 * d;
                    match = d == 0 || (kh >> (sh + 8)) == (th >> (sh + 8));
                    digit = (int)((kh >> sh) & 0xFF);
                } else {
                    const int sh = 16 - 8 * (d - 8);
                    match = kh == th && (d == 8 || (kl >> (sh + 8)) == (tl >> (sh + 8)));
                    digit = (int)((kl >> sh) & 0xFF);
                }
                if (match) atomicAdd(&c.hist[digit], 1u);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                int acc = 0, b = 255;
                for (; b > 0; --b) {
                    if (acc + (int)c.hist[b] >= need) break;
                    acc += c.hist[b];
                }
                c.sel = b;
                c.count = need - acc;
            }
            __syncthreads();
            need = c.count;
            if (d < 8)
                th |= (uint64_t)c.sel << (56 - 8 * d);
            else
                tl |= (uint32_t)c.sel << (16 - 8 * (d - 8));
            __syncthreads();
        }
    }
    // gather the keys in [threshold, previous)
    if (threadIdx.x == 0) c.count = 0;
    c.hi[threadIdx.x] = 0;
    c.lo[threadIdx.x] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const double x = xs[i];
        if (x < x_min) continue;
        const uint64_t kh = ord_key(x);
        const uint32_t kl = ID_MASK - i;
        if (!first && !key_less(kh, kl, ph, pl)) continue;
        if (key_less(kh, kl, th, tl)) continue;
        const int slot = atomicAdd(&c.count, 1);
        c.hi[slot] = kh;
        c.lo[slot] = kl;
    }
    __syncthreads();
    const int n = c.count;
    // bitonic sort of ST entries, descending; the zero padding sorts last
    for (int k = 2; k <= ST; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            const int i = threadIdx.x, ixj = i ^ j;
            if (ixj > i) {
                const uint64_t ah = c.hi[i], bh = c.hi[ixj];
                const uint32_t al = c.lo[i], bl = c.lo[ixj];
                const bool desc = (i & k) == 0;
                if (desc ? key_less(ah, al, bh, bl) : key_less(bh, bl, ah, al)) {
                    c.hi[i] = bh, c.hi[ixj] = ah;
                    c.lo[i] = bl, c.lo[ixj] = al;
                }
            }
            __syncthreads();
        }
    }
    if (threadIdx.x < n) c.w[threadIdx.x] = exp(unord_key(c.hi[threadIdx.x]) - x_max);
    __syncthreads();
    return n;
}

extern "C" __global__ void __launch_bounds__(ST)
    sample_full(const float *__restrict__ logits, int vocab, const int *__restrict__ pen_ids,
                int n_pen, double penalty, unsigned char *marks, double temperature, int top_k,
                double top_p, double min_p, double u, double *xs, int *out) {
    __shared__ Chunk c;
    __shared__ double s_x[32], s_sum[32];
    __shared__ int s_id[32], s_cnt[32];
    __shared__ int s_done1, s_done2, s_n, s_token;
    __shared__ double s_clast;
    // 1. x = penalized logits / temperature (float64), and x_max
    mark_ids(marks, pen_ids, n_pen, 1);
    __syncthreads();
    double best = -INFINITY;
    int best_id = 0x7FFFFFFF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        double x = (double)logits[i];
        if (!isfinite(x)) {  // the non-finite flag: (+inf, -1) wins the argmax
            best = INFINITY, best_id = -1;
            break;
        }
        if (n_pen > 0 && marks[i]) x = penalize(x, penalty);
        x /= temperature;
        xs[i] = x;
        if (x > best) best = x, best_id = i;
    }
    block_argmax(best, best_id, s_x, s_id);
    const double x_max = s_x[0];
    const int argmax_id = s_id[0];
    const double x_min = x_max - NEGLIGIBLE;
    mark_ids(marks, pen_ids, n_pen, 0);
    if (argmax_id < 0) {  // block-uniform (shared): every thread leaves here
        if (threadIdx.x == 0) *out = -1;
        return;
    }
    // 2. candidates: count, total weight (tree sum), count of w >= min_p
    int cnt = 0, nmin = 0;
    double wsum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const double x = xs[i];
        if (x < x_min) continue;
        const double w = exp(x - x_max);
        ++cnt;
        wsum += w;
        nmin += w >= min_p;
    }
    const int M = block_sum<int>(cnt, s_cnt);
    const double total = block_sum<double>(wsum, s_sum);
    const int n_minp = block_sum<int>(nmin, s_cnt);
    int n = M;
    if (top_k > 0) n = min(n, top_k);
    if (min_p > 0.0) n = min(n, max(1, n_minp));
    const double p_mass = top_p * total;
    // 3. pass 1 (only when a filter may cut): walk the order to find n and c[n - 1]
    int chunks1 = 0;
    bool first = true;
    uint64_t ph = 0;
    uint32_t pl = 0;
    if (threadIdx.x == 0) s_done1 = 0, s_done2 = 0, s_n = n, s_clast = total, s_token = argmax_id;
    __syncthreads();
    double cum = 0.0;
    int idx = 0;
    if (top_p < 1.0 || n < M) {
        while (!s_done1) {
            const int k = next_chunk(c, xs, vocab, x_min, x_max, first, ph, pl);
            ++chunks1;
            if (threadIdx.x == 0) {
                if (k == 0) s_done1 = 1;  // only with non-finite logits: keep the cut-off
                int nn = s_n;
                for (int j = 0; j < k; ++j, ++idx) {
                    cum += c.w[j];
                    if (top_p < 1.0 && cum >= p_mass) nn = min(nn, idx + 1);
                    if (idx == nn - 1) {
                        s_clast = cum;
                        s_done1 = 1;
                        break;
                    }
                }
                s_n = nn;
            }
            first = false;
            ph = c.hi[max(k - 1, 0)];
            pl = c.lo[max(k - 1, 0)];
            __syncthreads();
        }
    }
    n = s_n;
    const double target = u * s_clast;
    // 4. pass 2: the first i < n with c[i] > target (the chunk of pass 1 is reused if single)
    cum = 0.0;
    idx = 0;
    first = true;
    bool reuse = chunks1 == 1;
    int k = c.count;
    while (!s_done2) {
        if (!reuse) k = next_chunk(c, xs, vocab, x_min, x_max, first, ph, pl);
        reuse = false;
        if (threadIdx.x == 0) {
            if (k == 0) s_done2 = 1;  // only with non-finite logits: the argmax stands
            for (int j = 0; j < k; ++j, ++idx) {
                cum += c.w[j];
                if (cum > target || idx == n - 1) {
                    s_token = (int)(ID_MASK - c.lo[j]);
                    s_done2 = 1;
                    break;
                }
            }
        }
        first = false;
        ph = c.hi[max(k - 1, 0)];
        pl = c.lo[max(k - 1, 0)];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = s_token;
}

// Greedy choice without penalty, spread over the GPU: grid (ARGMAX_BLOCKS), any blockDim (a
// multiple of 32, <= 1024). Block b takes a contiguous slice of the logits and leaves its
// (max, first id) in part_v/part_i[b]; the last block to finish (counter, reset to 0 after)
// picks the best, the lowest id among equal maxima: np.argmax's rule, so it equals
// sample_greedy with no penalty. Used at the end of the captured decode step, where its last
// block also advances the position (*pos_dev += advance; pos_dev may be null).
__device__ __forceinline__ void warp_argmax_f(float &x, int &id) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ox = __shfl_xor_sync(0xffffffffu, x, o);
        const int oid = __shfl_xor_sync(0xffffffffu, id, o);
        if (ox > x || (ox == x && oid < id)) x = ox, id = oid;
    }
}

__device__ void block_argmax_f(float &x, int &id) {  // result valid in thread 0
    __shared__ float s_x[32];
    __shared__ int s_id[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_argmax_f(x, id);
    if (lane == 0) s_x[warp] = x, s_id[warp] = id;
    __syncthreads();
    if (warp == 0) {
        const bool ok = lane < (int)(blockDim.x >> 5);
        x = ok ? s_x[lane] : -INFINITY;
        id = ok ? s_id[lane] : 0x7FFFFFFF;
        warp_argmax_f(x, id);
    }
}

// One argmax_multi over logits (the grid's x dimension); the rows form runs one per blockIdx.y.
__device__ __forceinline__ void argmax_impl(const float *__restrict__ logits, int vocab,
                                            float *part_v, int *part_i, unsigned *counter,
                                            int *out, int *pos_dev, int advance) {
    __shared__ unsigned s_ticket;
    pdl_wait();
    const int per = (vocab + gridDim.x - 1) / gridDim.x;
    const int lo = blockIdx.x * per, hi = min(vocab, lo + per);
    float best = -INFINITY;
    int best_id = 0x7FFFFFFF;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float x = __ldcg(logits + i);  // written by the head (PDL: no .nc load)
        if (!isfinite(x)) {  // the non-finite flag: (+inf, -1) wins every block and the last
            best = INFINITY, best_id = -1;
            break;
        }
        if (x > best) best = x, best_id = i;
    }
    block_argmax_f(best, best_id);
    if (threadIdx.x == 0) {
        part_v[blockIdx.x] = best;
        part_i[blockIdx.x] = best_id;
        __threadfence();
        s_ticket = atomicAdd(counter, 1u);
    }
    __syncthreads();
    if (s_ticket != gridDim.x - 1) return;
    __threadfence();
    best = -INFINITY;
    best_id = 0x7FFFFFFF;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
        const float x = __ldcg(part_v + b);
        const int id = __ldcg(part_i + b);
        if (x > best || (x == best && id < best_id)) best = x, best_id = id;
    }
    __syncthreads();
    block_argmax_f(best, best_id);
    if (threadIdx.x == 0) {
        *out = best_id;
        *counter = 0;
        if (pos_dev != nullptr) *pos_dev += advance;  // the step's last kernel moves it on
    }
}

extern "C" __global__ void argmax_multi(const float *__restrict__ logits, int vocab, float *part_v,
                                        int *part_i, unsigned *counter, int *out, int *pos_dev,
                                        int advance) {
    argmax_impl(logits, vocab, part_v, part_i, counter, out, pos_dev, advance);
}

// The batched decode step's greedy choices: grid (ARGMAX_BLOCKS, rows). Row r is slot slots[r]:
// its logits at logits + slot * logit_stride, its choice into ids[slot * ids_stride] and
// out_rows[r], its position pos_all[slot] advanced, except for the padding slot `scratch` (the
// rows of a batch smaller than its graph's bucket: never advanced, so it stays at 0). Each
// row's partials and counter are its own (row r of part_v / part_i / counters).
extern "C" __global__ void argmax_rows(const float *__restrict__ logits, int vocab,
                                       float *part_v, int *part_i, unsigned *counters, int *ids,
                                       int *pos_all, const int *__restrict__ slots,
                                       int logit_stride, int ids_stride, int scratch,
                                       int *out_rows) {
    const int r = blockIdx.y, slot = slots[r];
    argmax_impl(logits + (size_t)slot * logit_stride, vocab, part_v + (size_t)r * gridDim.x,
                part_i + (size_t)r * gridDim.x, counters + r, out_rows + r,
                slot == scratch ? nullptr : pos_all + slot, 1);
}

// The rows' token ids for the embedding: ids_rows[r] = ids[slots[r] * ids_stride] (each slot's
// ids[0]: the sampler's or the engine's upload). After the step, ids[slot * ids_stride] gets the
// greedy choice back from out_rows (argmax_rows writes the row's choice there).
extern "C" __global__ void gather_ids(const int *__restrict__ ids, const int *__restrict__ slots,
                                      int ids_stride, int n, int *ids_rows) {
    pdl_wait();
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) ids_rows[r] = ids[(size_t)slots[r] * ids_stride];
}

extern "C" __global__ void scatter_ids(const int *__restrict__ out_rows,
                                       const int *__restrict__ slots, int ids_stride, int n,
                                       int *ids) {
    pdl_wait();
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) ids[(size_t)slots[r] * ids_stride] = out_rows[r];
}

// The sampling mask for ids that are no token (runtime/models/vocab.py), where they are not a
// suffix of the vocabulary (a suffix is cut off by sampling over the first n logits instead):
// logits[ids[j]] = MASKED_LOGIT for j < n, the head's values kept in saved[j] so that the engine
// can report the logits unmasked. MASKED_LOGIT is finite, so the samplers' non-finite flag stays
// the model's alone (a non-finite value is left in place: flagged, as the host chain raises
// before its ban), and far below any logit: greedy never picks it, and after any temperature it
// lies more than NEGLIGIBLE below the maximum, so sample_full never counts it as a candidate
// (the host chain's -inf, to the token). ids are distinct and written once at load; the logits
// come from the head, the kernel before this one (PDL: read after the wait, not with .nc loads).
#define MASKED_LOGIT (-3.0e38f)

__device__ __forceinline__ void mask_impl(float *logits, const int *__restrict__ ids,
                                          float *saved, int n) {
    pdl_wait();
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
        const int i = ids[j];
        const float v = __ldcg(logits + i);
        saved[j] = v;
        logits[i] = isfinite(v) ? MASKED_LOGIT : v;
    }
}

extern "C" __global__ void mask_logits(float *logits, const int *__restrict__ ids, float *saved,
                                       int n) {
    mask_impl(logits, ids, saved, n);
}

// The batched step's: blockIdx.y is the row, slot slots[r]'s logits and saved values.
extern "C" __global__ void mask_logits_rows(float *logits, const int *__restrict__ ids,
                                            float *saved, int n, const int *__restrict__ slots,
                                            int logit_stride) {
    const int slot = slots[blockIdx.y];
    mask_impl(logits + (size_t)slot * logit_stride, ids, saved + (size_t)slot * n, n);
}
