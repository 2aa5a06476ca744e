#pragma once
// A world of one process: the Communicator every single-process run uses (DftOptimizer's default).
// Every collective is the identity; sizes are still checked, so code written against a real
// communicator fails here the same way.
#include <dftune/config.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

// The Communicator of one process: rank 0 of 1, every collective the identity (sizes still checked).
class Single {
 public:
  // Always 0.
  std::size_t rank() const { return 0; }
  // Always 1.
  std::size_t size() const { return 1; }
  // The sum over one rank: x unchanged.
  void all_reduce_sum(std::span<float>) {}
  // The sum over one rank: x unchanged.
  void all_reduce_sum(std::span<double>) {}
  // Copies `in` to `out`, which must have in.size() bytes (dftune::argument_error otherwise).
  void all_gather(std::span<const std::byte> in, std::span<std::byte> out) {
    dftune::detail::check_size("all_gather out", out.size(), in.size());
    std::copy(in.begin(), in.end(), out.begin());
  }
  // Nothing to send; `root` must be 0 (dftune::argument_error otherwise).
  void broadcast(std::span<std::byte>, std::size_t root) {
    if (root != 0) dftune::detail::fail("root", root, "0 (the only rank of a world of one)");
  }
  // Returns at once.
  void barrier() {}
};

static_assert(check_communicator<Single>());

}  // namespace distributed

DFTUNE_NAMESPACE_END
