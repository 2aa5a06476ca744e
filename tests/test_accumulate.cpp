// Gradient accumulation (optim/accumulate.hpp, DftOptimizer::step(micro_batches)): a step over k
// micro-batches is the step over their union — the same global 1/B, loss and metrics of the whole
// batch, the estimator read and updated once per step with every id of the step, clipping on the
// accumulated gradient — at P = 1 and P = 2 (threads; tests/mpi/ runs it under mpirun). Bad input
// (no micro-batch, ranks with different k, an id in two micro-batches): the same named error on
// every rank, nothing changed.
#include "support/testing.hpp"
#include "distributed/accumulate.hpp"
#include "support/per_rank.hpp"

#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <string>

using namespace dftune;

namespace {

using test::error_of;

template <class M>
std::vector<scenario::Outcome> at(std::size_t P, const scenario::Problem& p, const M& init, Variant v, std::size_t B,
                                  std::size_t steps, std::size_t k, StepOptions so) {
  std::vector<scenario::Outcome> per(P);
  const Sgd<double> sgd({.momentum = 0.9});
  if (P == 1) {
    per[0] = scenario::run_accumulated(p, init, v, B, steps, k, distributed::Single{}, sgd, so);
  } else {
    per = test::per_rank(P, [&](test::ThreadWorld::Comm& c) { return scenario::run_accumulated(p, init, v, B, steps, k, c, sgd, so); });
  }
  return per;
}

double u_diff(const std::vector<scenario::Outcome>& per, const scenario::Outcome& one) {
  std::map<std::int64_t, double> u1(one.u.begin(), one.u.end());
  double d = 0;
  std::size_t n = 0;
  for (const auto& o : per)
    for (const auto& [id, u] : o.u) {
      d = std::max(d, std::fabs(u - u1.at(id)) / std::max(1.0, std::fabs(u1.at(id))));
      ++n;
    }
  return n == u1.size() ? d : 1.0;  // every id of the big-batch run, once
}

template <class M>
void equal_to_big_batch(const std::string& name, const M& init, std::size_t N, std::size_t B, std::size_t steps) {
  double worst_params = 0, worst_loss = 0, worst_u = 0;
  M ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, N, 2, 4);
  for (Variant v : {Variant::dft, Variant::dft2})
    for (StepOptions so : {StepOptions{}, StepOptions{.max_grad_norm = 0.05}}) {
      const scenario::Outcome big = at(1, problem, init, v, B, steps, 0, so)[0];
      if (std::isfinite(so.max_grad_norm)) REQUIRE(big.grad_norm > so.max_grad_norm);  // the clip acts
      for (std::size_t P : {1, 2})
        for (std::size_t k : {1, 2, 4}) {
          CAPTURE(name);
          CAPTURE(v);
          CAPTURE(so.max_grad_norm);
          CAPTURE(P);
          CAPTURE(k);
          const auto acc = at(P, problem, init, v, B, steps, k, so);
          for (const auto& o : acc) {
            const double d = scenario::rel_diff(o.params, big.params);
            worst_params = std::max(worst_params, d);
            worst_loss = std::max(worst_loss, std::fabs(o.loss - big.loss) / std::fabs(big.loss));
            CHECK(d <= 1e-15);
            CHECK(scenario::bit_equal(o.params, acc[0].params));  // replicas identical
            // The loss and log u are computed from those parameters (log-sum-exps of larger scores):
            // a few ulps more.
            CHECK(std::fabs(o.loss - big.loss) <= 1e-14 * std::fabs(big.loss));
            CHECK(std::fabs(o.grad_norm - big.grad_norm) <= 1e-15 * big.grad_norm);
          }
          worst_u = std::max(worst_u, u_diff(acc, big));
          CHECK(u_diff(acc, big) <= 1e-14);
          if (P == 1 && k == 1) CHECK(scenario::bit_equal(acc[0].params, big.params));  // step(batch) is step({batch})
        }
    }
  MESSAGE(name, ": k micro-batches vs the big batch after ", steps, " steps, worst over k, P, DFT/DFT2, clip: parameters ", worst_params,
          ", loss ", worst_loss, ", log u ", worst_u, " (relative)");
}

}  // namespace

TEST_CASE("k micro-batches = the big batch (SGD, double, ≤ 1e-15 relative), k ∈ {1, 2, 4}, P ∈ {1, 2}: categorical policy") {
  CategoricalPolicy<double> p(6, 6);
  std::mt19937_64 rng(1);
  std::normal_distribution<double> z(0, 0.5);
  for (double& x : p.parameters()) x = z(rng);
  equal_to_big_batch("CategoricalPolicy", p, 30, 8, 5);  // 30 mod 8: a short last batch, and empty micro-batches at P = 2, k = 4
}

