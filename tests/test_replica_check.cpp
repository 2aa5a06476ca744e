// distributed::check_replicas: the checksum of each rank's parameters, rule state and options,
// all-gathered; ranks that differ from rank 0 are named in the same error on every rank.
#include "support/testing.hpp"
#include "distributed/scenario.hpp"
#include "support/per_rank.hpp"

#include <dftune/distributed/replica_check.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <string>

using namespace dftune;
using test::error_of;

namespace {

CategoricalPolicy<double> policy(std::uint64_t seed) {
  CategoricalPolicy<double> p(5, 5);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> z(0, 0.5);
  for (double& x : p.parameters()) x = z(rng);
  return p;
}

const std::string expected_tail =
    ", expected identical replicas on every rank (checksum ";

}  // namespace

TEST_CASE("check_replicas: identical replicas pass; a per-rank seed, rule or option is named on every rank") {
  const CategoricalPolicy<double> init = policy(1);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 12, 2, 3);
  using Comm = test::ThreadWorld::Comm;
  struct Case {
    std::size_t P;
    std::string name;
    std::function<std::uint64_t(std::size_t rank)> model_seed;  // 1 everywhere: the same model
    std::function<AdamW<double>(std::size_t rank)> rule;
    std::string error;  // "" for none
  };
  auto same_seed = [](std::size_t) { return std::uint64_t{1}; };
  auto same_rule = [](std::size_t) { return AdamW<double>{}; };
  const std::vector<Case> cases{
      {2, "identical", same_seed, same_rule, ""},
      {3, "identical", same_seed, same_rule, ""},
      {2, "a model seed per rank", [](std::size_t r) { return std::uint64_t{1 + r}; }, same_rule,
       "replicas: got parameters, rule state or options that differ from rank 0's on rank 1 of 2"},
      {3, "a model seed per rank", [](std::size_t r) { return std::uint64_t{1 + r}; }, same_rule,
       "replicas: got parameters, rule state or options that differ from rank 0's on ranks 1, 2 of 3"},
      {3, "another weight decay on rank 2", same_seed,
       [](std::size_t r) { return AdamW<double>({.weight_decay = r == 2 ? 0.1 : 0.01}); },
       "replicas: got parameters, rule state or options that differ from rank 0's on rank 2 of 3"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    CAPTURE(c.P);
    const auto errors = test::per_rank(c.P, [&](Comm& comm) {
      scenario::Trainer<CategoricalPolicy<double>, Comm> t(problem, policy(c.model_seed(comm.rank())), Variant::dft, 6, comm,
                                                           c.rule(comm.rank()));
      const std::vector<double> p0 = t.params();
      std::string e = error_of([&] { distributed::check_replicas(t.opt); });
      CHECK(scenario::bit_equal(t.params(), p0));  // a check changes nothing
      if (c.error.empty()) {
        t.train(3);  // and again later: the replicas stay identical (AdamW moments included)
        e = error_of([&] { distributed::check_replicas(t.opt); });
      }
      return e;
    });
    for (std::size_t r = 0; r < c.P; ++r) {
      CHECK(errors[r] == errors[0]);
      if (c.error.empty()) CHECK(errors[r] == test::no_error);
      else CHECK((errors[r].starts_with(c.error + expected_tail)));
    }
  }
}

TEST_CASE("replica_checksum: changes with any parameter bit, the rule's moments and the step; same state, same sum") {
  const CategoricalPolicy<double> init = policy(2);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 12, 2, 3);
  scenario::Trainer<CategoricalPolicy<double>, distributed::Single> a(problem, init, Variant::dft, 6, {}), b(problem, init, Variant::dft, 6, {});
  CHECK(distributed::replica_checksum(a.opt) == distributed::replica_checksum(b.opt));
  distributed::check_replicas(a.opt);  // a world of one: nothing to compare, no error
  a.train(1);
  b.train(1);
  CHECK(distributed::replica_checksum(a.opt) == distributed::replica_checksum(b.opt));
  const std::uint64_t before = distributed::replica_checksum(a.opt);
  a.model.parameters()[7] = std::nextafter(a.model.parameters()[7], 1.0);  // one ulp of one parameter
  CHECK(distributed::replica_checksum(a.opt) != before);
  a.model.parameters()[7] = b.model.parameters()[7];
  CHECK(distributed::replica_checksum(a.opt) == before);
}

TEST_CASE("replica_checksum of a million parameters with AdamW's moments: equal for equal states; its time") {
  // CategoricalPolicy(1000, 1000): 10^6 parameters in double, 24 MB with AdamW's two moments.
  CategoricalPolicy<double> m(1000, 1000);
  for (std::size_t k = 0; k < m.parameters().size(); ++k) m.parameters()[k] = 1e-3 * static_cast<double>(k % 977);
  CategoricalPolicy<double> ref = m;
  const scenario::Problem problem = scenario::make_problem(ref, 4, 1, 1);
  scenario::Trainer<CategoricalPolicy<double>, distributed::Single> a(problem, m, Variant::dft, 2, {}), b(problem, m, Variant::dft, 2, {});
  a.train(1);
  b.train(1);
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t ha = distributed::replica_checksum(a.opt);
  const double ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(ha == distributed::replica_checksum(b.opt));
  MESSAGE("replica_checksum: 10^6 parameters + AdamW moments (24 MB): ", ms, " ms (", 1e6 * ms / 24e6, " ns/byte)");
}
