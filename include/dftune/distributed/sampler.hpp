#pragma once
// Which examples each rank trains on at step t: global batches of B ids, of which each rank keeps
// the ids it owns (distributed/shard.hpp: id i belongs to rank i mod P).
//
// Two policies (SamplerOptions::balance):
//   Balance::global_batches (the default). Epoch e is a permutation of [0, N) drawn from (seed, e)
//     alone; global batch t is a slice of it, and every rank keeps the ids of the slice it owns, in
//     the order they appear in it. So the union over ranks of batch t is the same ids at every
//     world size P, which is what makes a run at P = 2 reproduce the run at P = 1
//     (docs/distributed.md). The price: a rank's share of a batch is hypergeometric around B/P, not
//     B/P, and the busiest rank sets the pace (docs/distributed.md, "Balance").
//   Balance::per_rank. Each rank shuffles its own ids (seed, e, rank, P) and takes the next B/P of
//     them at every step: perfectly balanced, but the global batches depend on P (a run at P = 2 is
//     not the run at P = 1), and B must be a multiple of P.
// The last batch of an epoch: an epoch of N ids does not split into whole batches of B unless B
// divides N. drop_last = false (the default, as in torch's DataLoader) keeps the short last batch
// (N mod B ids; the optimizer's 1/B is that batch's own size, which DftOptimizer sums over the
// ranks); drop_last = true skips those ids for the epoch (the next epoch's shuffle differs, so
// no id is dropped for good). Under per_rank, an epoch has ⌈n_0/(B/P)⌉ steps (keep) or
// ⌊n_{P−1}/(B/P)⌋ (drop), n_r = the size of rank r's shard, so every rank agrees on where epochs end.
//
// Every rank spends O(N) on each epoch's permutation(s) — 8 bytes and a few ns per example, against
// a forward and backward pass per example per epoch. The permutation is a Fisher–Yates shuffle
// driven by std::mt19937_64 seeded through std::seed_seq, with rejection sampling for the bounded
// draws: all three are specified exactly by the C++ standard, so the batches are the same with
// every compiler and library.
#include <dftune/config.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/error.hpp>

#include <algorithm>
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

// How a global batch is split across ranks (SamplerOptions::balance).
enum class Balance : std::uint8_t {
  global_batches,  // the same global batches at every P; shares hypergeometric around B/P
  per_rank,        // exactly B/P of each rank's own ids per step; batches depend on P
};

// Options of ShardedBatches.
struct SamplerOptions {
  bool drop_last = false;  // false: keep an epoch's short last batch (torch's DataLoader default)
  Balance balance = Balance::global_batches;  // global_batches: the batches do not depend on the number of ranks
  // Every field equal.
  bool operator==(const SamplerOptions&) const = default;
};

