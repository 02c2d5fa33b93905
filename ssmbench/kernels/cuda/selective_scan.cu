// Mamba-1 selective scan, forward only.
//
// One thread block per (batch, block of channels). Each channel's state lives in float32
// registers, spread over a group of lanes (common.cuh); the block walks the sequence in chunks:
// it stages the chunk's u, delta (discretised on load: + delta_bias, softplus), z, B and C in
// shared memory with coalesced reads along L, runs the recurrence over the chunk, and writes the
// chunk's outputs back coalesced.
//
// With few channels (batch x dim small) that leaves too few blocks, each a long serial chain, to
// keep the GPU's loads in flight. The sequence is then cut into segments: each segment is
// scanned from a zero state keeping its final state and sum of delta; a second kernel chains the
// segments' states; the scan then runs again from each segment's entering state and writes the
// outputs. (The Triton kernel does not: there a second pass cost more than it gained, see
// kernels/triton/selective_scan.py.)
#include <algorithm>

#include "common.cuh"

namespace ssmbench {
namespace {

constexpr int kBlockThreads = 128;
constexpr int kMaxChunk = 64;
constexpr int kSmemBytes = 48 * 1024;  // the most a kernel may use without opting in
// Segments are powers of two no shorter than this (a multiple of every chunk).
constexpr int kMinSegment = 256;
// Blocks wanted per multiprocessor before the sequence is cut: enough loads in flight to hide
// their latency.
constexpr int kBlocksPerSM = 16;
constexpr int kPassThreads = 256;

struct ScanLayout {
  int dstate;
  int lanes;        // lanes per channel
  int rows;         // channels per block
  int chunk;        // steps staged per pass
  int span_groups;  // B/C groups one block's channels can touch
  int seg_len, n_segs;

  size_t smem_bytes() const {
    return sizeof(float) * size_t(chunk + 1) * (3 * rows + 2 * span_groups * dstate);
  }
};

// The segments' scratch, carved from the workspace: the state entering each segment and the state
// each reaches from zero, (batch, dim, n_segs, dstate); the sum of delta over each,
// (batch, dim, n_segs). All null with one segment.
struct Segments {
  float* in;
  float* state;
  float* dt_sum;
  bool state_only;  // the first pass: keep the segment's final state and sum of delta, no outputs

  static size_t rows(const ScanParams& p, const ScanLayout& lay) { return size_t(p.batch) * p.dim * lay.n_segs; }
  static size_t floats(const ScanParams& p, const ScanLayout& lay) {
    return lay.n_segs == 1 ? 0 : rows(p, lay) * (2 * size_t(p.dstate) + 1);
  }
  static Segments carve(float* workspace, const ScanParams& p, const ScanLayout& lay) {
    const size_t states = rows(p, lay) * p.dstate;
    return {workspace, workspace + states, workspace + 2 * states, false};
  }
};

template <typename T, int kStates>
__global__ void __launch_bounds__(kBlockThreads)
selective_scan_fwd_kernel(ScanParams p, ScanLayout lay, Segments seg) {
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
  // Threads past the block's channels in a warp that holds some still run the recurrence: the
  // group sums need the whole warp.
  const bool valid = row < rows && d < p.dim;
  const bool computes = threadIdx.x / 32 * 32 < rows * lanes;
  const int r = valid ? row : 0;
  const int per_group = p.dim / p.groups;
  const int g0 = d0 / per_group;
  const int gl = valid ? d / per_group - g0 : 0;

  const int segment = blockIdx.z;
  // This channel's row of the segments' scratch.
  const size_t seg_row = (size_t(b) * p.dim + (valid ? d : 0)) * lay.n_segs + segment;
  const bool outputs = !seg.state_only;
  float a2[kStates], h[kStates];
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    const int s = i * lanes + lane;
    a2[i] = valid && s < n ? p.A[size_t(d) * n + s] * kLog2e : 0.f;
    h[i] = valid && s < n && seg.in && outputs ? seg.in[seg_row * n + s] : 0.f;
  }
  float dt_sum = 0.f;
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

