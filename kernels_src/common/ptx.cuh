// PTX wrappers for sm_90a: shared-memory addresses, mbarriers, clusters, TMA, wgmma control,
// conversions.
// Self-contained: no CUDA toolkit header is included anywhere under kernels_src/.
#pragma once

namespace mategemm {

using u8 = unsigned char;
using u32 = unsigned int;
using u64 = unsigned long long;
using i64 = long long;

// A CUtensorMap as the driver encodes it: 128 opaque bytes, 64-byte aligned.
struct alignas(64) TmaDesc {
  u64 data[16];
};

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

__device__ __forceinline__ u32 smem_addr(const void* ptr) {
  u32 addr;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(ptr));
  return addr;
}

__device__ __forceinline__ u32 lane_id() {
  u32 lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  return lane;
}

// Values that every thread of a warp holds equal, moved to a uniform register.
__device__ __forceinline__ int warp_uniform(int x) { return __shfl_sync(0xffffffffu, x, 0); }

// True in one lane of the converged warp. Code under it runs on one thread that ptxas knows to be
// alone: TMA and other uniform-datapath instructions issue without a per-instruction election loop
// (under threadIdx.x == 0 each one is wrapped in ELECT / BRA.U.ANY).
__device__ __forceinline__ bool elect_one_sync() {
  u32 elected = 0;
  asm volatile(
      "{\n .reg .pred p;\n elect.sync _|p, 0xffffffff;\n @p mov.u32 %0, 1;\n}"
      : "+r"(elected));
  return elected != 0;
}

// ---- global loads -------------------------------------------------------------------------
__device__ __forceinline__ float ldg_nc(const float* ptr) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(ptr));
  return v;
}

// ---- mbarrier -----------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}

__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The mbarrier functions take the barrier's 32-bit shared-memory address (smem_addr): the hot
// loops then do 32-bit arithmetic instead of converting generic pointers at every use.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  u32 done = 0;
  while (!done) {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// ---- programmatic dependent launch ---------------------------------------------------------
// Waits until the grids this one depends on have completed and their writes are visible; without
// programmatic dependent launch it returns at once. Everything before it may overlap the previous
// kernel's end, so it must come before this grid's first global memory access.
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// ---- clusters -----------------------------------------------------------------------------
__device__ __forceinline__ u32 cluster_cta_rank() {
  u32 rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

// Every thread of the cluster arrives, then waits for all of them: barrier inits and shared
// memory written before it are visible to the whole cluster after it.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}

// Arrive on the mbarrier at `bar`'s offset in CTA `cta` of the cluster. Default semantics
// (release, CTA scope) as CUTLASS's cluster barrier: `.release.cluster` costs a MEMBAR.ALL.GPU.
__device__ __forceinline__ void mbar_arrive_cluster(u32 bar, u32 cta) {
  asm volatile(
      "{ .reg .b32 remote; mapa.shared::cluster.u32 remote, %0, %1; "
      "mbarrier.arrive.shared::cluster.b64 _, [remote]; }"
      ::"r"(bar), "r"(cta)
      : "memory");
}

// The address in CTA `cta` of the cluster of what `addr` is in this CTA's shared memory.
__device__ __forceinline__ u32 map_to_cta(u32 addr, u32 cta) {
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(cta));
  return remote;
}

// Stores 16 bytes into another CTA's shared memory and completes them on its mbarrier `bar` (both
// addresses from map_to_cta), as a TMA load completes on the loading CTA's barrier.
__device__ __forceinline__ void st_async_v4(u32 addr, float x, float y, float z, float w, u32 bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];"
               ::"r"(addr), "f"(x), "f"(y), "f"(z), "f"(w), "r"(bar)
               : "memory");
}

// ---- TMA ----------------------------------------------------------------------------------
__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc* desc) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(desc) : "memory");
}

// Load box at (c0 inner, c1 outer) into shared memory (at shared address `dst`); completes its
// bytes on `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaDesc* desc, u32 bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
      ::"r"(dst), "l"(desc), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_load_2d(void* dst, const TmaDesc* desc, u32 bar, int c0, int c1) {
  tma_load_2d(smem_addr(dst), desc, bar, c0, c1);
}

// Copy `bytes` contiguous bytes (a multiple of 16; both addresses 16-byte aligned) from global
// memory into shared memory at `dst`; completes its bytes on `bar`. No tensor map.
__device__ __forceinline__ void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// L2 cache policy for tma_load_2d_hinted (the encoding CUTLASS's CacheHintSm90 uses).
constexpr u64 kL2EvictFirst = 0x12F0000000000000ull;

// As tma_load_2d, with an L2 eviction policy for the lines it brings in.
__device__ __forceinline__ void tma_load_2d_hinted(void* dst, const TmaDesc* desc, u32 bar, int c0, int c1,
                                                   u64 policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%3, %4}], [%2], %5;"
      ::"r"(smem_addr(dst)), "l"(desc), "r"(bar), "r"(c0), "r"(c1), "l"(policy)
      : "memory");
}

// As tma_load_2d, into the same shared-memory offset (and completing the same barrier offset) of
// every CTA in `cta_mask`.
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const TmaDesc* desc, u32 bar, int c0, int c1,
                                                      unsigned short cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%3, %4}], [%2], %5;"
      ::"r"(smem_addr(dst)), "l"(desc), "r"(bar), "r"(c0), "r"(c1), "h"(cta_mask)
      : "memory");
}

__device__ __forceinline__ void tma_store_2d(const TmaDesc* desc, const void* src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
               ::"l"(desc), "r"(smem_addr(src)), "r"(c0), "r"(c1)
               : "memory");
}

