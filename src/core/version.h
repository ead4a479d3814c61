// strata's version, set once in CMakeLists.txt (project VERSION).
#pragma once

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.1.0"
#endif
