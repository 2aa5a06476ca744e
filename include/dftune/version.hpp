#pragma once
// CMake parses the three macros below to set the package version: keep one per line.
#define DFTUNE_VERSION_MAJOR 0
#define DFTUNE_VERSION_MINOR 1
#define DFTUNE_VERSION_PATCH 0

#define DFTUNE_VERSION (DFTUNE_VERSION_MAJOR * 10000 + DFTUNE_VERSION_MINOR * 100 + DFTUNE_VERSION_PATCH)
