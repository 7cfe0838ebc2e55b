// Position in a ring of shared-memory stages; the parity flips each time the ring wraps.
#pragma once
#include "ptx.cuh"

namespace mategemm {

template <int kNumStages>
struct PipelineState {
  int stage = 0;
  u32 phase = 0;

  __device__ __forceinline__ void advance() {
    if (++stage == kNumStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

}  // namespace mategemm
