#pragma once
// Gradient accumulation scenario shared by tests/test_accumulate.cpp (thread world) and
// tests/mpi/ (mpirun): a rank's share of each global batch split into k contiguous micro-batches
// (some may be empty), trained with DftOptimizer::step(micro_batches).
#include "scenario.hpp"

#include <vector>

namespace scenario {

// ids split into k contiguous parts of sizes ⌊n/k⌋ or ⌈n/k⌉ (the first n mod k one longer).
inline std::vector<Batch> split(const Problem& p, std::span<const std::int64_t> ids, std::size_t k) {
  std::vector<Batch> parts;
  std::size_t first = 0;
  for (std::size_t q = 0; q < k; ++q) {
    const std::size_t n = ids.size() / k + (q < ids.size() % k ? 1 : 0);
    parts.push_back(make_batch(p, ids.subspan(first, n)));
    first += n;
  }
  return parts;
}

// `steps` steps of k micro-batches each; k = 0 means one plain step(batch) per global batch.
template <class M, class Comm, class Rule>
Outcome run_accumulated(const Problem& p, const M& init, Variant v, std::size_t batch_size, std::size_t steps, std::size_t k,
                        Comm comm, Rule rule, StepOptions step = {}) {
  Trainer<M, Comm, Rule> t(p, init, v, batch_size, comm, std::move(rule), step);
  Outcome o;
  for (std::size_t s = 0; s < steps; ++s) {
    const auto ids = t.batches.local_batch(t.opt.steps());
    DftStepInfo<double> info;
    if (k == 0) {
      info = t.opt.step(make_batch(p, ids).view());
    } else {
      const std::vector<Batch> parts = split(p, ids, k);
      std::vector<DftBatch<double>> views;
      for (const Batch& b : parts) views.push_back(b.view());
      info = t.opt.step(std::span<const DftBatch<double>>(views));
    }
    o.loss = static_cast<double>(info.result.loss);
    o.grad_norm = info.grad_norm;
  }
  o.params = t.params();
  for (std::size_t q = 0; q < t.est.size(); ++q)
    if (t.est.raw_seen()[q]) o.u.push_back({t.est.shard().global_id(q), static_cast<double>(t.est.raw_log_u()[q])});
  return o;
}

}  // namespace scenario
