// Launch helpers shared by the kernel files csrc/cuda/*_cuda.cu of every family
// (no torch headers): the block size and the grid of grid-stride loops.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"

namespace dtp_fast {
namespace cuda {

constexpr int kThreads = 256;

// Blocks of kThreads for `total` work items, for grid-stride loops.
inline unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{1} << 20));
}

}  // namespace cuda
}  // namespace dtp_fast