// The batches of a data-parallel run: every rank draws the same shuffled global batches of example
// ids (a permutation of [0, N) per epoch, from `seed`) and keeps the ids its Shard owns, so each
// estimator entry u_i is updated on one rank only. Batch t depends only on (N, B, seed, options, t):
// a resumed run calls seek(t) and continues with the same batches. Example:
//
//     distributed::ShardedBatches batches(/*num_examples=*/1000, /*batch_size=*/32, /*seed=*/7, Shard{0, 1});
//     for (int step = 0; step < 10; ++step) {
//       std::span<const std::int64_t> ids = batches.next();   // this rank's ids of global batch `step`
//     }
class ShardedBatches {
 public:
  // N examples (ids [0, N)), global batches of B ids, shuffled from `seed`, this rank's `shard`.
  // Errors (dftune::argument_error, nothing built): N = 0, B = 0 or B > N, an invalid shard or
  // balance, and under Balance::per_rank a B that is not a multiple of the world size.
  ShardedBatches(std::size_t num_examples, std::size_t batch_size, std::uint64_t seed, Shard shard = {},
                 SamplerOptions options = {})
      : n_(num_examples), b_(batch_size), seed_(seed), shard_(shard), opt_(options) {
    validate(shard_);
    if (opt_.balance != Balance::global_batches && opt_.balance != Balance::per_rank)
      dftune::detail::fail("options.balance", static_cast<int>(opt_.balance), "Balance::global_batches or Balance::per_rank");
    if (n_ == 0) dftune::detail::fail("num_examples", n_, "at least 1");
    if (b_ == 0 || b_ > n_)
      dftune::detail::fail("batch_size", b_, "a batch size in [1, num_examples = " + std::to_string(n_) + "]");
    if (n_ > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max()))
      dftune::detail::fail("num_examples", n_, "a count whose ids fit in int64");
    const std::size_t P = shard_.size;
    // B <= N and P | B give B/P <= ⌊N/P⌋, the smallest shard's size: every epoch has a batch.
    if (opt_.balance == Balance::per_rank && b_ % P != 0)
      dftune::detail::fail("batch_size", b_,
                   "a multiple of the world size P = " + std::to_string(P) +
                       " (the balanced sampler, Balance::per_rank, draws batch_size / P ids from every rank's shard)");
    per_epoch_ = batches_per_epoch_of();
  }

  // The same sampler on every rank of `comm`, checked collectively: a bad argument on any rank, or
  // ranks that disagree on (N, B, seed, options), is the same dftune::error on every rank.
  template <Communicator C>
  static ShardedBatches agreed(C& comm, std::size_t num_examples, std::size_t batch_size, std::uint64_t seed,
                               SamplerOptions options = {}) {
    struct Config {
      std::uint64_t n, b, seed;
      SamplerOptions o;
    };
    const Config mine{num_examples, batch_size, seed, options};
    const auto all = agree<Config>(comm, [&] {
      (void)ShardedBatches(num_examples, batch_size, seed, shard_of(comm), options);
      return mine;
    });
    for (std::size_t r = 1; r < all.size(); ++r) {
      auto same = [&](const char* what, std::uint64_t got, std::uint64_t want) {
        if (got != want)
          dftune::detail::fail(what, std::to_string(got) + " on rank " + std::to_string(r),
                       std::to_string(want) + " as on rank 0 (every rank must sample alike)");
      };
      same("num_examples", all[r].n, all[0].n);
      same("batch_size", all[r].b, all[0].b);
      same("seed", all[r].seed, all[0].seed);
      same("options.drop_last", all[r].o.drop_last, all[0].o.drop_last);
      same("options.balance", static_cast<std::uint64_t>(all[r].o.balance), static_cast<std::uint64_t>(all[0].o.balance));
    }
    return ShardedBatches(num_examples, batch_size, seed, shard_of(comm), options);
  }

  // Global batch t (all its ids, in order: under per_rank, rank 0's part, then rank 1's, …) and
  // this rank's part of it.
  std::span<const std::int64_t> global_batch(std::uint64_t t) {
    const auto [epoch, k] = locate(t);
    if (!has_epoch_ || epoch != epoch_) shuffle(epoch);
    global_.clear();
    for (std::size_t r = 0; r < parts(); ++r) {
      const auto part = slice(r, k);
      global_.insert(global_.end(), part.begin(), part.end());
    }
    return global_;
  }
  // This rank's ids of global batch t (a view valid until the next call).
  std::span<const std::int64_t> local_batch(std::uint64_t t) {
    const auto [epoch, k] = locate(t);
    if (!has_epoch_ || epoch != epoch_) shuffle(epoch);
    local_.clear();
    if (opt_.balance == Balance::per_rank) {
      const auto part = slice(shard_.rank, k);
      local_.assign(part.begin(), part.end());
    } else {
      for (std::int64_t id : slice(0, k))
        if (shard_.owns(id)) local_.push_back(id);
    }
    return local_;
  }
  // The next batch's local ids (batch index next_index(), then it advances).
  std::span<const std::int64_t> next() { return local_batch(next_++); }
  // The index of the batch next() returns next.
  std::uint64_t next_index() const { return next_; }
  void seek(std::uint64_t t) { next_ = t; }  // resume: the batch index to continue from

  std::size_t global_batch_size() const { return b_; }  // of a full batch
  // Global batches per epoch (the short last batch counted unless drop_last).
  std::size_t batches_per_epoch() const { return per_epoch_; }
  // N.
  std::size_t num_examples() const { return n_; }
  // This rank's shard.
  const Shard& shard() const { return shard_; }
  // The options it was built with.
  const SamplerOptions& options() const { return opt_; }

 private:
  std::size_t parts() const { return opt_.balance == Balance::per_rank ? shard_.size : 1; }
  std::size_t part_size() const { return b_ / parts(); }
  // Ids in part r's permutation: all N (one global permutation) or the size of rank r's shard.
  std::size_t part_count(std::size_t r) const {
    return opt_.balance == Balance::per_rank ? Shard{r, shard_.size}.local_count(n_) : n_;
  }
  std::size_t batches_per_epoch_of() const {
    const std::size_t most = part_count(0), least = part_count(parts() - 1), b = part_size();
    return opt_.drop_last ? least / b : (most + b - 1) / b;
  }
  std::pair<std::uint64_t, std::size_t> locate(std::uint64_t t) const {
    return {t / per_epoch_, static_cast<std::size_t>(t % per_epoch_)};
  }
  // Part r's ids of the epoch's k-th batch: [k·b, min((k+1)·b, n_r)), possibly short or empty.
  std::span<const std::int64_t> slice(std::size_t r, std::size_t k) const {
    const std::size_t b = part_size(), count = part_count(r), first = std::min(k * b, count), last = std::min(first + b, count);
    return std::span<const std::int64_t>(perm_).subspan(offset_[r] + first, last - first);
  }

  void shuffle(std::uint64_t epoch) {
    perm_.resize(n_);  // every shard's ids, or one permutation of all
    offset_.assign(parts() + 1, 0);
    for (std::size_t r = 0; r < parts(); ++r) {
      const std::size_t count = part_count(r), off = offset_[r];
      offset_[r + 1] = off + count;
      const std::span<std::int64_t> p = std::span<std::int64_t>(perm_).subspan(off, count);
      if (opt_.balance == Balance::per_rank) {
        for (std::size_t k = 0; k < count; ++k) p[k] = Shard{r, shard_.size}.global_id(k);
        std::seed_seq seq{lo(seed_), hi(seed_), lo(epoch), hi(epoch), lo(r), hi(r), lo(shard_.size), hi(shard_.size)};
        fisher_yates(p, seq);
      } else {
        std::iota(p.begin(), p.end(), std::int64_t{0});
        std::seed_seq seq{lo(seed_), hi(seed_), lo(epoch), hi(epoch)};
        fisher_yates(p, seq);
      }
    }
    epoch_ = epoch;
    has_epoch_ = true;
  }
  static std::uint32_t lo(std::uint64_t x) { return static_cast<std::uint32_t>(x); }
  static std::uint32_t hi(std::uint64_t x) { return static_cast<std::uint32_t>(x >> 32); }
  static void fisher_yates(std::span<std::int64_t> p, std::seed_seq& seq) {
    std::mt19937_64 rng(seq);
    for (std::size_t i = p.size(); i-- > 1;) std::swap(p[i], p[below(rng, i + 1)]);
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
  SamplerOptions opt_;
  std::size_t per_epoch_ = 1;
  std::uint64_t next_ = 0, epoch_ = 0;
  bool has_epoch_ = false;
  std::vector<std::int64_t> perm_, global_, local_;
  std::vector<std::size_t> offset_;
};

}  // namespace distributed

DFTUNE_NAMESPACE_END
