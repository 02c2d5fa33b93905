// The contract between the torch binding (binding.cpp) and the kernels (*.cu): plain structs of
// sizes and raw pointers, and one launcher per op. Nothing here needs torch or CUDA headers, so
// the kernels compile with nvcc alone and the binding with the host compiler alone.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ssmbench {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// The most state elements one channel may carry: threads per channel (at most a warp) times the
// states each thread keeps in registers.
constexpr int kMaxDState = 256;

// Mamba-1 selective scan forward. Every tensor is contiguous:
// u, delta, z, out: (batch, dim, seqlen); A: (dim, dstate); B, C: (batch, groups, dstate, seqlen);
// D, delta_bias: (dim,); last_state: (batch, dim, dstate). A, D, delta_bias and last_state are
// float32; the others are of type `dtype`. Optional pointers are null when absent.
// workspace: selective_scan_workspace_bytes(params) bytes of device memory (null when that is 0).
struct ScanParams {
  int batch, dim, dstate, seqlen, groups;
  DType dtype;
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* D;
  const void* z;
  const float* delta_bias;
  bool delta_softplus;
  void* out;
  float* last_state;
  float* workspace;
};

// One decode step, state updated in place. Mamba-1 is the case heads = groups = 1.
// x, dt, z, out: (batch, heads, headdim), contiguous; A: (heads, headdim, dstate), float32;
// B, C: (batch, groups, dstate), contiguous; D, dt_bias: (heads, headdim), float32;
// state: (batch, heads, headdim, dstate) at the given element strides, of type `state_dtype`.
struct StateUpdateParams {
  int batch, heads, headdim, dstate, groups;
  DType dtype, state_dtype;
  void* state;
  int64_t state_stride[4];
  const void* x;
  const void* dt;
  const float* A;
  const void* B;
  const void* C;
  const float* D;
  const void* z;
  const float* dt_bias;
  bool dt_softplus;
  void* out;
};

// Each launcher enqueues its kernel on `stream` (a cudaStream_t) and returns null, or the text of
// the error that stopped it.
const char* selective_scan_fwd(const ScanParams& params, void* stream);
// Scratch memory the scan needs for these sizes on the current device (0 when none).
size_t selective_scan_workspace_bytes(const ScanParams& params);
const char* selective_state_update(const StateUpdateParams& params, void* stream);

}  // namespace ssmbench