  const int seg_end = min(L, (segment + 1) * lay.seg_len);
  for (int c0 = segment * lay.seg_len; c0 < seg_end; c0 += chunk) {
    const int len = min(chunk, seg_end - c0);
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
      s_zy[rr * tp + t] = z && outputs ? to_float(z[off]) : 0.f;
    }
    for (int i = threadIdx.x; i < bc_rows * chunk; i += blockDim.x) {
      const int k = i / chunk, t = i % chunk;
      if (t >= len) continue;
      const size_t off = size_t(k) * L + c0 + t;
      s_B[k * tp + t] = to_float(B[off]);
      if (outputs) s_C[k * tp + t] = to_float(C[off]);
    }
    __syncthreads();

    const float* sB = s_B + gl * n * tp;
    const float* sC = s_C + gl * n * tp;
    // Warps holding no channel only helped stage the chunk (the test is uniform per warp).
    for (int t = 0; t < (computes ? len : 0); ++t) {
      const float dt = s_dt[r * tp + t];
      const float x = s_u[r * tp + t];
      const float dtx = dt * x;
      dt_sum += dt;
      float y = 0.f;
#pragma unroll
      for (int i = 0; i < kStates; ++i) {
        const int s = i * lanes + lane;
        if (s < n) {
          h[i] = exp2f(dt * a2[i]) * h[i] + dtx * sB[s * tp + t];
          if (outputs) y += h[i] * sC[s * tp + t];
        }
      }
      if (!outputs) continue;  // uniform across the block: the group sum below is skipped whole
      y = group_sum(y, lanes);
      if (valid && lane == 0) {
        y += Dv * x;
        if (z) y *= silu(s_zy[r * tp + t]);
        s_zy[r * tp + t] = y;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; outputs && i < rows * chunk; i += blockDim.x) {
      const int rr = i / chunk, t = i % chunk, dd = d0 + rr;
      if (t < len && dd < p.dim) out[size_t(dd) * L + c0 + t] = from_float<T>(s_zy[rr * tp + t]);
    }
  }

  if (seg.state_only && valid) {
#pragma unroll
    for (int i = 0; i < kStates; ++i) {
      const int s = i * lanes + lane;
      if (s < n) seg.state[seg_row * n + s] = h[i];
    }
    if (lane == 0) seg.dt_sum[seg_row] = dt_sum;
  }
  // With segments, the last state is the chaining kernel's to write.
  if (p.last_state && valid && lay.n_segs == 1) {
    float* last = p.last_state + (size_t(b) * p.dim + d) * n;
#pragma unroll
    for (int i = 0; i < kStates; ++i) {
      const int s = i * lanes + lane;
      if (s < n) last[s] = h[i];
    }
  }
}

// Chains the segments: in[s] = state entering segment s; in[s + 1] = exp(A dt_sum[s]) in[s] +
// state[s]. One thread per (batch, channel, state element); the state after the last segment is
// the scan's last state.
__global__ void __launch_bounds__(kPassThreads)
segment_passing_kernel(ScanParams p, int n_segs, Segments seg) {
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int n = p.dstate;
  if (idx >= size_t(p.batch) * p.dim * n) return;
  const size_t row = idx / n;  // batch * dim + channel
  const int s = int(idx % n);
  const float a2 = p.A[(row % p.dim) * n + s] * kLog2e;
  float h = 0.f;
  for (int k = 0; k < n_segs; ++k) {
    const size_t at = (row * n_segs + k) * n + s;
    seg.in[at] = h;
    h = exp2f(seg.dt_sum[row * n_segs + k] * a2) * h + seg.state[at];
  }
  if (p.last_state) p.last_state[idx] = h;
}

int multiprocessors() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return std::max(count, 1);
}

int states_per_lane(int dstate) {
  // Four registers per lane while the group fits in half a warp, eight for the largest states.
  return dstate <= 64 ? 4 : 8;
}

