// Data-parallel DFT without MPI: the world of one, sharding by id, P-independent global batches,
// the sharded estimator, the objective's global 1/B, distributed::agree, and DftOptimizer over a
// world of P threads (tests/distributed/thread_world.hpp) against a single process. The same
// scenario runs over MPI in tests/mpi/.
#include "support/testing.hpp"
#include "distributed/scenario.hpp"
#include "support/per_rank.hpp"

#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/sampler.hpp>
#include <dftune/distributed/single.hpp>

#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <set>
#include <string>

using namespace dftune;
using distributed::Shard;
using test::error_of;

namespace {

CategoricalPolicy<double> random_policy(std::size_t V, std::uint64_t seed) {
  CategoricalPolicy<double> p(V, V);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, 0.5);
  for (double& x : p.parameters()) x = n(rng);
  return p;
}

}  // namespace

TEST_CASE("Single is a world of one: identity collectives, size checks") {
  distributed::Single s;
  CHECK(s.rank() == 0);
  CHECK(s.size() == 1);
  std::vector<double> x{1.5, -2};
  s.all_reduce_sum(std::span<double>(x));
  CHECK(x == std::vector<double>{1.5, -2});
  const std::vector<std::byte> in{std::byte{1}, std::byte{2}};
  std::vector<std::byte> out(2);
  s.all_gather(in, out);
  CHECK(out == in);
  std::vector<std::byte> wrong(3);
  CHECK(error_of([&] { s.all_gather(in, wrong); }) == "all_gather out: got size 3, expected size 2");
  CHECK(error_of([&] { s.broadcast(out, 1); }).starts_with("root: got 1, expected 0"));
  static_assert(!distributed::Communicator<int>);
}

TEST_CASE("Shard: ids i mod P, local index i / P, counts") {
  for (std::size_t P : {1, 2, 3, 5})
    for (std::size_t N : {1, 2, 7, 10, 11}) {
      std::size_t total = 0;
      for (std::size_t r = 0; r < P; ++r) {
        const Shard s{.rank = r, .size = P};
        std::size_t owned = 0;
        for (std::int64_t id = 0; id < static_cast<std::int64_t>(N); ++id)
          if (s.owns(id)) {
            CHECK(s.global_id(s.local_index(id)) == id);
            CHECK(s.local_index(id) == owned);
            ++owned;
          }
        CHECK(s.local_count(N) == owned);
        total += owned;
      }
      CHECK(total == N);
    }
  CHECK(error_of([] { distributed::validate(Shard{.rank = 2, .size = 2}); }) ==
        "shard.rank: got 2, expected a rank in [0, size = 2)");
  CHECK(error_of([] { distributed::validate(Shard{.rank = 0, .size = 0}); }) == "shard.size: got 0, expected a world size >= 1");
}

TEST_CASE("ShardedBatches: the global batch does not depend on P; ranks partition it; epochs are permutations") {
  const std::size_t N = 23, B = 5;  // drop_last: 4 batches per epoch, 3 ids dropped (tests/test_sampler.cpp: both)
  const distributed::SamplerOptions drop{.drop_last = true};
  distributed::ShardedBatches one(N, B, 7, {}, drop);
  for (std::uint64_t t = 0; t < 12; ++t) {
    const std::vector<std::int64_t> g(one.global_batch(t).begin(), one.global_batch(t).end());
    CHECK(std::set<std::int64_t>(g.begin(), g.end()).size() == B);  // distinct
    for (std::size_t P : {2, 3, 4}) {
      std::multiset<std::int64_t> uni;
      for (std::size_t r = 0; r < P; ++r) {
        distributed::ShardedBatches s(N, B, 7, Shard{.rank = r, .size = P}, drop);
        CHECK(std::equal(g.begin(), g.end(), s.global_batch(t).begin(), s.global_batch(t).end()));
        for (std::int64_t id : s.local_batch(t)) {
          CHECK(static_cast<std::size_t>(id) % P == r);
          uni.insert(id);
        }
      }
      CHECK(uni == std::multiset<std::int64_t>(g.begin(), g.end()));
    }
  }
  std::set<std::int64_t> epoch0;  // an epoch visits N − N mod B distinct ids
  for (std::uint64_t t = 0; t < 4; ++t)
    for (std::int64_t id : one.global_batch(t)) epoch0.insert(id);
  CHECK(epoch0.size() == 20);
  // Pinned: the shuffle uses only what the C++ standard specifies (mt19937_64, seed_seq, our own
  // bounded draw), so these ids are the same with every compiler and standard library.
  const auto first = one.global_batch(0);
  CHECK(std::vector<std::int64_t>(first.begin(), first.end()) == std::vector<std::int64_t>{4, 10, 13, 8, 17});
  distributed::ShardedBatches seq(N, B, 7, {}, drop);
  seq.next();
  const auto second = seq.next();
  CHECK(std::equal(second.begin(), second.end(), one.global_batch(1).begin(), one.global_batch(1).end()));
  CHECK(seq.next_index() == 2);
  seq.seek(5);
  const auto sixth = seq.next();
  CHECK(std::equal(sixth.begin(), sixth.end(), one.global_batch(5).begin(), one.global_batch(5).end()));
  CHECK(error_of([] { distributed::ShardedBatches(4, 5, 0); }) == "batch_size: got 5, expected a batch size in [1, num_examples = 4]");
}

