#include "blas.hpp"

namespace lrs::blas {

Table& table() {
  static Table t;
  return t;
}

}  // namespace lrs::blas
