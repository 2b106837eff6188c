#include "admm.hpp"
