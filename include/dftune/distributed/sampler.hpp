#pragma once
// Global batches that do not depend on the world size, of which each rank keeps its own ids.
//
// Epoch e is a permutation of [0, N) drawn from (seed, e) alone; global batch t is the slice
// [b·B, (b+1)·B) of its epoch's permutation (b = t mod ⌊N/B⌋; the last N mod B ids of an epoch are
// dropped, so no batch holds an id twice). Every rank computes the same global batch and keeps the
// ids it owns (distributed/shard.hpp), in the order they appear in it. So the union over ranks of
// batch t is the same B ids at every world size P, which is what makes a run at P = 2 reproduce
// the run at P = 1 (docs/distributed.md). The price: a rank's share of a batch is not exactly B/P
// (it is hypergeometric around it), and every rank spends O(N) on each epoch's permutation — 8
// bytes and a few ns per example, against a forward and backward pass per example per epoch.
//
// The permutation is a Fisher–Yates shuffle driven by std::mt19937_64 seeded through
// std::seed_seq, with rejection sampling for the bounded draws: all three are specified exactly by
// the C++ standard, so the batches are the same with every compiler and library.
#include <dftune/config.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/error.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

class ShardedBatches {
 public:
  ShardedBatches(std::size_t num_examples, std::size_t batch_size, std::uint64_t seed, Shard shard = {})
      : n_(num_examples), b_(batch_size), seed_(seed), shard_(shard) {
    validate(shard_);
    if (n_ == 0) detail::fail("num_examples", n_, "at least 1");
    if (b_ == 0 || b_ > n_)
      detail::fail("batch_size", b_, "a batch size in [1, num_examples = " + std::to_string(n_) + "]");
    if (n_ > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max()))
      detail::fail("num_examples", n_, "a count whose ids fit in int64");
  }

  // Global batch t (all B ids, in order) and this rank's part of it.
  std::span<const std::int64_t> global_batch(std::uint64_t t) {
    const std::uint64_t per_epoch = n_ / b_, epoch = t / per_epoch;
    if (!has_epoch_ || epoch != epoch_) shuffle(epoch);
    const std::size_t first = static_cast<std::size_t>(t % per_epoch) * b_;
    global_.assign(perm_.begin() + static_cast<std::ptrdiff_t>(first),
                   perm_.begin() + static_cast<std::ptrdiff_t>(first + b_));
    return global_;
  }
  std::span<const std::int64_t> local_batch(std::uint64_t t) {
    global_batch(t);
    local_.clear();
    for (std::int64_t id : global_)
      if (shard_.owns(id)) local_.push_back(id);
    return local_;
  }
  // The next batch's local ids (batch index next_index(), then it advances).
  std::span<const std::int64_t> next() { return local_batch(next_++); }
  std::uint64_t next_index() const { return next_; }
  void seek(std::uint64_t t) { next_ = t; }  // resume: the batch index to continue from

  std::size_t global_batch_size() const { return b_; }
  std::size_t num_examples() const { return n_; }
  const Shard& shard() const { return shard_; }

 private:
  void shuffle(std::uint64_t epoch) {
    perm_.resize(n_);
    std::iota(perm_.begin(), perm_.end(), std::int64_t{0});
    std::seed_seq seq{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32),
                      static_cast<std::uint32_t>(epoch), static_cast<std::uint32_t>(epoch >> 32)};
    std::mt19937_64 rng(seq);
    for (std::size_t i = n_ - 1; i > 0; --i) std::swap(perm_[i], perm_[below(rng, i + 1)]);
    epoch_ = epoch;
    has_epoch_ = true;
  }
  // Uniform in [0, bound) by rejection: exact, and specified by nothing but mt19937_64's output.
  static std::size_t below(std::mt19937_64& rng, std::size_t bound) {
    const std::uint64_t b = bound, limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % b;
    std::uint64_t x = rng();
    while (x >= limit) x = rng();
    return static_cast<std::size_t>(x % b);
  }

  std::size_t n_, b_;
  std::uint64_t seed_;
  Shard shard_;
  std::uint64_t next_ = 0, epoch_ = 0;
  bool has_epoch_ = false;
  std::vector<std::int64_t> perm_, global_, local_;
};

}  // namespace distributed

DFTUNE_NAMESPACE_END