TEST_CASE("k micro-batches = the big batch (SGD, double, ≤ 1e-15 relative), k ∈ {1, 2, 4}, P ∈ {1, 2}: tiny LM") {
  const TinyLm<double> lm({.vocab = 8, .max_len = 8, .d_model = 16, .n_heads = 2, .n_layers = 1, .d_ff = 32}, 5);
  equal_to_big_batch("TinyLm", lm, 24, 8, 3);  // 3 steps: ≲ 10 s on a loaded 2-core machine
}

TEST_CASE("the first step over micro-batches: loss, metrics and log u bit for bit those of the big batch (P = 1)") {
  CategoricalPolicy<double> init(5, 5);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> z(0, 0.5);
  for (double& x : init.parameters()) x = z(rng);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 12, 3, 6);
  using Tr = scenario::Trainer<CategoricalPolicy<double>, distributed::Single, Sgd<double>>;
  Tr a(problem, init, Variant::dft, 12, {}), b(problem, init, Variant::dft, 12, {});
  const auto ids = a.batches.local_batch(0);
  const auto whole = a.opt.step(scenario::make_batch(problem, ids).view());
  const auto parts = scenario::split(problem, ids, 3);
  std::vector<DftBatch<double>> views;
  for (const auto& p : parts) views.push_back(p.view());
  const auto acc = b.opt.step(std::span<const DftBatch<double>>(views));
  CHECK(acc.result.loss == whole.result.loss);
  CHECK(acc.result.objective == whole.result.objective);
  CHECK(acc.mean_pos_logp == whole.mean_pos_logp);
  CHECK(acc.mean_neg_logp == whole.mean_neg_logp);
  CHECK(acc.result.log_u == whole.result.log_u);
  CHECK(acc.result.grad_pos == whole.result.grad_pos);  // −1/B with the step's B = 12, not a micro-batch's 4
  CHECK(acc.result.grad_pos[0] == -1.0 / 12);
  CHECK(scenario::bit_equal(a.est.raw_log_u(), b.est.raw_log_u()));  // every id of the step, once
  CHECK(b.opt.steps() == 1);
}

TEST_CASE("accumulation bad input: no micro-batch, ranks with different k, an id in two micro-batches — every rank's error") {
  CategoricalPolicy<double> init(5, 5);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 16, 2, 7);
  struct Case {
    std::string name;
    std::function<std::vector<scenario::Batch>(const scenario::Problem&, std::span<const std::int64_t>, std::size_t rank)> make;
    std::string error;
  };
  const std::vector<Case> cases{
      {"no micro-batch on rank 1",
       [](const auto& p, auto ids, std::size_t r) { return r == 1 ? std::vector<scenario::Batch>{} : scenario::split(p, ids, 2); },
       "rank 1 of 2: micro_batches: got 0 micro-batches, expected at least 1 (a step over k >= 1 micro-batches)"},
      {"k = 3 on rank 1, 2 on rank 0", [](const auto& p, auto ids, std::size_t r) { return scenario::split(p, ids, r == 1 ? 3 : 2); },
       "micro-batch count: got 3 on rank 1, expected 2 as on rank 0 (every rank of a step must agree)"},
      {"an id in two micro-batches",
       [](const auto& p, auto ids, std::size_t r) {
         auto parts = scenario::split(p, ids, 2);
         if (r == 1) parts[1] = scenario::make_batch(p, std::span<const std::int64_t>(parts[0].ids).first(1));
         return parts;
       },
       "rank 1 of 2: ids: got id "},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const auto errors = test::per_rank(2, [&](test::ThreadWorld::Comm& comm) {
      scenario::Trainer<CategoricalPolicy<double>, test::ThreadWorld::Comm, Sgd<double>> t(problem, init, Variant::dft, 8, comm);
      t.train(1);
      const std::vector<double> p0 = t.params();
      const std::vector<double> u0(t.est.raw_log_u().begin(), t.est.raw_log_u().end());
      const auto parts = c.make(problem, t.batches.local_batch(1), comm.rank());
      std::vector<DftBatch<double>> views;
      for (const auto& b : parts) views.push_back(b.view());
      std::string e = error_of([&] { t.opt.step(std::span<const DftBatch<double>>(views)); });
      CHECK(scenario::bit_equal(t.params(), p0));
      CHECK(scenario::bit_equal(t.est.raw_log_u(), u0));
      CHECK(t.opt.steps() == 1);
      return e;
    });
    CHECK(errors[0] == errors[1]);
    CHECK(errors[0].starts_with(c.error));
  }
  CHECK(error_of([&] {
          scenario::Trainer<CategoricalPolicy<double>, distributed::Single, Sgd<double>> t(problem, init, Variant::dft, 8, {});
          t.opt.step(std::span<const DftBatch<double>>());
        }) == "micro_batches: got 0 micro-batches, expected at least 1 (a step over k >= 1 micro-batches)");
}
