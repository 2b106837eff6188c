// Shared small types for the core.  Python-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// The allocator of the large (m, n) work arrays.  It default-initialises (for arithmetic
// T: leaves uninitialised) where std::allocator would zero, so std::vector<T, Buffer<T>>
// v(n) costs no pass over memory and its pages are first touched where it is first
// written; for buffers every entry of which is written before it is read.  On Linux,
// blocks of 4 MiB and more whose size rounds up to whole 2 MiB pages with less than 1/32
// waste are 2 MiB aligned and advised for transparent huge pages (MADV_HUGEPAGE): a
// 4096x4096 float array then takes 32 page faults instead of ~16000 and the streaming
// passes over it fewer TLB misses (5 % per ADMM iteration); a 512x4608 one (9 MiB, 6 %
// waste) stays on small pages, as the rounding would show in the peak memory.
template <class T>
struct Buffer {
  using value_type = T;
  Buffer() noexcept = default;
  template <class U>
  Buffer(const Buffer<U>&) noexcept {}
  template <class U>
  bool operator==(const Buffer<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const Buffer<U>&) const noexcept { return false; }

  T* allocate(std::size_t count) {
    const std::size_t bytes = count * sizeof(T);
    if (count > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    void* p = nullptr;
#if defined(__linux__)
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    const std::size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
    if (bytes >= 2 * kHuge && size - bytes <= bytes / 32) {  // rounding wastes < 1/32
      p = std::aligned_alloc(kHuge, size);
      if (p != nullptr) madvise(p, size, MADV_HUGEPAGE);  // advice only: failure is harmless
    }
#endif
    if (p == nullptr) p = std::malloc(bytes == 0 ? 1 : bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }

  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

}  // namespace lrs
