// Device helpers shared by the kernels: element conversion, the activations, and the layout in
// which a group of lanes shares one channel's state.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ssm_launch.h"

namespace ssmbench {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// torch.nn.functional.softplus with its default threshold of 20, where it returns x itself.
__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

constexpr float kLog2e = 1.4426950408889634f;

// One channel's state is spread over `lanes` consecutive lanes of a warp (a power of two up to
// 32), each keeping kStates of the dstate elements in registers: lane l holds elements
// l, l + lanes, l + 2 * lanes, ... so that a group reads neighbouring elements together.
// The whole warp must call this (full mask); groups never straddle a warp.
__device__ __forceinline__ float group_sum(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Lanes per channel: the fewest (a power of two) whose registers hold dstate elements.
inline int lanes_for(int dstate, int states_per_lane) {
  int lanes = 1;
  while (lanes * states_per_lane < dstate) lanes *= 2;
  return lanes;
}

// Calls f(T{}) with the element type of `dtype`.
template <typename F>
const char* dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat16: return f(__half{});
  }
  return "unknown dtype";
}

inline const char* launch_status() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace ssmbench
