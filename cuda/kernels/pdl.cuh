// Programmatic dependent launch (PDL, sm_90+) for the decode step's kernels.
//
// The engine launches every decode kernel but the first with the launch attribute
// "programmatic stream serialization" (cuda/launch.py): such a kernel may start while the one
// before it in the stream is still running, once every block of that one has called
// pdl_trigger(). It must call pdl_wait() before it reads anything the kernels before it wrote
// and before its first global write: pdl_wait() returns when the previous kernel has completed
// and its writes are visible (and that kernel waited on its own predecessor, so the whole chain
// is done). What a kernel may do before pdl_wait(): read data no kernel of the step writes
// (weights, rope tables), the position and the KV cache rows of earlier steps (the step's first
// kernel is launched without the attribute, so everything before the step has completed), and
// prefetch them into L2. Launched without the attribute, both calls are no-ops; before sm_90
// they compile to nothing.
//
// Data that kernels of the step write must not be read with non-coherent loads (ld.global.nc,
// which the compiler emits for `const T *__restrict__` pointers): such a load promises the data
// is read-only while the kernel runs, which PDL breaks (the producer is still running when this
// kernel starts), and ptxas may hoist it above griddepcontrol.wait. Seen on the H100: with the
// matvec's weight loads moved before the wait, the x loads moved too and a graph-replayed step
// computed garbage. Such data is read with __ldca (ld.global.ca: PTX makes the prerequisite
// grids' writes visible to it after the wait; cached in L1) or __ldcg (L2 only).
#pragma once

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream be scheduled now (its blocks then wait in pdl_wait()).
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Pull the bytes [p, p + n) into L2 (one prefetch per 128-byte line, lines spread over the
// warp's lanes); no register waits for it.
__device__ __forceinline__ void prefetch_l2(const void *p, size_t n, int lane) {
    const size_t first = reinterpret_cast<size_t>(p) & ~size_t(127);
    const size_t end = reinterpret_cast<size_t>(p) + n;
    for (size_t a = first + 128 * (size_t)lane; a < end; a += 128 * 32)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
}
