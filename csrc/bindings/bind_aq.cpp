// Python bindings of the additive-quantization core (csrc/aq.hpp).
// Arrays must already have the right dtype and be C-contiguous (checked by arrays.hpp):
// nothing is converted.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "aq.hpp"
#include "arrays.hpp"
#include "parallel.hpp"

namespace py = pybind11;
using lrs::index_t;

namespace {

// Whether o is a float64 array (the dtype the float64 instantiation takes; anything
// else goes to the float32 one, whose checks name what is wrong).
bool is_f64(const py::object& o) {
  return py::isinstance<py::array>(o) &&
         py::reinterpret_borrow<py::array>(o).dtype().is(py::dtype::of<double>());
}

// X (N, d), C (M, K, d): validated views.
template <class T>
std::tuple<lrs_py::carray<T>, lrs_py::carray<T>> xc_args(
    const py::object& X, const py::object& C) {
  auto x = lrs_py::typed<T>(X, "X", 2);
  auto c = lrs_py::typed<T>(C, "codebooks", 3);
  if (x.shape(1) != c.shape(2))
    throw py::value_error("X has sub-vector length " + std::to_string(x.shape(1)) +
                          " but codebooks have " + std::to_string(c.shape(2)));
  if (c.shape(0) < 1 || c.shape(0) > lrs::aq::kMaxM)
    throw py::value_error("codebooks: M must be in [1, " + std::to_string(lrs::aq::kMaxM) + "]");
  if (c.shape(1) < 2 || c.shape(1) > lrs::aq::kMaxK)
    throw py::value_error("codebooks: K must be in [2, 65536]");
  if (c.shape(2) < 1) throw py::value_error("codebooks: d must be >= 1");
  lrs_py::check_finite(x, "X");
  lrs_py::check_finite(c, "codebooks");
  return {x, c};
}

template <class T>
py::tuple encode_impl(const py::object& X, const py::object& C, int beam, int refine, int threads,
                      bool greedy) {
  auto [x, c] = xc_args<T>(X, C);
  const index_t N = x.shape(0), d = x.shape(1), K = c.shape(1);
  const int M = static_cast<int>(c.shape(0));
  py::array_t<std::uint16_t> codes({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(M)});
  py::array_t<T> err(static_cast<py::ssize_t>(N));
  const T* xp = x.data();
  const T* cp = c.data();
  std::uint16_t* op = codes.mutable_data();
  T* ep = err.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (greedy) {
      lrs::aq::encode_greedy<T>(xp, N, d, cp, M, K, threads, op, ep);
    } else {
      lrs::aq::EncodeOptions opt;
      opt.beam = beam;
      opt.refine = refine;
      opt.threads = threads;
      lrs::aq::encode_beam<T>(xp, N, d, cp, M, K, opt, op, ep);
    }
  }
  return py::make_tuple(codes, err);
}

void check_int_args(int beam, int refine, int threads) {
  if (beam < 1) throw py::value_error("beam must be >= 1, got " + std::to_string(beam));
  if (refine < 0) throw py::value_error("refine must be >= 0, got " + std::to_string(refine));
  if (threads < 0) throw py::value_error("threads must be >= 0, got " + std::to_string(threads));
}

py::tuple encode_any(const py::object& X, const py::object& C, int beam, int refine, int threads,
                     bool greedy) {
  check_int_args(beam, refine, threads);
  if (threads == 0) threads = lrs::get_num_threads();  // library-wide setting
  if (is_f64(X))
    return encode_impl<double>(X, C, beam, refine, threads, greedy);
  return encode_impl<float>(X, C, beam, refine, threads, greedy);
}

lrs_py::carray<std::uint16_t> codes_arg(const py::object& codes, index_t M) {
  auto k = lrs_py::typed<std::uint16_t>(codes, "codes", 2);
  if (k.shape(1) != M)
    throw py::value_error("codes have " + std::to_string(k.shape(1)) + " columns but there are " +
                          std::to_string(M) + " codebooks");
  return k;
}

