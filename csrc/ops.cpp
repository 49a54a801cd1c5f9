// Operator schemas of the dtp_fast library (one TORCH_LIBRARY, grouped by op
// family), the op dtp_fast::build_info and the Python module stub.
//
// The kernels of family <f> live in csrc/cpu/<f>_cpu.cpp (always built) and
// csrc/cuda/<f>_cuda.cu with its binding csrc/cuda/<f>_cuda_bind.cpp (built
// only with WITH_CUDA); they bind themselves to the schemas below with
// TORCH_LIBRARY_IMPL. Python reaches the ops as torch.ops.dtp_fast.<name>
// once `import dtp_fast._C` has run the static registrations.
#ifdef DTP_FAST_PYTHON_MODULE
#include <Python.h>  // first, as Python asks
#endif

#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dtp_fast {
namespace {

const char* const kOpNames[] = {
    "dtp_fast::act_pool2d",
    "dtp_fast::unpool_act2d",
    "dtp_fast::pool_unpool_diff",
    "dtp_fast::noisy_unpool_diff",
    "dtp_fast::noisy_unpool_diff_philox",
    "dtp_fast::noisy_act_diff_philox",
    "dtp_fast::philox_normal_",
    "dtp_fast::philox_noisy_input",
    "dtp_fast::momentum_sgd_",
    "dtp_fast::ldrl_loss",
    "dtp_fast::linear_chain_",
    "dtp_fast::switch_lists",
    "dtp_fast::pooled_conv_t",
    "dtp_fast::pooled_wgrad",
    "dtp_fast::pooled_chain_",
    "dtp_fast::build_info",
};

std::string json_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

// JSON description of how this module was compiled (read by dtp_fast/_ext.py).
std::string build_info() {
  std::ostringstream os;
  os << "{\"torch_version\": \"" << TORCH_VERSION_MAJOR << "."
     << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH << "\""
     << ", \"torch_major\": " << TORCH_VERSION_MAJOR
     << ", \"torch_minor\": " << TORCH_VERSION_MINOR
     << ", \"torch_patch\": " << TORCH_VERSION_PATCH;
#ifdef WITH_CUDA
  os << ", \"with_cuda\": true, \"cuda_version\": \"" << CUDART_VERSION / 1000
     << "." << (CUDART_VERSION % 1000) / 10 << "\"";
#else
  os << ", \"with_cuda\": false, \"cuda_version\": null";
#endif
#ifdef _OPENMP
  os << ", \"openmp\": true, \"openmp_version\": " << _OPENMP;
#else
  os << ", \"openmp\": false, \"openmp_version\": null";
#endif
  os << ", \"compiler\": \"" << json_escape(compiler_version()) << "\""
     << ", \"cplusplus\": " << __cplusplus << ", \"ops\": [";
  bool first = true;
  for (const char* name : kOpNames) {
    os << (first ? "" : ", ") << "\"" << name << "\"";
    first = false;
  }
  os << "]}";
  return os.str();
}

}  // namespace