__device__ __forceinline__ void tma_store_3d(const TmaDesc* desc, const void* src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"(desc), "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

// Adds the shared-memory box into the 3-D tensor at (c0 inner, c1, c2) (fp32 add in L2).
__device__ __forceinline__ void tma_reduce_add_3d(const TmaDesc* desc, const void* src, int c0, int c1, int c2) {
  asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"(desc), "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

// Wait until every committed store has finished reading shared memory.
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}

// Wait until every committed store is complete (global writes visible).
__device__ __forceinline__ void tma_store_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// 16 bytes from global to shared memory, bypassing L1.
__device__ __forceinline__ void cp_async_16(u32 dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

// One arrival on `bar` once every cp.async this thread issued before has landed (the barrier's
// count includes it).
__device__ __forceinline__ void cp_async_arrive_noinc(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}

// Generic-proxy writes to shared memory, made visible to the async proxy (TMA, wgmma).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// ---- barriers and registers ---------------------------------------------------------------
__device__ __forceinline__ void named_barrier_sync(int id, int num_threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// ---- wgmma control ------------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accumulator reads/writes across wgmma issue and wait.
__device__ __forceinline__ void fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }

// Shared-memory matrix descriptor: K-major tile whose rows are one swizzle span of kRowBytes (32,
// 64 or 128), as TMA writes it with the same swizzle; 8-row core groups 8 x kRowBytes apart. The
// tile must start aligned to that (the swizzle pattern's repeat). A k32 step of 8-bit operands
// advances the start address by 32 bytes (descriptor + 2) inside the row.
// The fields other than the start address:
template <int kRowBytes>
__host__ __device__ constexpr u64 smem_desc_k_major_layout() {
  static_assert(kRowBytes == 32 || kRowBytes == 64 || kRowBytes == 128, "rows of one swizzle span");
  constexpr u64 kSwizzleMode = kRowBytes == 128 ? 1 : kRowBytes == 64 ? 2 : 3;  // 0 would be none
  return static_cast<u64>(1) << 16                    // leading byte offset: unused for this layout
         | static_cast<u64>(8 * kRowBytes >> 4) << 32  // stride byte offset: 8 rows
         | kSwizzleMode << 62;
}

template <int kRowBytes>
__device__ __forceinline__ u64 smem_desc_k_major_swizzled(const void* tile) {
  return smem_desc_k_major_layout<kRowBytes>() | static_cast<u64>((smem_addr(tile) & 0x3FFFF) >> 4);
}

// 128-byte rows in the 128B swizzle, 8-row core groups 1024 B apart; the tile starts 1024-B aligned.
__device__ __forceinline__ u64 smem_desc_k128_sw128(const void* tile) {
  return smem_desc_k_major_swizzled<128>(tile);
}

// ---- conversions and stores ---------------------------------------------------------------
// A bf16 value as its bits (no toolkit header here): a 2-byte store.
struct Bf16 {
  unsigned short bits;
};

__device__ __forceinline__ Bf16 to_bf16(float x) {  // round to nearest even; infinities stay
  Bf16 r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float ld_shared_f32(u32 addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ void st_shared_f32(u32 addr, float v) {
  asm volatile("st.shared.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}

__device__ __forceinline__ u32 ld_shared_u32(u32 addr) {
  u32 v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ void st_shared_u32(u32 addr, u32 v) {
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}

// Four 8x8 blocks of 16-bit values from a warp: register j of lane l holds row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1 of block j; lane l gives the address of row l % 8 of block l / 8.
__device__ __forceinline__ void stsm_x4(u32 addr, u32 v0, u32 v1, u32 v2, u32 v3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};"
               ::"r"(addr), "r"(v0), "r"(v1), "r"(v2), "r"(v3) : "memory");
}

__device__ __forceinline__ void st_shared_u16(u32 addr, u32 v) {
  asm volatile("st.shared.b16 [%0], %1;" ::"r"(addr), "h"(static_cast<unsigned short>(v)) : "memory");
}

// Two floats to FP8 e4m3 (round to nearest even, saturated to +-448): first in the low byte (the
// lower address), second in the high byte.
__device__ __forceinline__ u32 e4m3x2(float first, float second) {
  unsigned short r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(second), "f"(first));
  return r;
}

__device__ __forceinline__ void st_shared_f32x2(u32 addr, float lo, float hi) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(lo), "f"(hi) : "memory");
}

__device__ __forceinline__ u32 ld_shared_u8(u32 addr) {
  u32 v;
  asm volatile("ld.shared.u8 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ u32 ld_shared_u16(u32 addr) {
  u32 v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ void st_shared_u8(u32 addr, u32 v) {
  asm volatile("st.shared.u8 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}

__device__ __forceinline__ uint4 ld_shared_v4(u32 addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
               : "memory");
  return v;
}

__device__ __forceinline__ void st_shared_v4(u32 addr, u32 x, u32 y, u32 z, u32 w) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(x), "r"(y), "r"(z), "r"(w) : "memory");
}

__device__ __forceinline__ void st_global_v4(void* ptr, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// Arrives on named barrier `id` (of `num_threads` threads) without waiting for it.
__device__ __forceinline__ void named_barrier_arrive(int id, int num_threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

// Named barrier `id` over `num_threads` threads that also returns whether `pred` held in all of them.
__device__ __forceinline__ bool named_barrier_and(int id, int num_threads, bool pred) {
  u32 all;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.and.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}"
      : "=r"(all) : "r"(static_cast<u32>(pred)), "r"(id), "r"(num_threads) : "memory");
  return all != 0;
}

// *ptr += v at GPU scope with release semantics: writes ordered before it are visible to a
// reader that acquires the new value.
__device__ __forceinline__ void red_release_gpu_add(int* ptr, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;" ::"l"(ptr), "r"(v) : "memory");
}

}  // namespace mategemm
