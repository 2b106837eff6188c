// The bindings' array checks (arrays.hpp).
#include "arrays.hpp"

#include <atomic>
#include <cmath>

#include "parallel.hpp"

namespace lrs_py {

py::array as_array(const py::handle& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!(a.flags() & py::array::c_style))
    throw layout_error(std::string(name) + " must be C-contiguous");
  return a;
}

Float float_kind(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return Float::F32;
  if (a.dtype().is(py::dtype::of<double>())) return Float::F64;
  throw py::type_error(std::string(name) + " must be a float32 or float64 array, got dtype " +
                       py::str(a.dtype()).cast<std::string>());
}

void check_ndim(const py::array& a, const char* name, int ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
}

void check_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  check_ndim(a, name, static_cast<int>(shape.size()));
  py::ssize_t i = 0;
  for (py::ssize_t s : shape) {
    if (s >= 0 && a.shape(i) != s)
      throw py::value_error(std::string(name) + ": dimension " + std::to_string(i) + " is " +
                            std::to_string(a.shape(i)) + ", expected " + std::to_string(s));
    ++i;
  }
}

template <class T>
void check_finite(const T* x, index_t n, const char* name) {
  std::atomic<bool> bad{false};
  {
    py::gil_scoped_release nogil;
    lrs::parallel_for(n, [&](index_t b, index_t e) {
      bool local = false;
      for (index_t i = b; i < e; ++i) local |= !std::isfinite(x[i]);
      if (local) bad.store(true, std::memory_order_relaxed);
    });
  }
  if (bad) throw py::value_error(std::string(name) + " contains NaN or Inf (non-finite values)");
}

template void check_finite<float>(const float*, index_t, const char*);
template void check_finite<double>(const double*, index_t, const char*);

}  // namespace lrs_py
