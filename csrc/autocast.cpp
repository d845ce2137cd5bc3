// The one libtorch setting dml needs that tch does not expose: the dtype CUDA autocast
// casts to (torch.autocast("cuda", dtype=torch.bfloat16)). Built by build.rs; called only
// from src/sys.rs.
#include <ATen/autocast_mode.h>

extern "C" void dml_set_cuda_autocast_dtype(int bf16) {
  at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
}

extern "C" int dml_cuda_autocast_dtype_is_bf16() {
  return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
}
