#pragma once
// The per-example estimator state of DFT (docs/math.md, "The estimator"): a moving average u_i of the
// inner mean g_i = (1/m) Σ_j exp(d_ij), kept in the log domain and keyed by a stable example id.
// dft_loss reads it, dft_step updates it; nothing else changes it but set() and checkpoint loading.
//
// Sharded (data-parallel training, docs/distributed.md): an estimator built with Shard{r, P} holds
// u_i only for the ids it owns (i mod P = r), stored at local index i / P, and refuses every other
// id; ids stay global everywhere in the API. With the default Shard{0, 1} it holds every id.
//
// Threads. An Estimator is a plain container with no locks. Calls that only read it (log_u, prior,
// size, raw_*, check_*, dft_loss, io::save/encode) may run concurrently with each other. A call that
// writes it (set, restore, dft_step, DftOptimizer::step, io::load/decode) must not overlap any
// other call on the same Estimator, except that set / dft_step calls whose id sets are disjoint
// touch disjoint elements and may overlap each other (not a restore or load). Overlapping ids
// from two threads are a data race (ThreadSanitizer reports it), and the result depends on which
// write lands last: give each thread its own ids, or serialise the calls.
#include <dftune/config.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/dft_options.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// The estimator state u of DFT (see the file's comment): log u_i per example id, T float or double.
template <class T>
class Estimator {
  static_assert(std::is_floating_point_v<T>, "dftune::Estimator<T>: T must be float or double");

 public:
  // opt.init and opt.log_u0 define the state of an example before its first update; `shard` says
  // which of the ids [0, num_examples) this estimator holds.
  explicit Estimator(std::size_t num_examples, const DftOptions& opt = {}, distributed::Shard shard = {})
      : init_(opt.init), log_u0_(checked_log_u0(opt)), num_examples_(num_examples), shard_(shard) {
    validate(opt);
    distributed::validate(shard);
    if (num_examples == 0) detail::fail("num_examples", num_examples, "at least 1");
    log_u_.assign(shard.local_count(num_examples), T(0));
    seen_.assign(log_u_.size(), 0);
  }

  // opt validated, and log_u0 refused when T cannot hold it (found by tests/fuzz: 1e300 became
  // +inf in an Estimator<float>, and converting it was undefined behaviour).
  static T checked_log_u0(const DftOptions& opt) {
    validate(opt);
    if (!(std::fabs(opt.log_u0) <= static_cast<double>(std::numeric_limits<T>::max())))
      detail::fail("log_u0", opt.log_u0, "a finite number the estimator's scalar type can hold");
    return static_cast<T>(opt.log_u0);
  }

  // The number of examples this estimator holds: num_examples() unless it is sharded.
  std::size_t size() const { return log_u_.size(); }
  // N: ids are in [0, N).
  std::size_t num_examples() const { return num_examples_; }
  // Which ids this estimator holds (Shard{0, 1}: all of them).
  const distributed::Shard& shard() const { return shard_; }
  // How an unseen example's log u starts, and whether it is updated (DftOptions::init).
  EstimatorInit init() const { return init_; }
  // The starting log u of constant and fixed init (DftOptions::log_u0).
  T log_u0() const { return log_u0_; }

  // log u_id, or nothing until example id has been updated once.
  std::optional<T> log_u(std::int64_t id) const {
    check_id(id);
    const std::size_t i = shard_.local_index(id);
    if (!seen_[i]) return std::nullopt;
    return log_u_[i];
  }

  // The log u_i that the next update starts from (docs/math.md, "The estimator"): the stored value, else log_u0 for
  // constant and fixed init, else nothing (first visit: the batch itself initialises it).
  std::optional<T> prior(std::int64_t id) const {
    if (auto v = log_u(id)) return v;
    if (init_ == EstimatorInit::first_visit) return std::nullopt;
    return log_u0_;
  }

