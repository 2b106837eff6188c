// Exceptions of the core.  Python-free; the bindings translate them
// (bindings/errors.cpp): std::invalid_argument -> ValueError, LapackError ->
// lowrank_sparse.errors.LapackError.
#pragma once

#include <stdexcept>
#include <string>

namespace lrs {

// A LAPACK routine returned info != 0 (e.g. a NaN reached gesdd, or a matrix the
// routine needs positive definite is not).
class LapackError : public std::runtime_error {
 public:
  LapackError(const std::string& where, int info)
      : std::runtime_error("lrs: LAPACK " + where + " failed (info=" + std::to_string(info) + ")"),
        info_(info) {}
  int info() const noexcept { return info_; }

 private:
  int info_;
};

// Throws LapackError unless info == 0.   where: the routine (and context) for the message.
inline void lapack_check(const std::string& where, int info) {
  if (info != 0) throw LapackError(where, info);
}

}  // namespace lrs
