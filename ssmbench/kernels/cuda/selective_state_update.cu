// One decode step of the selective scan (Mamba-1 and Mamba-2 layouts), state updated in place.
//
// A row is one (batch, head, channel); its dstate elements are spread over a group of lanes
// (common.cuh), so the state is read and written along its contiguous axis by neighbouring
// lanes. The output uses the float32 state before it is rounded to the state's dtype.
#include "common.cuh"

namespace ssmbench {
namespace {

constexpr int kBlockThreads = 128;

template <typename T, typename TS, int kStates>
__global__ void __launch_bounds__(kBlockThreads)
selective_state_update_kernel(StateUpdateParams p, int lanes) {
  const int rows_per_block = blockDim.x / lanes;
  const int local = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const long long rows = (long long)p.batch * p.heads * p.headdim;
  const long long row = (long long)blockIdx.x * rows_per_block + local;
  // Threads past the last row still join the group sum, which needs the whole warp.
  const bool valid = row < rows;
  const long long rr = valid ? row : 0;
  const int hp = int(rr % (p.heads * p.headdim));  // (head, channel)
  const int bi = int(rr / (p.heads * p.headdim));
  const int hi = hp / p.headdim, pi = hp % p.headdim;
  const int gi = hi / (p.heads / p.groups);

  const float x = to_float(static_cast<const T*>(p.x)[rr]);
  float dt = to_float(static_cast<const T*>(p.dt)[rr]);
  if (p.dt_bias) dt += p.dt_bias[hp];
  if (p.dt_softplus) dt = softplus(dt);
  const float dtx = dt * x;

  TS* state = static_cast<TS*>(p.state) + bi * p.state_stride[0] + hi * p.state_stride[1] +
              pi * p.state_stride[2];
  const float* A = p.A + size_t(hp) * p.dstate;
  const size_t bc = (size_t(bi) * p.groups + gi) * p.dstate;
  const T* B = static_cast<const T*>(p.B) + bc;
  const T* C = static_cast<const T*>(p.C) + bc;

  float y = 0.f;
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    const int s = i * lanes + lane;
    if (valid && s < p.dstate) {
      TS* slot = state + s * p.state_stride[3];
      const float h = exp2f(dt * A[s] * kLog2e) * to_float(*slot) + dtx * to_float(B[s]);
      *slot = from_float<TS>(h);
      y += h * to_float(C[s]);
    }
  }
  y = group_sum(y, lanes);
  if (valid && lane == 0) {
    if (p.D) y += p.D[hp] * x;
    if (p.z) y *= silu(to_float(static_cast<const T*>(p.z)[rr]));
    static_cast<T*>(p.out)[rr] = from_float<T>(y);
  }
}

template <int kStates>
const char* launch(const StateUpdateParams& p, cudaStream_t stream) {
  const int lanes = lanes_for(p.dstate, kStates);
  const long long rows = (long long)p.batch * p.heads * p.headdim;
  const int rows_per_block = kBlockThreads / lanes;
  const long long blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7fffffffLL) return "selective_state_update: too many rows for one grid";
  return dispatch_dtype(p.dtype, [&](auto x_tag) -> const char* {
    return dispatch_dtype(p.state_dtype, [&](auto state_tag) -> const char* {
      using T = decltype(x_tag);
      using TS = decltype(state_tag);
      selective_state_update_kernel<T, TS, kStates>
          <<<unsigned(blocks), kBlockThreads, 0, stream>>>(p, lanes);
      return launch_status();
    });
  });
}

}  // namespace

const char* selective_state_update(const StateUpdateParams& p, void* stream) {
  if (p.dstate < 1 || p.dstate > kMaxDState) return "selective_state_update: dstate must be in 1..256";
  if (p.groups < 1 || p.heads % p.groups != 0) {
    return "selective_state_update: heads must be a multiple of groups";
  }
  if (p.batch == 0 || p.heads == 0 || p.headdim == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return p.dstate <= 64 ? launch<4>(p, s) : launch<8>(p, s);
}

}  // namespace ssmbench
