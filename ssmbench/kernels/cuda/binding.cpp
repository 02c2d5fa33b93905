// Torch binding of the kernels: checks the tensors, allocates the outputs and fills the launch
// structs of ssm_launch.h. The caller passes the CUDA stream (as an integer) and makes the
// tensors' device current, so this file needs no CUDA headers.
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "ssm_launch.h"

namespace {

using ssmbench::DType;

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
           const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

const float* optional_weight(const std::optional<at::Tensor>& t, const char* name,
                             at::IntArrayRef shape, const at::Tensor& like) {
  if (!t.has_value()) return nullptr;
  check(*t, name, shape, at::kFloat, like);
  return t->data_ptr<float>();
}

const void* optional_input(const std::optional<at::Tensor>& t, const char* name,
                           at::IntArrayRef shape, const at::Tensor& like) {
  if (!t.has_value()) return nullptr;
  check(*t, name, shape, like.scalar_type(), like);
  return t->data_ptr();
}

void run(const char* error, const char* op) {
  TORCH_CHECK(error == nullptr, op, " kernel failed: ", error ? error : "");
}

// u, delta, z: (b, d, l); A: (d, n) float32; B, C: (b, g, n, l); D, delta_bias: (d,) float32.
// Returns [out (b, d, l)] and, with return_last_state, the float32 state (b, d, n) after step l.
std::vector<at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C,
                                           const std::optional<at::Tensor>& D,
                                           const std::optional<at::Tensor>& z,
                                           const std::optional<at::Tensor>& delta_bias,
                                           bool delta_softplus, bool return_last_state,
                                           int64_t stream) {
  TORCH_CHECK(u.is_cuda(), "u must be a CUDA tensor");
  TORCH_CHECK(u.dim() == 3 && B.dim() == 4, "u must be (b, d, l) and B (b, g, n, l)");
  const int64_t b = u.size(0), d = u.size(1), l = u.size(2), g = B.size(1), n = B.size(2);
  check(u, "u", {b, d, l}, u.scalar_type(), u);
  check(delta, "delta", {b, d, l}, u.scalar_type(), u);
  check(A, "A", {d, n}, at::kFloat, u);
  check(B, "B", {b, g, n, l}, u.scalar_type(), u);
  check(C, "C", {b, g, n, l}, u.scalar_type(), u);

  ssmbench::ScanParams p{};
  p.batch = int(b);
  p.dim = int(d);
  p.dstate = int(n);
  p.seqlen = int(l);
  p.groups = int(g);
  p.dtype = dtype_of(u, "u");
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.A = A.data_ptr<float>();
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.D = optional_weight(D, "D", {d}, u);
  p.z = optional_input(z, "z", {b, d, l}, u);
  p.delta_bias = optional_weight(delta_bias, "delta_bias", {d}, u);
  p.delta_softplus = delta_softplus;

  at::Tensor out = at::empty_like(u);
  p.out = out.data_ptr();
  std::vector<at::Tensor> result{out};
  if (return_last_state) {
    at::Tensor last = at::empty({b, d, n}, u.options().dtype(at::kFloat));
    p.last_state = last.data_ptr<float>();
    result.push_back(last);
  }
  at::Tensor workspace;
  if (const size_t bytes = ssmbench::selective_scan_workspace_bytes(p)) {
    workspace = at::empty({int64_t(bytes / sizeof(float))}, u.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  run(ssmbench::selective_scan_fwd(p, reinterpret_cast<void*>(stream)), "selective_scan");
  return result;
}

// state: (b, h, p, n), any strides, float32/bfloat16/float16, updated in place;
// x, dt, z: (b, h, p); A: (h, p, n) float32; B, C: (b, g, n); D, dt_bias: (h, p) float32.
at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x,
                                  const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                  const at::Tensor& C, const std::optional<at::Tensor>& D,
                                  const std::optional<at::Tensor>& z,
                                  const std::optional<at::Tensor>& dt_bias, bool dt_softplus,
                                  int64_t stream) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
  TORCH_CHECK(state.dim() == 4 && B.dim() == 3, "state must be (b, h, p, n) and B (b, g, n)");
  const int64_t b = state.size(0), h = state.size(1), hd = state.size(2), n = state.size(3);
  const int64_t g = B.size(1);
  TORCH_CHECK(state.device() == x.device(), "state is on ", state.device(), ", x on ", x.device());
  check(x, "x", {b, h, hd}, x.scalar_type(), x);
  check(dt, "dt", {b, h, hd}, x.scalar_type(), x);
  check(A, "A", {h, hd, n}, at::kFloat, x);
  check(B, "B", {b, g, n}, x.scalar_type(), x);
  check(C, "C", {b, g, n}, x.scalar_type(), x);

  ssmbench::StateUpdateParams p{};
  p.batch = int(b);
  p.heads = int(h);
  p.headdim = int(hd);
  p.dstate = int(n);
  p.groups = int(g);
  p.dtype = dtype_of(x, "x");
  p.state_dtype = dtype_of(state, "state");
  p.state = state.data_ptr();
  for (int i = 0; i < 4; ++i) p.state_stride[i] = state.stride(i);
  p.x = x.data_ptr();
  p.dt = dt.data_ptr();
  p.A = A.data_ptr<float>();
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.D = optional_weight(D, "D", {h, hd}, x);
  p.z = optional_input(z, "z", {b, h, hd}, x);
  p.dt_bias = optional_weight(dt_bias, "dt_bias", {h, hd}, x);
  p.dt_softplus = dt_softplus;

  at::Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  run(ssmbench::selective_state_update(p, reinterpret_cast<void*>(stream)), "selective_state_update");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd, "Mamba-1 selective scan forward",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"),
        py::arg("return_last_state"), py::arg("stream"));
  m.def("selective_state_update", &selective_state_update, "one decode step, state in place",
        py::arg("state"), py::arg("x"), py::arg("dt"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("dt_bias"), py::arg("dt_softplus"), py::arg("stream"));
}
