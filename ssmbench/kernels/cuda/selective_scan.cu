// Mamba-1 selective scan, forward only.
//
// One thread block per (batch, block of channels). Each channel's state lives in float32
// registers, spread over a group of lanes (common.cuh); the block walks the sequence in chunks:
// it stages the chunk's u, delta (discretised on load: + delta_bias, softplus), z, B and C in
// shared memory with coalesced reads along L, runs the recurrence over the chunk, and writes the
// chunk's outputs back coalesced.
#include <algorithm>

#include "common.cuh"

namespace ssmbench {
namespace {

constexpr int kBlockThreads = 128;
constexpr int kMaxChunk = 64;
constexpr int kSmemBytes = 48 * 1024;  // the most a kernel may use without opting in

struct ScanLayout {
  int dstate;
  int lanes;        // lanes per channel
  int rows;         // channels per block
  int chunk;        // steps staged per pass
  int span_groups;  // B/C groups one block's channels can touch
  int threads;

  size_t smem_bytes() const {
    return sizeof(float) * size_t(chunk + 1) * (3 * rows + 2 * span_groups * dstate);
  }
};

template <typename T, int kStates>
__global__ void __launch_bounds__(kBlockThreads)
selective_scan_fwd_kernel(ScanParams p, ScanLayout lay) {
  extern __shared__ float smem[];
  const int n = p.dstate, L = p.seqlen, lanes = lay.lanes, rows = lay.rows, chunk = lay.chunk;
  // One padding column keeps the lanes of a group (which read rows `tp` apart) on distinct banks.
  const int tp = chunk + 1;
  float* s_u = smem;
  float* s_dt = s_u + rows * tp;
  float* s_zy = s_dt + rows * tp;  // z on the way in, y on the way out
  float* s_B = s_zy + rows * tp;
  float* s_C = s_B + lay.span_groups * n * tp;

  const int b = blockIdx.y;
  const int d0 = blockIdx.x * rows;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const int d = d0 + row;
  // Threads past the block's channels still run the loop: the group sums need the whole warp.
  const bool valid = row < rows && d < p.dim;
  const int r = valid ? row : 0;
  const int per_group = p.dim / p.groups;
  const int g0 = d0 / per_group;
  const int gl = valid ? d / per_group - g0 : 0;

  float a2[kStates], h[kStates];
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    const int s = i * lanes + lane;
    a2[i] = valid && s < n ? p.A[size_t(d) * n + s] * kLog2e : 0.f;
    h[i] = 0.f;
  }
  const float Dv = valid && p.D ? p.D[d] : 0.f;

  const size_t seq_base = size_t(b) * p.dim * L;
  const T* u = static_cast<const T*>(p.u) + seq_base;
  const T* delta = static_cast<const T*>(p.delta) + seq_base;
  const T* z = p.z ? static_cast<const T*>(p.z) + seq_base : nullptr;
  T* out = static_cast<T*>(p.out) + seq_base;
  const size_t bc_base = (size_t(b) * p.groups + g0) * n * L;
  const T* B = static_cast<const T*>(p.B) + bc_base;
  const T* C = static_cast<const T*>(p.C) + bc_base;
  const int bc_rows = min(lay.span_groups, p.groups - g0) * n;

