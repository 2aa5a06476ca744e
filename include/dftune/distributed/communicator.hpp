#pragma once
// The Communicator concept: the five collectives a data-parallel DFT step needs (docs/distributed.md).
// dftune ships a world of one (single.hpp, no dependency) and one over MPI (mpi.hpp, included only
// explicitly, CMake target dftune::mpi); a user's NCCL or Gloo process group plugs in through a small
// adapter (docs/distributed.md shows one over c10d::ProcessGroupGloo).
//
// Contract of a Communicator C (every call is collective: every rank makes the same calls, in the
// same order, with the same sizes and root):
//   c.rank(), c.size()            this process's rank in [0, size) and the number of ranks P >= 1;
//   c.all_reduce_sum(x)           x ← Σ_r x_r elementwise, for std::span<float> and std::span<double>;
//                                 every rank must end with the *same bits* (the parameter replicas
//                                 stay identical only if their gradients are), and the same inputs
//                                 must give the same bits at a fixed world size (bitwise
//                                 reproducible runs). Ring or tree all-reduces (MPI, NCCL, Gloo) do
//                                 both; the order of the summation is the implementation's and
//                                 should be documented (mpi.hpp: rank order 0, 1, …, P−1);
//   c.all_gather(in, out)         out.size() == P·in.size(); rank r's bytes land at [r·n, (r+1)·n);
//   c.broadcast(x, root)          x ← root's x on every rank (bytes);
//   c.barrier()                   returns once every rank has entered it.
// A transport failure (a peer that died) should end the job — MPI's default error handler does —
// rather than hang; dftune turns *input* errors into the same error on every rank itself
// (collectives.hpp, agree).
#include <dftune/config.hpp>

#include <concepts>
#include <cstddef>
#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

template <class C>
concept Communicator = requires(C& c, const C& cc, std::span<float> f, std::span<double> d,
                                std::span<const std::byte> in, std::span<std::byte> out, std::size_t root) {
  { cc.rank() } -> std::convertible_to<std::size_t>;
  { cc.size() } -> std::convertible_to<std::size_t>;
  { c.all_reduce_sum(f) } -> std::same_as<void>;
  { c.all_reduce_sum(d) } -> std::same_as<void>;
  { c.all_gather(in, out) } -> std::same_as<void>;
  { c.broadcast(out, root) } -> std::same_as<void>;
  { c.barrier() } -> std::same_as<void>;
};

// Static checks with one message per missing member (the concept alone says only "constraints not
// satisfied"). Use: static_assert(check_communicator<MyComm>()).
template <class C>
constexpr bool check_communicator() {
  static_assert(requires(const C& c) { { c.rank() } -> std::convertible_to<std::size_t>; },
                "dftune::distributed::Communicator: needs `std::size_t rank() const`");
  static_assert(requires(const C& c) { { c.size() } -> std::convertible_to<std::size_t>; },
                "dftune::distributed::Communicator: needs `std::size_t size() const`");
  static_assert(requires(C& c, std::span<float> x) { c.all_reduce_sum(x); },
                "dftune::distributed::Communicator: needs `void all_reduce_sum(std::span<float>)`");
  static_assert(requires(C& c, std::span<double> x) { c.all_reduce_sum(x); },
                "dftune::distributed::Communicator: needs `void all_reduce_sum(std::span<double>)`");
  static_assert(requires(C& c, std::span<const std::byte> in, std::span<std::byte> out) { c.all_gather(in, out); },
                "dftune::distributed::Communicator: needs `void all_gather(std::span<const std::byte> in, "
                "std::span<std::byte> out)`");
  static_assert(requires(C& c, std::span<std::byte> x, std::size_t root) { c.broadcast(x, root); },
                "dftune::distributed::Communicator: needs `void broadcast(std::span<std::byte>, std::size_t root)`");
  static_assert(requires(C& c) { c.barrier(); }, "dftune::distributed::Communicator: needs `void barrier()`");
  return Communicator<C>;
}

}  // namespace distributed

DFTUNE_NAMESPACE_END
