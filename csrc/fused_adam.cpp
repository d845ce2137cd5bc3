// torch's fused Adam/AdamW kernels (at::_fused_adam_ / at::_fused_adamw_, what
// torch.optim.Adam(fused=True) calls), which tch does not expose: one pass over each
// parameter, no temporaries. Built by build.rs; called only from src/sys.rs.
//
// The tensor arguments are arrays of `at::Tensor*` (tch's C_tensor pointers). A C++
// exception becomes return value 1 and a message for dml_shim_last_error().
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <exception>
#include <string>
#include <vector>

#include "shim_error.h"

namespace {

std::vector<at::Tensor> gather(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}
}  // namespace

extern "C" int dml_fused_adam(const at::Tensor* const* params, const at::Tensor* const* grads,
                              const at::Tensor* const* exp_avgs,
                              const at::Tensor* const* exp_avg_sqs,
                              const at::Tensor* const* steps, size_t n, double lr,
                              double beta1, double beta2, double weight_decay, double eps,
                              int decoupled) {
  try {
    c10::AutoGradMode no_grad(false);
    auto p = gather(params, n);
    auto g = gather(grads, n);
    auto m = gather(exp_avgs, n);
    auto v = gather(exp_avg_sqs, n);
    auto s = gather(steps, n);
    std::vector<at::Tensor> none;
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    }
    return 0;
  } catch (const std::exception& e) {
    dml_shim_error() = e.what();
    return 1;
  }
}

// The last failing shim call's message on this thread (every csrc/*.cpp sets it).
extern "C" const char* dml_shim_last_error() { return dml_shim_error().c_str(); }
