// Gradient-ready notifications for the overlapped gradient all-reduce (src/comm/reducer.rs),
// and setting a parameter's .grad to a given tensor (a view into a bucket): two things tch
// does not expose. Built by build.rs; called only from src/sys.rs.
//
// A token holds the Rust callback and its context behind a mutex. Each hook (one per
// parameter, torch's post-accumulate-grad hook: it runs right after AccumulateGrad has
// added this backward's gradient into .grad) shares the token and calls the callback
// with the parameter's index while the token is armed. dml_grad_token_free disarms the
// token under the mutex (a hook running on another thread finishes first), so Rust may
// free the context right after; the hooks themselves live on with the tensors and do
// nothing afterwards.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "shim_error.h"

namespace {

using Callback = void (*)(void* ctx, size_t index);

struct Token {
  std::mutex mutex;
  Callback callback;
  void* ctx;
};

struct Holder {
  std::shared_ptr<Token> token;
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  ReadyHook(std::shared_ptr<Token> token, size_t index) : token_(std::move(token)), index_(index) {}
  void operator()(const torch::autograd::Variable&) override {
    std::lock_guard<std::mutex> lock(token_->mutex);
    if (token_->ctx != nullptr) token_->callback(token_->ctx, index_);
  }
  std::shared_ptr<Token> token_;
  size_t index_;
};
}  // namespace

extern "C" void* dml_grad_token_new(Callback callback, void* ctx) {
  auto* h = new Holder{std::make_shared<Token>()};
  h->token->callback = callback;
  h->token->ctx = ctx;
  return h;
}

extern "C" void dml_grad_token_free(void* holder) {
  auto* h = static_cast<Holder*>(holder);
  {
    std::lock_guard<std::mutex> lock(h->token->mutex);
    h->token->ctx = nullptr;
  }
  delete h;
}

// Replaces any post-accumulate-grad hook of `param` by one that reports `index`.
extern "C" int dml_grad_hook(void* holder, const at::Tensor* param, size_t index) {
  try {
    auto* h = static_cast<Holder*>(holder);
    torch::autograd::impl::set_post_acc_grad_hooks(
        *param, std::make_unique<ReadyHook>(h->token, index));
    return 0;
  } catch (const std::exception& e) {
    dml_shim_error() = e.what();
    return 1;
  }
}

// param.grad = grad (the Rust side, sys::set_grad, checks shape, kind and device).
extern "C" int dml_set_grad(const at::Tensor* param, const at::Tensor* grad) {
  try {
    at::Tensor p = *param;
    p.mutable_grad() = *grad;
    return 0;
  } catch (const std::exception& e) {
    dml_shim_error() = e.what();
    return 1;
  }
}
