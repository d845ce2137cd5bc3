// The message of the shim's last C++ exception on this thread, shared by every csrc/*.cpp
// (an inline function: one thread-local string in the whole program), read by Rust
// through dml_shim_last_error() (csrc/fused_adam.cpp).
#pragma once
#include <string>

inline std::string& dml_shim_error() {
  static thread_local std::string message;
  return message;
}