TORCH_LIBRARY(dtp_fast, m) {
  // Fake (meta) implementations are registered from Python: dtp_fast/ops/<family>.py (FAKES), by dtp_fast/ops/__init__.py.
  m.set_python_module("dtp_fast.ops");
  // ---- pool: fused activation and max-pool / unpool (csrc/cpu/pool_cpu.cpp; no CUDA kernels)
  // ACT(z) then max_pool2d(kernel_size, stride, padding), floor mode, with the
  // switches: (values, int64 flat indices into each H*W input plane).
  // act: 0 identity, 1 ELU(alpha=1), 2 ReLU, 3 tanh.
  m.def(
      "act_pool2d(Tensor z, int act, int[2] kernel_size, int[2] stride, "
      "int[2] padding) -> (Tensor, Tensor)");
  // ACT(max_unpool2d(y, indices, output_size)); zeros elsewhere; with
  // duplicate indices the value of the last pooled position (row-major) wins.
  m.def(
      "unpool_act2d(Tensor y, Tensor indices, int act, int[2] output_size) "
      "-> Tensor");
  // ---- dh: dh1 and dh2 of the L-DRL feedback engine (csrc/cpu/dh_cpu.cpp, csrc/cuda/dh_cuda.cu)
  // L-DRL feedback engine (ALGORITHM.md section 5), for M copies of a batch
  // of B: z1 (M*B, C, H, W), h0 (B, C, H, W) repeated over the copies.
  // dh1 = unpool_act2d(act_pool2d(z1)) - h0: returns (M*B, C, H, W) in the
  // memory format of z1.
  m.def(
      "pool_unpool_diff(Tensor z1, Tensor h0, int act, int[2] kernel_size, "
      "int[2] stride, int[2] padding) -> Tensor");
  // dh2 = unpool_act2d(y + sigma * eps, indices, output_size) - h0 with
  // y, indices (B, C, Hp, Wp), eps (M*B, C, Hp, Wp), h0 (B, C, H, W): returns
  // (M*B, C, H, W) in the memory format of eps.
  m.def(
      "noisy_unpool_diff(Tensor y, Tensor eps, float sigma, Tensor indices, "
      "Tensor h0, int act, int[2] output_size) -> Tensor");
  // noisy_unpool_diff with the noise drawn from philox_normal_'s stream instead
  // of read from eps: for `copies` = M blocks of B rows, eps[m * B + b] is the
  // noise of row b (sample index offset + b) at iteration `iteration` +
  // m / samples, noise sample m % samples (a NoiseBlock of dtp_fast/noise.py),
  // as float32 cast to the dtype of y. Returns (M*B, C, H, W) in the memory
  // format of y.
  m.def(
      "noisy_unpool_diff_philox(Tensor y, float sigma, Tensor indices, "
      "Tensor h0, int act, int[2] output_size, int key0, int key1, int offset, "
      "int iteration, int samples, int copies) -> Tensor");
  // dh2 held at the block's output resolution: act(y + sigma * eps) - a0 for
  // y, a0 = act(y) (B, C, H, W), eps the noise noisy_unpool_diff_philox draws
  // (so its result with the identity as switches, bit for bit); returns
  // (M*B, C, H, W) in the memory format of y (CPU only).
  m.def(
      "noisy_act_diff_philox(Tensor y, float sigma, Tensor a0, int act, int key0, "
      "int key1, int offset, int iteration, int samples, int copies) -> Tensor");
  // ---- noise: counter-based Gaussian noise (csrc/cpu/noise_cpu.cpp, csrc/cuda/noise_cuda.cu)
  // Counter-based standard normals (csrc/philox.h) into a contiguous out of
  // shape (rows, ...): row r, element e (row-major) is lane e % 4 of the
  // Philox block with counter (e / 4, offset + r, iteration, sample) and key
  // (key0, key1), each a 32-bit word.
  m.def(
      "philox_normal_(Tensor(a!) out, int key0, int key1, int offset, "
      "int iteration, int sample) -> ()");
  // For `copies` = M copies of a batch x (B, ...): dx = sigma * eps and x + dx,
  // both (M*B, ...) in x's memory format (channels_last or contiguous), with
  // eps[m * B + b] the normals philox_normal_ gives row offset + b at iteration
  // `iteration` + m / samples, sample m % samples (CPU only).
  m.def(
      "philox_noisy_input(Tensor x, float sigma, int key0, int key1, int offset, "
      "int iteration, int samples, int copies) -> (Tensor, Tensor)");
  // ---- sgd: multi-tensor momentum SGD (csrc/cpu/sgd_cpu.cpp, csrc/cuda/sgd_cuda.cu)
  // Momentum SGD (torch.optim.SGD, dampening 0, no Nesterov) of many tensors
  // at once, each with its own lr, momentum and weight decay:
  // g' = g + weight_decay * p; buf = momentum * buf + g'; p = p - lr * buf.
  m.def(
      "momentum_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] bufs, "
      "float[] lr, float[] momentum, float[] weight_decay) -> ()");
  // ---- chain: the sequential chain of feedback training (csrc/cpu/chain_cpu.cpp, csrc/cuda/chain_cuda.cu)
  // The L-DRL loss of a conv feedback layer (ALGORITHM.md section 5), both
  // terms in one reduction: scale * (sum(dr_y^2) - 2 * sum(A * V)), a 0-dim
  // tensor of V's dtype; sums accumulated in double, deterministic. A has V's
  // shape (read in V's layout); dr_y any shape.
  m.def("ldrl_loss(Tensor dr_y, Tensor A, Tensor V, float scale) -> Tensor");
  // Every iteration of a precomputed chunk of a Linear feedback block, in
  // order: V, buf (d_in, d_out), A (n, d_in, d_out), C (n, d_out, d_out),
  // contiguous, one dtype. For k = 0 .. n - 1: G = V @ C[k];
  // loss_k = scale * (<G, V> - 2 <A[k], V>) (V before the step);
  // g = 2 * scale * (G - A[k]) + weight_decay * V; buf = momentum * buf + g;
  // V = V - lr * buf. Updates V and buf in place and returns the losses of
  // iterations loss_from .. n - 1 (shape (n - loss_from,)); 0 <= loss_from <= n.
  m.def(
      "linear_chain_(Tensor(a!) V, Tensor(b!) buf, Tensor A, Tensor C, float lr, "
      "float momentum, float weight_decay, float scale, int loss_from) -> Tensor");
  // ---- sparse: the chain of a pooled conv feedback layer from dh2 held at
  // pooled resolution (csrc/cpu/sparse_cpu.cpp, which documents the layouts;
  // no CUDA kernels). Index lists of the non-zeros of unpool(d2, indices)
  // (indices (B, C, Hp, Wp) of an input_size plane, `copies` copies of the
  // batch) for a stride-1 transposed convolution of kernel_size, padding,
  // dilation and output_size, with the output channels padded to cx_padded:
  // (pix_ptr, pix_ent, ch_ptr, ch_ent), int32.
  m.def(
      "switch_lists(Tensor indices, int[2] input_size, int[2] kernel_size, "
      "int[2] padding, int[2] dilation, int[2] output_size, int copies, "
      "int cx_padded) -> (Tensor, Tensor, Tensor, Tensor)");
  // dr_y = V * unpool(values): values (rows * C * Hp * Wp) one iteration's d2,
  // weight (C, KH, KW, Cxp); returns (rows, padded_size, Cxp) with dr_y at
  // [padding, padding + output_size) and zeros around it.
  m.def(
      "pooled_conv_t(Tensor values, Tensor pix_ptr, Tensor pix_ent, "
      "Tensor weight, int rows, int[2] output_size, int[2] padded_size, "
      "int[2] padding) -> Tensor");
  // wgrad(unpool(values), dr_y) from pooled_conv_t's padded dr_y: (C, KH * KW, Cxp).
  m.def(
      "pooled_wgrad(Tensor values, Tensor ch_ptr, Tensor ch_ent, Tensor dr_pad, "
      "int[2] kernel_size, int[2] dilation) -> Tensor");
  // Every iteration of a precomputed chunk, values (n, rows, C, Hp, Wp) and A
  // (n, C, Cx, KH, KW): dr_y and wgrad as above, then the momentum-SGD step of
  // weight (C, Cx, KH, KW) and momentum_buffer in place with the gradient
  // 2 * scale * (wgrad - A[j]); returns the losses scale * (sum(dr_y^2) -
  // 2 * sum(A[j] * V)) of iterations loss_from .. n - 1 (V before its step).
  m.def(
      "pooled_chain_(Tensor values, Tensor pix_ptr, Tensor pix_ent, Tensor ch_ptr, "
      "Tensor ch_ent, Tensor A, Tensor(a!) weight, Tensor(b!) momentum_buffer, "
      "int[2] output_size, int[2] padded_size, int[2] padding, int[2] dilation, "
      "float scale, float lr, float momentum, float weight_decay, int loss_from) -> Tensor");
  // ---- how this library was built (JSON, read by dtp_fast/_ext.py)
  m.def("build_info() -> str", &build_info);
}

}  // namespace dtp_fast

#ifdef DTP_FAST_PYTHON_MODULE
// `import dtp_fast._C` only needs to load this shared library: loading it runs
// the TORCH_LIBRARY registrations above. The module itself is empty.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "dtp_fast compiled ops; use them through dtp_fast.ops or "
      "torch.ops.dtp_fast",  // m_doc
      -1,                    // m_size
      nullptr,               // m_methods
  };
  return PyModule_Create(&module_def);
}
#endif  // DTP_FAST_PYTHON_MODULE
