#include "aq.hpp"
