// Additive quantization: beam-search encoding and least-squares codebook update.  Python-free.
#pragma once

#include "common.hpp"
