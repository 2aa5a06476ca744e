#pragma once
// CMake parses the three macros below to set the package version: keep one per line.

// Major version: 0 while the API may still change between minor versions.
#define DFTUNE_VERSION_MAJOR 0
// Minor version.
#define DFTUNE_VERSION_MINOR 1
// Patch version.
#define DFTUNE_VERSION_PATCH 0

// The version as one number, major·10000 + minor·100 + patch (0.1.0 is 100), for #if checks.
#define DFTUNE_VERSION (DFTUNE_VERSION_MAJOR * 10000 + DFTUNE_VERSION_MINOR * 100 + DFTUNE_VERSION_PATCH)
