#include "prox.hpp"
