#include "svd.hpp"
