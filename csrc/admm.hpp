// L + S ADMM solvers (weight space and activation-aware).  Python-free.
#pragma once

#include "common.hpp"
