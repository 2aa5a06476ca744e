#pragma once
// Deprecated path: callbacks/ held no callbacks, so it is now metrics/ (CHANGELOG.md). This
// forwarding header is removed in the next release; include <dftune/metrics/metrics.hpp>.
#include <dftune/metrics/metrics.hpp>
