#pragma once
// The data-parallel training scenario shared by the thread-world tests (tests/test_distributed.cpp)
// and the MPI tests (tests/mpi/): N examples of random prompts, one positive and m negatives each,
// log π_ref of the negatives from the initial model; global batches from distributed::ShardedBatches;
// a Trainer owns model, sharded estimator and DftOptimizer over any Communicator.
#include <dftune/dftune.hpp>
#include <dftune/distributed/sampler.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace scenario {

using namespace dftune;

struct Problem {
  std::size_t m = 0, vocab = 0;
  std::vector<std::vector<token_t>> prompt, positive;  // [N]
  std::vector<std::vector<token_t>> negative;          // [N·m], row-major [i][j]
  std::vector<double> ref;                             // [N·m] log π_ref(negative)
  std::size_t size() const { return prompt.size(); }
};

// Prompts of 1–3 tokens, completions of 1–4, all uniform over the vocabulary; `ref_model` scores
// the negatives once (it is the model training starts from).
template <class M>
Problem make_problem(M& ref_model, std::size_t N, std::size_t m, std::uint64_t seed) {
  Problem p;
  p.m = m;
  p.vocab = ref_model.vocab_size();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> plen(1, 3), clen(1, 4), tok(0, p.vocab - 1);
  auto draw = [&](std::size_t n) {
    std::vector<token_t> t(n);
    for (auto& x : t) x = static_cast<token_t>(tok(rng));
    return t;
  };
  Sequences neg;
  for (std::size_t i = 0; i < N; ++i) {
    p.prompt.push_back(draw(plen(rng)));
    p.positive.push_back(draw(clen(rng)));
    for (std::size_t j = 0; j < m; ++j) {
      p.negative.push_back(draw(clen(rng)));
      neg.push(p.prompt.back(), p.negative.back());
    }
  }
  std::vector<typename M::scalar_type> ref(neg.size());
  ref_model.sequence_logp(neg.view(), ref);
  p.ref.assign(ref.begin(), ref.end());
  return p;
}

// The batch of the given ids (global ids; a rank passes the ones it owns).
struct Batch {
  std::vector<std::int64_t> ids;
  Sequences pos, neg;
  std::vector<double> ref;
  std::size_t m = 0;
  DftBatch<double> view() const {
    return {.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = m};
  }
};

inline Batch make_batch(const Problem& p, std::span<const std::int64_t> ids) {
  Batch b;
  b.m = p.m;
  b.ids.assign(ids.begin(), ids.end());
  for (std::int64_t id : ids) {
    const auto i = static_cast<std::size_t>(id);
    b.pos.push(p.prompt[i], p.positive[i]);
    for (std::size_t j = 0; j < p.m; ++j) {
      b.neg.push(p.prompt[i], p.negative[i * p.m + j]);
      b.ref.push_back(p.ref[i * p.m + j]);
    }
  }
  return b;
}

inline DftOptions options(Variant v) {
  return v == Variant::dft ? DftOptions{.variant = v, .tau = 1.0, .gamma = 0.85} : DftOptions{.variant = v, .tau = 0.3, .gamma = 0.9};
}

inline CosineSchedule schedule() { return {.base_lr = 0.05, .min_lr = 0.005, .warmup_steps = 2, .total_steps = 40}; }

// Model, this rank's estimator shard, the optimizer and the global batches; not movable (the
// optimizer holds references to the first two).
template <class M, class Comm, class Rule = AdamW<double>>
struct Trainer {
  const Problem& problem;
  M model;
  Estimator<double> est;
  DftOptimizer<M, Rule, CosineSchedule, Comm> opt;
  distributed::ShardedBatches batches;

  Trainer(const Problem& p, const M& init, Variant v, std::size_t batch_size, Comm comm, Rule rule = {},
          StepOptions step = {}, std::uint64_t seed = 11)
      : problem(p), model(init), est(p.size(), options(v), distributed::shard_of(comm)),
        opt(model, est, options(v), std::move(rule), schedule(), step, comm),
        batches(p.size(), batch_size, seed, distributed::shard_of(comm)) {}
  Trainer(const Trainer&) = delete;

  // The next global batch's share of this rank.
  Batch next_batch() { return make_batch(problem, batches.local_batch(opt.steps())); }
  void train(std::size_t steps) {
    for (std::size_t k = 0; k < steps; ++k) opt.step(next_batch().view());
  }
  std::vector<double> params() { return {model.parameters().begin(), model.parameters().end()}; }
};

// What a rank holds after a run: its parameters, its (id, log u) pairs, the last reported loss.
struct Outcome {
  std::vector<double> params;
  std::vector<std::pair<std::int64_t, double>> u;
  double loss = 0;
  double grad_norm = 0;  // of the last step, before clipping
};

template <class M, class Comm, class Rule = AdamW<double>>
Outcome run(const Problem& p, const M& init, Variant v, std::size_t batch_size, std::size_t steps, Comm comm, Rule rule = {},
            StepOptions step = {}) {
  Trainer<M, Comm, Rule> t(p, init, v, batch_size, comm, std::move(rule), step);
  Outcome o;
  for (std::size_t k = 0; k < steps; ++k) {
    const auto info = t.opt.step(t.next_batch().view());
    o.loss = static_cast<double>(info.result.loss);
    o.grad_norm = info.grad_norm;
  }
  o.params = t.params();
  for (std::size_t k = 0; k < t.est.size(); ++k)
    if (t.est.raw_seen()[k]) o.u.push_back({t.est.shard().global_id(k), static_cast<double>(t.est.raw_log_u()[k])});
  return o;
}

// max_k |a_k − b_k| / max_k |b_k|: the relative distance of two parameter vectors.
inline double rel_diff(std::span<const double> a, std::span<const double> b) {
  double d = 0, n = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    d = std::max(d, std::fabs(a[k] - b[k]));
    n = std::max(n, std::fabs(b[k]));
  }
  return n == 0 ? d : d / n;
}

inline bool bit_equal(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k)
    if (std::bit_cast<std::uint64_t>(a[k]) != std::bit_cast<std::uint64_t>(b[k])) return false;
  return true;
}

// FNV-1a of the bits of a vector, to compare replicas across ranks with one all-gather.
inline std::uint64_t hash(std::span<const double> x) {
  std::uint64_t h = 14695981039346656037ull;
  for (double v : x) {
    h ^= std::bit_cast<std::uint64_t>(v);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace scenario