TEST_CASE("a sharded estimator holds only its ids, under their global names, and names the owner of any other") {
  const DftOptions opt{};
  Estimator<double> e(10, opt, Shard{.rank = 1, .size = 3});  // ids 1, 4, 7
  CHECK(e.size() == 3);
  CHECK(e.num_examples() == 10);
  const std::vector<std::int64_t> ids{4, 7};
  const std::vector<double> u{0.5, -1.25};
  e.set(ids, u);
  CHECK(e.log_u(4) == 0.5);
  CHECK(e.log_u(7) == -1.25);
  CHECK(!e.log_u(1).has_value());
  CHECK(e.raw_log_u()[1] == 0.5);  // local index 4 / 3
  CHECK(error_of([&] { (void)e.log_u(5); }) ==
        "id: got 5, expected an id this estimator's shard owns, rank 1 of 3 (ids with id mod 3 = 1) (a rank samples only "
        "its own examples; this id belongs to rank 2)");
  CHECK(error_of([&] { (void)e.log_u(10); }) == "id: got 10, expected an example id in [0, num_examples = 10)");
  const std::vector<std::int64_t> bad{4, 6};
  const std::vector<double> raw(e.raw_log_u().begin(), e.raw_log_u().end());
  CHECK(error_of([&] { e.set(bad, u); }).starts_with("ids[1]: got 6, expected an id this estimator's shard owns"));
  CHECK(scenario::bit_equal(e.raw_log_u(), raw));  // unchanged
  Estimator<double> few(2, opt, Shard{.rank = 2, .size = 3});  // owns nothing: allowed
  CHECK(few.size() == 0);
}

TEST_CASE("dft_loss with global_batch_size: shares of a batch sum to the whole batch's loss and gradients") {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> n(-3, 1);
  const std::size_t B = 6, m = 3;
  std::vector<std::int64_t> ids(B);
  std::vector<double> pos(B), neg(B * m), ref(B * m);
  for (std::size_t i = 0; i < B; ++i) ids[i] = static_cast<std::int64_t>(i);
  for (auto* v : {&pos, &neg, &ref})
    for (double& x : *v) x = n(rng);
  const DftOptions opt{};
  const Estimator<double> whole_est(B, opt);
  const auto whole = dft_loss<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = m},
                                      whole_est, opt);
  double loss = 0;
  for (std::size_t r = 0; r < 2; ++r) {  // share r: examples 3r, 3r+1, 3r+2
    const Estimator<double> est(B, opt);
    const auto part = dft_loss<double>({.ids = std::span(ids).subspan(3 * r, 3),
                                        .pos_logp = std::span(pos).subspan(3 * r, 3),
                                        .neg_logp = std::span(neg).subspan(3 * r * m, 3 * m),
                                        .ref_neg_logp = std::span(ref).subspan(3 * r * m, 3 * m), .num_negatives = m, .global_batch_size = B},
                                       est, opt);
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(part.grad_pos[i] == whole.grad_pos[3 * r + i]);  // the same 1/B: bit for bit
      CHECK(part.log_u[i] == whole.log_u[3 * r + i]);
      for (std::size_t j = 0; j < m; ++j) CHECK(part.grad_neg[i * m + j] == whole.grad_neg[(3 * r + i) * m + j]);
    }
    loss += part.loss;
  }
  CHECK(loss == doctest::Approx(whole.loss).epsilon(1e-15));
  CHECK(error_of([&] {
          (void)dft_loss<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = m,
                                  .global_batch_size = B - 1},
                                 whole_est, opt);
        }) == "global_batch_size: got 5, expected 0 or at least the batch size B = 6");
}

