// Shared small types for the core.  Python-free.
#pragma once

#include <cstdint>

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

}  // namespace lrs
