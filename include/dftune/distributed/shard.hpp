#pragma once
// Sharding by example id (docs/distributed.md): example i belongs to rank i mod P, and a rank
// only ever samples its own examples, so the DFT estimator's u_i lives on exactly one rank, is
// updated by exactly the batches that contain i (as in a single process), and never travels.
// The owned ids of rank r are r, r + P, r + 2P, …; rank r stores them at local index i / P.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

// Which examples one rank owns: ids with id mod size = rank (see above). Example: Shard{.rank = 1,
// .size = 4} owns 1, 5, 9, … and stores id 9 at local index 2.
struct Shard {
  std::size_t rank = 0;  // this rank, in [0, size)
  std::size_t size = 1;  // the world size P

  // Equal rank and size.
  bool operator==(const Shard&) const = default;

  // The rank that owns example `id` (id >= 0; not checked).
  std::size_t owner(std::int64_t id) const { return static_cast<std::size_t>(id) % size; }  // id >= 0
  // Whether this rank owns `id` (false for a negative id).
  bool owns(std::int64_t id) const { return id >= 0 && owner(id) == rank; }
  // Where this rank stores an id it owns: id / size.
  std::size_t local_index(std::int64_t id) const { return static_cast<std::size_t>(id) / size; }
  // The id stored at local index `local`: rank + local · size.
  std::int64_t global_id(std::size_t local) const { return static_cast<std::int64_t>(rank + local * size); }
  // How many of the ids [0, num_examples) this rank owns.
  std::size_t local_count(std::size_t num_examples) const {
    return num_examples > rank ? (num_examples - rank - 1) / size + 1 : 0;
  }
  // "rank r of P (ids with id mod P = r)", for error messages.
  std::string describe() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(size) + " (ids with id mod " +
           std::to_string(size) + " = " + std::to_string(rank) + ")";
  }
};

// Checks size >= 1 and rank < size: dftune::argument_error naming `shard.size` or `shard.rank`.
inline void validate(const Shard& s) {
  if (s.size == 0) dftune::detail::fail("shard.size", s.size, "a world size >= 1");
  if (s.rank >= s.size) dftune::detail::fail("shard.rank", s.rank, "a rank in [0, size = " + std::to_string(s.size) + ")");
}

// The shard of a communicator's rank: Shard{comm.rank(), comm.size()}.
template <class C>
Shard shard_of(const C& comm) {
  return Shard{.rank = static_cast<std::size_t>(comm.rank()), .size = static_cast<std::size_t>(comm.size())};
}

}  // namespace distributed

DFTUNE_NAMESPACE_END
