// Shared small types for the core.  Python-free.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace lrs {

using index_t = std::int64_t;

// Structured-sparsity patterns for a weight matrix W (m, n), row-major.
//  - Unstructured: any entries.
//  - Row:      groups are whole rows (m groups of n entries)   -> output channels removed.
//  - Column:   groups are whole columns (n groups of m entries) -> input features removed.
//  - Channel:  conv weight reshaped (out, in*kh*kw); group j = columns [j*block, (j+1)*block),
//              i.e. a whole input channel (m*block entries); block = kh*kw, n % block == 0.
//  - NM:       along each row, in consecutive windows of nm_m columns keep nm_n entries.
enum class StructureKind : int { Unstructured = 0, Row = 1, Column = 2, Channel = 3, NM = 4 };

struct Structure {
  StructureKind kind = StructureKind::Unstructured;
  index_t block = 1;  // Channel: kh*kw
  int nm_n = 2;       // NM: keep nm_n ...
  int nm_m = 4;       // ... of every nm_m consecutive entries in a row
};

// An allocator that default-initialises (for arithmetic T: leaves uninitialised) where
// std::allocator would zero: std::vector<T, DefaultInit<T>> v(n) costs no pass over
// memory, so its pages are first touched where it is first written.  For buffers every
// entry of which is written before it is read.
template <class T, class A = std::allocator<T>>
struct DefaultInit : A {
  using A::A;
  template <class U>
  struct rebind {
    using other = DefaultInit<U, typename std::allocator_traits<A>::template rebind_alloc<U>>;
  };
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    std::allocator_traits<A>::construct(static_cast<A&>(*this), p, std::forward<Args>(args)...);
  }
};

}  // namespace lrs