template <class T>
py::array decode_impl(const py::object& codes, const py::object& C) {
  auto c = lrs_py::typed<T>(C, "codebooks", 3);
  if (c.shape(1) < 2 || c.shape(1) > lrs::aq::kMaxK || c.shape(0) < 1 ||
      c.shape(0) > lrs::aq::kMaxM || c.shape(2) < 1)
    throw py::value_error("codebooks: bad shape (M, K, d)");
  lrs_py::check_finite(c, "codebooks");
  auto k = codes_arg(codes, c.shape(0));
  const index_t N = k.shape(0), M = c.shape(0), K = c.shape(1), d = c.shape(2);
  py::array_t<T> out({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(d)});
  const std::uint16_t* kp = k.data();
  for (py::ssize_t i = 0; i < k.size(); ++i)
    if (kp[i] >= K) throw py::value_error("codes: value " + std::to_string(kp[i]) +
                                          " out of range for K = " + std::to_string(K));
  const T* cp = c.data();
  T* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrs::aq::decode<T>(kp, N, cp, static_cast<int>(M), K, d, o);
  }
  return out;
}

template <class T>
py::array ls_impl(const py::object& X, const py::object& codes, const py::object& C, double ridge) {
  auto [x, c] = xc_args<T>(X, C);
  auto k = codes_arg(codes, c.shape(0));
  if (k.shape(0) != x.shape(0))
    throw py::value_error("codes have " + std::to_string(k.shape(0)) + " rows but X has " +
                          std::to_string(x.shape(0)));
  const index_t N = x.shape(0), M = c.shape(0), K = c.shape(1), d = c.shape(2);
  if (!(ridge > 0) || !std::isfinite(ridge))
    throw py::value_error("ridge must be a positive finite number");
  if (M * K > lrs::aq::kMaxLsUnknowns)
    throw py::value_error("M*K = " + std::to_string(M * K) + " exceeds " +
                          std::to_string(lrs::aq::kMaxLsUnknowns) +
                          " for the joint least-squares update");
  const std::uint16_t* kp = k.data();
  for (py::ssize_t i = 0; i < k.size(); ++i)
    if (kp[i] >= K) throw py::value_error("codes: value " + std::to_string(kp[i]) +
                                          " out of range for K = " + std::to_string(K));
  py::array_t<T> out({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(K),
                      static_cast<py::ssize_t>(d)});
  const T* xp = x.data();
  const T* cp = c.data();
  T* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrs::aq::ls_update<T>(xp, N, d, kp, static_cast<int>(M), K, cp, ridge, o);
  }
  return out;
}

}  // namespace

void bind_aq(py::module_& m) {
  m.def(
      "aq_encode_beam",
      [](const py::object& X, const py::object& C, int beam, int refine, int threads) {
        return encode_any(X, C, beam, refine, threads, false);
      },
      py::arg("X"), py::arg("codebooks"), py::arg("beam") = 8, py::arg("refine") = 1,
      py::arg("threads") = 1,
      "Beam-search additive-quantization encoding.\n\n"
      "X (N, d) float32|float64 C-contiguous; codebooks (M, K, d) same dtype.\n"
      "Returns (codes (N, M) uint16, err (N,) squared error per vector).  Never worse than\n"
      "greedy encoding; `refine` passes of per-codebook re-assignment follow the beam.\n"
      "threads: worker threads (0 = the library-wide count, see set_num_threads).");
  m.def(
      "aq_encode_greedy",
      [](const py::object& X, const py::object& C, int threads) {
        return encode_any(X, C, 1, 0, threads, true);
      },
      py::arg("X"), py::arg("codebooks"), py::arg("threads") = 1,
      "Greedy sequential-residual encoding (codebook order).  Same shapes as aq_encode_beam.");
  m.def(
      "aq_decode",
      [](const py::object& codes, const py::object& C) -> py::array {
        if (is_f64(C)) return decode_impl<double>(codes, C);
        return decode_impl<float>(codes, C);
      },
      py::arg("codes"), py::arg("codebooks"),
      "out (N, d) = sum_m codebooks[m, codes[:, m]].  codes (N, M) uint16; codebooks (M, K, d).");
  m.def(
      "aq_ls_update",
      [](const py::object& X, const py::object& codes, const py::object& C, double ridge)
          -> py::array {
        if (is_f64(X)) return ls_impl<double>(X, codes, C, ridge);
        return ls_impl<float>(X, codes, C, ridge);
      },
      py::arg("X"), py::arg("codes"), py::arg("codebooks"), py::arg("ridge") = 1e-6,
      "Joint least-squares codebook update with codes fixed:\n"
      "argmin_C ||X - B C||^2 + ridge ||C - codebooks||^2 (B the one-hot code matrix), solved\n"
      "in float64 by Cholesky.  X (N, d), codes (N, M) uint16, codebooks (M, K, d) -> (M, K, d).");
}