TEST_CASE("ThreadWorld all_reduce_sum sums in rank order; agree turns one rank's error into every rank's") {
  for (std::size_t P : {2, 3}) {
    test::ThreadWorld w(P);
    w.run([&](test::ThreadWorld::Comm& c) {
      std::vector<double> x{1e16 * (c.rank() == 0 ? 1 : -1), 1.0 + static_cast<double>(c.rank())};
      c.all_reduce_sum(std::span<double>(x));
      double want0 = 1e16, want1 = 1;
      for (std::size_t r = 1; r < P; ++r) {
        want0 = want0 + -1e16;
        want1 = want1 + (1.0 + static_cast<double>(r));
      }
      CHECK(x[0] == want0);
      CHECK(x[1] == want1);
      // success: every rank gets every rank's record
      const auto recs = distributed::agree<std::uint64_t>(c, [&] { return std::uint64_t{10 + c.rank()}; });
      for (std::size_t r = 0; r < P; ++r) CHECK(recs[r] == 10 + r);
      // failure on rank 1 (and on rank 2 when there is one): the same error, everywhere
      const std::string msg = error_of([&] {
        distributed::agree(c, [&] {
          if (c.rank() >= 1) detail::fail("ids", 42 + c.rank(), "an id this rank owns");
        });
      });
      CHECK(msg == (P == 2 ? "rank 1 of 2: ids: got 43, expected an id this rank owns"
                           : "rank 1 of 3 (and 1 more): ids: got 43, expected an id this rank owns"));
      // and the world still works afterwards
      c.barrier();
    });
  }
}

namespace {

// Trains `steps` steps at world size P (threads; P = 1: the Single communicator) and returns, per
// rank, the parameters and the estimator's (id, log u) pairs.
struct Outcome {
  std::vector<std::vector<double>> params;                    // [rank]
  std::vector<std::vector<std::pair<std::int64_t, double>>> u; // [rank] seen ids
  std::vector<double> loss;                                    // [rank] last step's reported loss
};

template <class M>
Outcome train_at(std::size_t P, const scenario::Problem& problem, const M& init, Variant v, std::size_t B, std::size_t steps) {
  std::vector<scenario::Outcome> per(P);
  if (P == 1) {
    per[0] = scenario::run(problem, init, v, B, steps, distributed::Single{});
  } else {
    per = test::per_rank(P, [&](test::ThreadWorld::Comm& c) { return scenario::run(problem, init, v, B, steps, c); });
  }
  Outcome out;
  for (auto& o : per) {
    out.params.push_back(o.params);
    out.u.push_back(o.u);
    out.loss.push_back(o.loss);
  }
  return out;
}

}  // namespace

TEST_CASE("data-parallel DftOptimizer at P = 2, 3 follows the single-process run of the same global batches") {
  const std::size_t V = 6;
  const CategoricalPolicy<double> init = random_policy(V, 1);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 24, 3, 2);
  for (Variant v : {Variant::dft, Variant::dft2})
    for (std::size_t B : {8, 2}) {  // B = 2 at P = 3: a rank owns no id of a batch
      CAPTURE(v);
      CAPTURE(B);
      const Outcome one = train_at(1, problem, init, v, B, 15);
      std::map<std::int64_t, double> u1(one.u[0].begin(), one.u[0].end());
      for (std::size_t P : {2, 3}) {
        CAPTURE(P);
        const Outcome dp = train_at(P, problem, init, v, B, 15);
        const Outcome again = train_at(P, problem, init, v, B, 15);
        std::size_t seen = 0;
        for (std::size_t r = 0; r < P; ++r) {
          CHECK(scenario::bit_equal(dp.params[r], dp.params[0]));      // the replicas stay identical
          CHECK(scenario::bit_equal(dp.params[r], again.params[r]));   // bitwise reproducible at fixed P
          CHECK(scenario::rel_diff(dp.params[r], one.params[0]) <= 1e-12);
          CHECK(dp.loss[r] == dp.loss[0]);
          CHECK(dp.loss[r] == doctest::Approx(one.loss[0]).epsilon(1e-12));
          for (const auto& [id, u] : dp.u[r]) {
            CHECK(static_cast<std::size_t>(id) % P == r);
            REQUIRE(u1.count(id) == 1);
            CHECK(std::fabs(u - u1[id]) <= 1e-12 * std::max(1.0, std::fabs(u1[id])));
          }
          seen += dp.u[r].size();
        }
        CHECK(seen == u1.size());  // every id visited at P = 1 was visited, on exactly one rank
      }
    }
}

