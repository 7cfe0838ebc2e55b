// mbarriers as a type: one barrier by its 32-bit shared-memory address, and a ring of one barrier
// per pipeline stage (8 bytes apart).
#pragma once
#include "ptx.cuh"

namespace mategemm {

struct Barrier {
  u32 addr;

  __device__ __forceinline__ void init(u32 arrivals) const { mbar_init(addr, arrivals); }
  __device__ __forceinline__ void wait(u32 parity) const { mbar_wait(addr, parity); }
  __device__ __forceinline__ void arrive() const { mbar_arrive(addr); }
  // Arrives and announces the bytes the TMA loads of this phase will bring.
  __device__ __forceinline__ void arrive_expect_tx(u32 bytes) const { mbar_arrive_expect_tx(addr, bytes); }
  // Arrives on the barrier at the same address in CTA `cta` of the cluster.
  __device__ __forceinline__ void arrive_on(u32 cta) const { mbar_arrive_cluster(addr, cta); }
};

struct BarrierRing {
  u32 base;

  __device__ __forceinline__ Barrier operator[](int stage) const { return Barrier{base + stage * 8}; }
};

}  // namespace mategemm
