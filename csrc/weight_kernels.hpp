// The fused weight loop's row kernels (weight_kernels.inc) compiled twice: for the
// baseline ISA (namespace kbase) and, on x86-64 with GCC or Clang, for AVX2 + FMA
// (kavx2, chosen at run time when simd_available() and Switches::simd).
// -ffp-contract=off (CMakeLists.txt) keeps the two bitwise identical: no fused
// multiply-adds the baseline would not form.  Include from admm_weight.cpp only.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define LRS_X86_DISPATCH 1
#else
#define LRS_X86_DISPATCH 0
#endif

namespace lrs {
namespace {

#define LRS_KERNEL_NS kbase
#include "weight_kernels.inc"
#undef LRS_KERNEL_NS
#if LRS_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define LRS_KERNEL_NS kavx2
#include "weight_kernels.inc"
#undef LRS_KERNEL_NS
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace kavx2 = kbase;
#endif

// Calls f(A{}, B{}, ...) with A, B, ... = std::bool_constant of the run-time flags a, b,
// ...: one call site instantiates the 2^k specialisations of a row kernel.
template <class F>
inline void with_flags(F&& f) {
  f();
}
template <class F, class... Bs>
inline void with_flags(F&& f, bool a, Bs... bs) {
  auto bind = [&](auto tag) { with_flags([&](auto... rest) { f(tag, rest...); }, bs...); };
  a ? bind(std::true_type{}) : bind(std::false_type{});
}

}  // namespace
}  // namespace lrs