  for (int c0 = 0; c0 < L; c0 += chunk) {
    const int len = min(chunk, L - c0);
    __syncthreads();  // the previous chunk's outputs have been stored
    for (int i = threadIdx.x; i < rows * chunk; i += blockDim.x) {
      const int rr = i / chunk, t = i % chunk, dd = d0 + rr;
      if (t >= len || dd >= p.dim) continue;
      const size_t off = size_t(dd) * L + c0 + t;
      float dt = to_float(delta[off]);
      if (p.delta_bias) dt += p.delta_bias[dd];
      if (p.delta_softplus) dt = softplus(dt);
      s_u[rr * tp + t] = to_float(u[off]);
      s_dt[rr * tp + t] = dt;
      s_zy[rr * tp + t] = z ? to_float(z[off]) : 0.f;
    }
    for (int i = threadIdx.x; i < bc_rows * chunk; i += blockDim.x) {
      const int k = i / chunk, t = i % chunk;
      if (t >= len) continue;
      const size_t off = size_t(k) * L + c0 + t;
      s_B[k * tp + t] = to_float(B[off]);
      s_C[k * tp + t] = to_float(C[off]);
    }
    __syncthreads();

    const float* sB = s_B + gl * n * tp;
    const float* sC = s_C + gl * n * tp;
    for (int t = 0; t < len; ++t) {
      const float dt = s_dt[r * tp + t];
      const float x = s_u[r * tp + t];
      const float dtx = dt * x;
      float y = 0.f;
#pragma unroll
      for (int i = 0; i < kStates; ++i) {
        const int s = i * lanes + lane;
        if (s < n) {
          h[i] = exp2f(dt * a2[i]) * h[i] + dtx * sB[s * tp + t];
          y += h[i] * sC[s * tp + t];
        }
      }
      y = group_sum(y, lanes);
      if (valid && lane == 0) {
        y += Dv * x;
        if (z) y *= silu(s_zy[r * tp + t]);
        s_zy[r * tp + t] = y;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rows * chunk; i += blockDim.x) {
      const int rr = i / chunk, t = i % chunk, dd = d0 + rr;
      if (t < len && dd < p.dim) out[size_t(dd) * L + c0 + t] = from_float<T>(s_zy[rr * tp + t]);
    }
  }

  if (p.last_state && valid) {
    float* last = p.last_state + (size_t(b) * p.dim + d) * n;
#pragma unroll
    for (int i = 0; i < kStates; ++i) {
      const int s = i * lanes + lane;
      if (s < n) last[s] = h[i];
    }
  }
}

int multiprocessors() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return std::max(count, 1);
}

template <int kStates>
const char* launch(const ScanParams& p, cudaStream_t stream) {
  ScanLayout lay{};
  lay.dstate = p.dstate;
  lay.lanes = lanes_for(p.dstate, kStates);
  lay.rows = kBlockThreads / lay.lanes;
  while (lay.rows > 1 && lay.rows / 2 >= p.dim) lay.rows /= 2;
  // With few channels, smaller blocks keep more multiprocessors busy (down to one warp).
  const int sms = multiprocessors();
  auto blocks = [&](int rows) { return size_t(p.batch) * ((p.dim + rows - 1) / rows); };
  while (lay.rows * lay.lanes > 32 && blocks(lay.rows) < size_t(2 * sms)) lay.rows /= 2;
  lay.threads = std::max(32, lay.rows * lay.lanes);
  const int per_group = p.dim / p.groups;
  lay.span_groups = std::min(p.groups, (lay.rows + per_group - 2) / per_group + 1);
  for (lay.chunk = kMaxChunk; lay.chunk > 1 && lay.smem_bytes() > kSmemBytes; lay.chunk /= 2) {
  }
  if (lay.smem_bytes() > kSmemBytes) return "selective_scan: B and C of one block do not fit in shared memory";

  const dim3 grid((p.dim + lay.rows - 1) / lay.rows, p.batch);
  return dispatch_dtype(p.dtype, [&](auto tag) -> const char* {
    using T = decltype(tag);
    selective_scan_fwd_kernel<T, kStates><<<grid, lay.threads, lay.smem_bytes(), stream>>>(p, lay);
    return launch_status();
  });
}

}  // namespace

const char* selective_scan_fwd(const ScanParams& p, void* stream) {
  if (p.dstate < 1 || p.dstate > kMaxDState) return "selective_scan: dstate must be in 1..256";
  if (p.groups < 1 || p.dim % p.groups != 0) return "selective_scan: dim must be a multiple of groups";
  if (p.batch == 0 || p.dim == 0 || p.seqlen == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  // Four registers per lane while the group fits in half a warp, eight for the largest states.
  return p.dstate <= 64 ? launch<4>(p, s) : launch<8>(p, s);
}

}  // namespace ssmbench
