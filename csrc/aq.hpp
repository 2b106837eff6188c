// Additive quantization: beam-search encoding and least-squares codebook update.  Python-free.
//
// A vector x (d,) is represented by a code tuple (c_0, ..., c_{M-1}), one index into each of
// M codebooks C[m] (K, d):   x ~ sum_m C[m, c_m].   All arrays are row-major (C order).
//   X      (N, d)      vectors to encode
//   C      (M, K, d)   codebooks
//   codes  (N, M)      uint16 code tuples (K <= 65536)
//   err    (N,)        squared reconstruction error ||x - sum_m C[m, c_m]||^2 per vector
//
// Encoding uses ||x - sum_m c_m||^2 = ||x||^2 - 2 sum_m <x, c_m> + sum_m ||c_m||^2
//                                    + 2 sum_{m<j} <c_m, c_j>,
// with <x, c> for all MK codewords from one GEMM per chunk of vectors, the MK x MK codeword
// Gram table precomputed once (or cross terms computed on the fly when the table would be
// too large), so scoring a candidate costs O(M) lookups instead of O(d M).
#pragma once

#include <cstdint>

#include "common.hpp"

namespace lrs::aq {

// Largest supported number of codewords per codebook (codes are uint16).
constexpr index_t kMaxK = 65536;
// Largest number of codebooks.
constexpr int kMaxM = 64;
// The MK x MK Gram table is materialised only when (MK)^2 <= this many entries.
constexpr index_t kMaxGramEntries = index_t(1) << 24;
// Largest M*K for the joint least-squares update (normal matrix is (MK, MK) float64).
constexpr index_t kMaxLsUnknowns = 8192;

struct EncodeOptions {
  int beam = 8;         // beam width B >= 1
  int refine = 1;       // passes of coordinate-wise refinement (ICM) after the beam, >= 0
  int threads = 1;      // worker threads over chunks of vectors, >= 1
  index_t chunk = 256;  // vectors per GEMM chunk
};

// Beam search.  Hypotheses are partial code tuples (any subset of codebooks assigned);
// each step extends every kept hypothesis by every codeword of every still-unassigned
// codebook and keeps the B best distinct partial tuples; after M steps the best full tuple
// is compared with the greedy (sequential-residual) tuple and the better one is refined by
// `refine` passes of exact per-codebook re-assignment given the others.  The result is
// therefore never worse than encode_greedy, and with B >= M * K^(M-1) the search is
// exhaustive (exact optimum).
// X (N, d), C (M, K, d) -> codes (N, M), err (N,)
template <class T>
void encode_beam(const T* X, index_t N, index_t d, const T* C, int M, index_t K,
                 const EncodeOptions& opt, std::uint16_t* codes, T* err);

// Greedy sequential-residual encoding: c_0 = argmin_k ||x - C[0,k]||, then c_1 minimises
// ||x - C[0,c_0] - C[1,k]||, ... in codebook order.  No refinement.
// X (N, d), C (M, K, d) -> codes (N, M), err (N,)
template <class T>
void encode_greedy(const T* X, index_t N, index_t d, const T* C, int M, index_t K, int threads,
                   std::uint16_t* codes, T* err);

// out (N, d) = sum_m C[m, codes[n, m]].   codes (N, M), C (M, K, d)
template <class T>
void decode(const std::uint16_t* codes, index_t N, const T* C, int M, index_t K, index_t d,
            T* out);

// Joint least-squares codebook update with the codes fixed:
//   C_out = argmin_C ||X - B C||_F^2 + ridge * ||C - C_prev||_F^2,
// B (N, MK) the one-hot code matrix.  Normal equations (B^T B + ridge I) C = B^T X + ridge
// C_prev, accumulated and solved in float64 (Cholesky potrf + two trsm from the BLAS table).
// Codewords used by no vector stay at C_prev.   ridge > 0;  M*K <= kMaxLsUnknowns.
// X (N, d), codes (N, M), C_prev (M, K, d) -> C_out (M, K, d)   (C_out may alias C_prev)
template <class T>
void ls_update(const T* X, index_t N, index_t d, const std::uint16_t* codes, int M, index_t K,
               const T* C_prev, double ridge, T* C_out);

}  // namespace lrs::aq