  // Stores log u for each id; all checks (check_set) run before the first write, so a bad id or
  // value anywhere in the batch stores nothing.
  void set(std::span<const std::int64_t> ids, std::span<const T> log_u) {
    check_set(ids, log_u);
    for (std::size_t k = 0; k < ids.size(); ++k) {
      const std::size_t i = shard_.local_index(ids[k]);
      log_u_[i] = log_u[k];
      seen_[i] = 1;
    }
  }
  // Throws what set(ids, log_u) would throw, and changes nothing.
  void check_set(std::span<const std::int64_t> ids, std::span<const T> log_u) const {
    detail::check_size("log_u", log_u.size(), ids.size());
    for (std::size_t k = 0; k < ids.size(); ++k) {
      check_id(ids[k], "ids", k);
      if (!std::isfinite(log_u[k])) detail::fail_at("log_u", k, log_u[k], "a finite number");
    }
  }

  // ---- checkpointing (io/checkpoint.hpp) ----------------------------------------------------
  // The raw state: log u_i for every example held (meaningful where seen[i] = 1, else 0) and the
  // flags, by local index (the id itself unless sharded; shard().global_id(k) otherwise).
  // log u by local index (0 where never updated).
  std::span<const T> raw_log_u() const { return log_u_; }
  // 1 where the example has been updated, by local index.
  std::span<const unsigned char> raw_seen() const { return seen_; }
  // Checks a raw state as restore() would; throws dftune::error, changes nothing.
  void check_raw(std::span<const T> log_u, std::span<const unsigned char> seen) const {
    detail::check_size("log_u", log_u.size(), size());
    detail::check_size("seen", seen.size(), size());
    for (std::size_t i = 0; i < seen.size(); ++i) {
      if (seen[i] > 1) detail::fail_at("seen", i, static_cast<int>(seen[i]), "0 or 1");
      if (!std::isfinite(log_u[i])) detail::fail_at("log_u", i, log_u[i], "a finite number");
      if (!seen[i] && log_u[i] != T(0)) detail::fail_at("log_u", i, log_u[i], "0 for an example never updated");
    }
  }
  // Replaces the whole state (same number of examples); all checks run first, then a swap.
  void restore(std::vector<T>&& log_u, std::vector<unsigned char>&& seen) {
    check_raw(log_u, seen);
    log_u_.swap(log_u);
    seen_.swap(seen);
  }

  // Throws unless opt.init and opt.log_u0 are this estimator's. They define its state and only its
  // constructor reads them, so options given later (dft_loss, dft_step, DftOptimizer) that say
  // otherwise would be silently ignored — and a checkpoint would record the wrong ones.
  void check_options(const DftOptions& opt) const {
    if (opt.init != init_) {
      std::ostringstream got, want;
      got << opt.init;
      want << init_;
      detail::fail("options.init", got.str(),
                   want.str() + ", the estimator's (build the Estimator with the same DftOptions)");
    }
    if (checked_log_u0(opt) != log_u0_)
      detail::fail("options.log_u0", opt.log_u0,
                   detail::to_text(static_cast<double>(log_u0_)) + ", the estimator's (build the Estimator with the same DftOptions)");
  }

  // Throws unless id is in [0, num_examples) and held here; `index` names the element of an id array.
  void check_id(std::int64_t id, std::string_view argument = "id", std::optional<std::size_t> index = {}) const {
    const bool in_range = id >= 0 && static_cast<std::size_t>(id) < num_examples_;
    if (in_range && (shard_.size == 1 || shard_.owns(id))) return;
    std::string expected = "an example id in [0, num_examples = " + std::to_string(num_examples_) + ")";
    if (in_range)
      expected = "an id this estimator's shard owns, " + shard_.describe() +
                 " (a rank samples only its own examples; this id belongs to rank " + std::to_string(shard_.owner(id)) + ")";
    if (index) detail::fail_at(argument, *index, id, expected);
    detail::fail(argument, id, expected);
  }


 private:
  EstimatorInit init_;
  T log_u0_;
  std::size_t num_examples_;
  distributed::Shard shard_;
  std::vector<T> log_u_;
  std::vector<unsigned char> seen_;
};

DFTUNE_NAMESPACE_END