ScanLayout plan(const ScanParams& p) {
  ScanLayout lay{};
  lay.dstate = p.dstate;
  lay.lanes = lanes_for(p.dstate, states_per_lane(p.dstate));
  lay.rows = kBlockThreads / lay.lanes;
  while (lay.rows > 1 && lay.rows / 2 >= p.dim) lay.rows /= 2;
  // With few channels, fewer channels per block keep more multiprocessors busy (down to one
  // warp's worth). Every block still has kBlockThreads threads to stage its chunks: staging is a
  // chain of dependent global loads, and more threads put more of them in flight.
  const int sms = multiprocessors();
  auto blocks = [&](int rows) { return size_t(p.batch) * ((p.dim + rows - 1) / rows); };
  while (lay.rows * lay.lanes > 32 && blocks(lay.rows) < size_t(2 * sms)) lay.rows /= 2;
  const int per_group = p.dim / p.groups;
  lay.span_groups = std::min(p.groups, (lay.rows + per_group - 2) / per_group + 1);
  for (lay.chunk = kMaxChunk; lay.chunk > 1 && lay.smem_bytes() > kSmemBytes; lay.chunk /= 2) {
  }
  lay.seg_len = p.seqlen;
  lay.n_segs = 1;
  const size_t wanted = size_t(kBlocksPerSM) * sms, have = blocks(lay.rows);
  if (have < wanted && p.seqlen > 2 * kMinSegment) {
    int segs = 1;
    while (size_t(segs) * have < wanted) segs *= 2;
    int len = kMinSegment;
    while (size_t(len) * segs < size_t(p.seqlen)) len *= 2;
    lay.seg_len = len;
    lay.n_segs = (p.seqlen + len - 1) / len;
  }
  return lay;
}

template <int kStates>
const char* launch(const ScanParams& p, const ScanLayout& lay, cudaStream_t stream) {
  if (lay.smem_bytes() > kSmemBytes) return "selective_scan: B and C of one block do not fit in shared memory";
  Segments seg{};
  if (lay.n_segs > 1) {
    if (!p.workspace) return "selective_scan: no workspace for the segments";
    seg = Segments::carve(p.workspace, p, lay);
  }
  const dim3 grid((p.dim + lay.rows - 1) / lay.rows, p.batch, lay.n_segs);
  auto scan = [&](Segments pass) {
    return dispatch_dtype(p.dtype, [&](auto tag) -> const char* {
      using T = decltype(tag);
      selective_scan_fwd_kernel<T, kStates><<<grid, kBlockThreads, lay.smem_bytes(), stream>>>(p, lay, pass);
      return launch_status();
    });
  };
  if (lay.n_segs == 1) return scan(seg);
  Segments first = seg;
  first.state_only = true;
  if (const char* error = scan(first)) return error;
  const size_t threads = size_t(p.batch) * p.dim * p.dstate;
  segment_passing_kernel<<<unsigned((threads + kPassThreads - 1) / kPassThreads), kPassThreads, 0, stream>>>(
      p, lay.n_segs, seg);
  if (const char* error = launch_status()) return error;
  return scan(seg);
}

const char* refusal(const ScanParams& p) {
  if (p.dstate < 1 || p.dstate > kMaxDState) return "selective_scan: dstate must be in 1..256";
  if (p.groups < 1 || p.dim % p.groups != 0) return "selective_scan: dim must be a multiple of groups";
  return nullptr;
}

bool empty(const ScanParams& p) { return p.batch == 0 || p.dim == 0 || p.seqlen == 0; }

}  // namespace

const char* selective_scan_fwd(const ScanParams& p, void* stream) {
  if (const char* error = refusal(p)) return error;
  if (empty(p)) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  const ScanLayout lay = plan(p);
  return states_per_lane(p.dstate) == 4 ? launch<4>(p, lay, s) : launch<8>(p, lay, s);
}

size_t selective_scan_workspace_bytes(const ScanParams& p) {
  // Sizes selective_scan_fwd refuses or has nothing to do for need no scratch.
  if (refusal(p) || empty(p)) return 0;
  return sizeof(float) * Segments::floats(p, plan(p));
}

}  // namespace ssmbench
