// Table of BLAS/LAPACK function pointers, filled at import time from SciPy's
// scipy.linalg.cython_blas / cython_lapack capsules (see bindings/bind_blas.cpp).
// Nothing here links a BLAS: the core calls whatever optimised library SciPy ships.
//
// All routines follow the Fortran (column-major) conventions.  Arrays in this
// project are row-major (C order); the gemm_rm helper below maps a row-major
// product onto the column-major routine without copies (C^T = B^T A^T).
#pragma once

#include <stdexcept>
#include <string>

namespace lrs::blas {

// ---- BLAS signatures (Fortran ABI: everything by pointer) ----
template <class T>
using gemm_fn = void (*)(const char* transa, const char* transb, const int* m, const int* n,
                         const int* k, const T* alpha, const T* a, const int* lda, const T* b,
                         const int* ldb, const T* beta, T* c, const int* ldc);
template <class T>
using gemv_fn = void (*)(const char* trans, const int* m, const int* n, const T* alpha, const T* a,
                         const int* lda, const T* x, const int* incx, const T* beta, T* y,
                         const int* incy);
template <class T>
using syrk_fn = void (*)(const char* uplo, const char* trans, const int* n, const int* k,
                         const T* alpha, const T* a, const int* lda, const T* beta, T* c,
                         const int* ldc);
template <class T>
using trsm_fn = void (*)(const char* side, const char* uplo, const char* transa, const char* diag,
                         const int* m, const int* n, const T* alpha, const T* a, const int* lda,
                         T* b, const int* ldb);

// ---- LAPACK signatures ----
template <class T>
using geqrf_fn = void (*)(const int* m, const int* n, T* a, const int* lda, T* tau, T* work,
                          const int* lwork, int* info);
template <class T>
using orgqr_fn = void (*)(const int* m, const int* n, const int* k, T* a, const int* lda,
                          const T* tau, T* work, const int* lwork, int* info);
template <class T>
using gesdd_fn = void (*)(const char* jobz, const int* m, const int* n, T* a, const int* lda, T* s,
                          T* u, const int* ldu, T* vt, const int* ldvt, T* work, const int* lwork,
                          int* iwork, int* info);
template <class T>
using syevd_fn = void (*)(const char* jobz, const char* uplo, const int* n, T* a, const int* lda,
                          T* w, T* work, const int* lwork, int* iwork, const int* liwork,
                          int* info);
template <class T>
using potrf_fn = void (*)(const char* uplo, const int* n, T* a, const int* lda, int* info);

template <class T>
struct Routines {
  gemm_fn<T> gemm = nullptr;
  gemv_fn<T> gemv = nullptr;
  syrk_fn<T> syrk = nullptr;
  trsm_fn<T> trsm = nullptr;
  geqrf_fn<T> geqrf = nullptr;
  orgqr_fn<T> orgqr = nullptr;
  gesdd_fn<T> gesdd = nullptr;
  syevd_fn<T> syevd = nullptr;
  potrf_fn<T> potrf = nullptr;
};

struct Table {
  Routines<float> s;
  Routines<double> d;
  bool loaded = false;
};

// The process-wide table.  Filled once by the binding layer before any core call.
Table& table();

template <class T>
const Routines<T>& routines();
template <>
inline const Routines<float>& routines<float>() { return table().s; }
template <>
inline const Routines<double>& routines<double>() { return table().d; }

inline void require_loaded() {
  if (!table().loaded) throw std::runtime_error("lowrank_sparse: BLAS/LAPACK table not loaded");
}

// Row-major GEMM: C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C.
// A is (M, K) if !trans_a else (K, M), row-major with leading dimension lda
// (number of columns as stored).  Same for B.  Computed as the column-major
// product C^T = op(B)^T op(A)^T, so no data is copied.
template <class T>
inline void gemm_rm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                    const T* B, int ldb, T beta, T* C, int ldc) {
  if (M == 0 || N == 0) return;
  const char ta = trans_b ? 'T' : 'N';
  const char tb = trans_a ? 'T' : 'N';
  if (K == 0) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[static_cast<long>(i) * ldc + j] *= beta;
    return;
  }
  routines<T>().gemm(&ta, &tb, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

}  // namespace lrs::blas