TEST_CASE("gradient clipping in a data-parallel step acts on the all-reduced gradient") {
  const std::size_t V = 6, B = 8;
  const CategoricalPolicy<double> init = random_policy(V, 1);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 24, 3, 2);
  const StepOptions clip{.max_grad_norm = 0.05};
  const Sgd<double> sgd({.momentum = 0.9});
  const auto one = scenario::run(problem, init, Variant::dft, B, 10, distributed::Single{}, sgd, clip);
  REQUIRE(one.grad_norm > 0.05);  // the clip is active
  test::ThreadWorld w(2);
  w.run([&](test::ThreadWorld::Comm& c) {
    const auto dp = scenario::run(problem, init, Variant::dft, B, 10, c, sgd, clip);
    CHECK(scenario::rel_diff(dp.params, one.params) <= 1e-12);
    CHECK(dp.grad_norm == doctest::Approx(one.grad_norm).epsilon(1e-12));  // the global norm, on every rank
  });
}

TEST_CASE("a bad input on one rank: every rank throws the same named error, nothing changes, training goes on") {
  const std::size_t V = 5, P = 2, B = 6;
  const CategoricalPolicy<double> init = random_policy(V, 4);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 20, 2, 5);
  const Outcome clean = train_at(P, problem, init, Variant::dft, B, 6);
  struct Case {
    std::string name;
    std::function<void(scenario::Batch&)> spoil;  // applied on rank 1 only
    std::string error;
  };
  const std::vector<Case> cases{
      {"an id of another rank", [](scenario::Batch& b) { b.ids[0] = 0; },
       "rank 1 of 2: ids[0]: got 0, expected an id this estimator's shard owns, rank 1 of 2 (ids with id mod 2 = 1) (a rank "
       "samples only its own examples; this id belongs to rank 0)"},
      {"a NaN reference log-prob", [](scenario::Batch& b) { b.ref[1] = std::nan(""); },
       "rank 1 of 2: ref_neg_logp[1]: got nan, expected a finite number"},
      {"a token outside the vocabulary", [](scenario::Batch& b) { b.neg.tokens.back() = 99; },
       "rank 1 of 2: batch.tokens[12]: got 99, expected in [0, vocab = 5)"},  // step 3: the short batch (20 mod 6 ids)
      {"another m", [](scenario::Batch& b) {
         b.m = 1;
         b.neg = Sequences{};
         b.ref.clear();
         for (std::size_t i = 0; i < b.ids.size(); ++i) {
           b.neg.push(std::vector<token_t>{0}, std::vector<token_t>{1});
           b.ref.push_back(-1);
         }
       },
       "batch.num_negatives: got 1 on rank 1, expected 2 as on rank 0 (every rank of a step must agree)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    std::vector<std::string> errors(P);
    std::vector<std::vector<double>> params(P);
    test::ThreadWorld w(P);
    w.run([&](test::ThreadWorld::Comm& comm) {
      scenario::Trainer<CategoricalPolicy<double>, test::ThreadWorld::Comm> t(problem, init, Variant::dft, B, comm);
      t.train(3);
      const std::vector<double> p0 = t.params();
      const std::vector<double> u0(t.est.raw_log_u().begin(), t.est.raw_log_u().end());
      const std::vector<unsigned char> s0(t.est.raw_seen().begin(), t.est.raw_seen().end());
      scenario::Batch bad = t.next_batch();
      if (comm.rank() == 1) c.spoil(bad);
      errors[comm.rank()] = error_of([&] { t.opt.step(bad.view()); });
      CHECK(scenario::bit_equal(t.params(), p0));
      CHECK(scenario::bit_equal(t.est.raw_log_u(), u0));
      CHECK(std::equal(s0.begin(), s0.end(), t.est.raw_seen().begin(), t.est.raw_seen().end()));
      CHECK(t.opt.steps() == 3);
      t.train(3);  // the failed step is retried with the good batch: as if it never happened
      params[comm.rank()] = t.params();
    });
    CHECK(errors[0] == errors[1]);
    CHECK(errors[0] == c.error);
    for (std::size_t r = 0; r < P; ++r) CHECK(scenario::bit_equal(params[r], clean.params[r]));
  }
}

TEST_CASE("DftOptimizer refuses an estimator sharded unlike its communicator") {
  test::ThreadWorld w(2);
  w.run([&](test::ThreadWorld::Comm& comm) {
    CategoricalPolicy<double> model(2, 2);
    Estimator<double> est(4, {});  // not sharded
    CHECK(error_of([&] { DftOptimizer dft(model, est, {}, Sgd<double>{}, ConstantSchedule{.base_lr = 0.1}, {}, comm); }) ==
          "estimator: got an estimator sharded as rank 0 of 1 (ids with id mod 1 = 0), expected the communicator's shard, "
          "rank " + std::to_string(comm.rank()) + " of 2 (ids with id mod 2 = " + std::to_string(comm.rank()) +
              ") (build it as Estimator<T>(N, options, distributed::shard_of(comm)))");
  });
}
