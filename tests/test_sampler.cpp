// distributed::ShardedBatches: drop_last (keep the short last batch, as torch's DataLoader does by
// default, or skip it), the balanced per-rank sampler, the collective construction that makes one
// rank's bad argument every rank's error, and a step on a short last batch (its own 1/B).
#include "support/testing.hpp"
#include "distributed/scenario.hpp"
#include "support/per_rank.hpp"

#include <dftune/distributed/sampler.hpp>

#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>

using namespace dftune;
using distributed::Balance;
using distributed::SamplerOptions;
using distributed::Shard;
using distributed::ShardedBatches;

namespace {

using test::error_of;

std::vector<std::int64_t> vec(std::span<const std::int64_t> s) { return {s.begin(), s.end()}; }

}  // namespace

TEST_CASE("drop_last = false (the default) keeps an epoch's short last batch; true skips it") {
  const std::size_t N = 23, B = 5;
  ShardedBatches keep(N, B, 7), drop(N, B, 7, {}, {.drop_last = true});
  CHECK(keep.batches_per_epoch() == 5);
  CHECK(drop.batches_per_epoch() == 4);
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::multiset<std::int64_t> seen;
    for (std::uint64_t k = 0; k < 5; ++k) {
      const auto g = vec(keep.global_batch(epoch * 5 + k));
      CHECK(g.size() == (k < 4 ? B : N % B));
      seen.insert(g.begin(), g.end());
      if (k < 4) CHECK(g == vec(drop.global_batch(epoch * 4 + k)));  // the same permutation of the epoch
    }
    std::multiset<std::int64_t> all;
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(N); ++i) all.insert(i);
    CHECK(seen == all);  // keep: every id exactly once per epoch
  }
  std::set<std::int64_t> dropped_ever;  // drop: the 3 skipped ids differ from epoch to epoch
  for (std::uint64_t epoch = 0; epoch < 4; ++epoch) {
    std::set<std::int64_t> in;
    for (std::uint64_t k = 0; k < 4; ++k)
      for (std::int64_t id : drop.global_batch(epoch * 4 + k)) in.insert(id);
    CHECK(in.size() == 20);
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(N); ++i)
      if (!in.count(i)) dropped_ever.insert(i);
  }
  CHECK(dropped_ever.size() > 3);
  // The short batch is partitioned over the ranks like any other.
  for (std::size_t P : {2, 3}) {
    std::multiset<std::int64_t> uni;
    for (std::size_t r = 0; r < P; ++r) {
      ShardedBatches s(N, B, 7, Shard{.rank = r, .size = P});
      for (std::int64_t id : s.local_batch(4)) uni.insert(id);
    }
    const auto g = vec(keep.global_batch(4));
    CHECK(uni == std::multiset<std::int64_t>(g.begin(), g.end()));
  }
}

TEST_CASE("a step on the short last batch uses that batch's own size in 1/B, at P = 1 and P = 2") {
  const CategoricalPolicy<double> init = [] {
    CategoricalPolicy<double> p(5, 5);
    std::mt19937_64 rng(2);
    std::normal_distribution<double> z(0, 0.5);
    for (double& x : p.parameters()) x = z(rng);
    return p;
  }();
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 11, 2, 3);
  const std::size_t B = 4;  // batches of 4, 4, 3 per epoch
  // The loss of batch 2 (3 ids) against dft_loss of those 3 ids with B = 3, in one process.
  scenario::Trainer<CategoricalPolicy<double>, distributed::Single> t(problem, init, Variant::dft, B, {});
  t.train(2);
  const scenario::Batch last = t.next_batch();
  REQUIRE(last.ids.size() == 3);
  const DftOptions opt = scenario::options(Variant::dft);
  CategoricalPolicy<double> model = init;
  for (std::size_t k = 0; k < model.parameters().size(); ++k) model.parameters()[k] = t.model.parameters()[k];
  std::vector<double> pos(3), neg(6);
  model.sequence_logp(last.pos.view(), pos);
  model.sequence_logp(last.neg.view(), neg);
  std::vector<std::int64_t> pl(3), nl(6);
  for (std::size_t i = 0; i < 3; ++i) pl[i] = last.pos.view().completion_length(i);
  for (std::size_t i = 0; i < 6; ++i) nl[i] = last.neg.view().completion_length(i);
  const auto want = dft_loss<double>({.ids = last.ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = last.ref,
                                      .pos_len = pl, .neg_len = nl, .num_negatives = 2},
                                     t.est, opt);
  const auto info = t.opt.step(last.view());
  CHECK(info.result.loss == want.loss);
  CHECK(info.result.grad_pos[0] == -1.0 / 3);  // ∂L/∂s_i = −1/B with B = 3, not 4
  // P = 2 over 6 steps (two short batches) follows P = 1.
  const auto one = scenario::run(problem, init, Variant::dft, B, 6, distributed::Single{}, Sgd<double>{});
  test::ThreadWorld w(2);
  w.run([&](test::ThreadWorld::Comm& c) {
    const auto dp = scenario::run(problem, init, Variant::dft, B, 6, c, Sgd<double>{});
    CHECK(scenario::rel_diff(dp.params, one.params) <= 1e-14);
    CHECK(dp.loss == doctest::Approx(one.loss).epsilon(1e-14));
  });
}

TEST_CASE("Balance::per_rank: each rank draws B/P of its own ids per step; epochs cover every shard") {
  const std::size_t N = 23, B = 6;
  for (bool drop_last : {false, true})
    for (std::size_t P : {1, 2, 3}) {
      CAPTURE(drop_last);
      CAPTURE(P);
      std::vector<ShardedBatches> ranks;
      for (std::size_t r = 0; r < P; ++r)
        ranks.emplace_back(N, B, 5, Shard{.rank = r, .size = P}, SamplerOptions{.drop_last = drop_last, .balance = Balance::per_rank});
      const std::size_t b = B / P, n0 = Shard{0, P}.local_count(N), nlast = Shard{P - 1, P}.local_count(N);
      const std::size_t per_epoch = drop_last ? nlast / b : (n0 + b - 1) / b;
      CHECK(ranks[0].batches_per_epoch() == per_epoch);
      for (std::uint64_t epoch = 0; epoch < 2; ++epoch) {
        std::vector<std::multiset<std::int64_t>> seen(P);
        for (std::uint64_t k = 0; k < per_epoch; ++k) {
          std::vector<std::int64_t> uni;
          for (std::size_t r = 0; r < P; ++r) {
            const auto l = vec(ranks[r].local_batch(epoch * per_epoch + k));
            if (drop_last || (k + 1) * b <= Shard{r, P}.local_count(N)) CHECK(l.size() == b);  // exactly B/P
            for (std::int64_t id : l) CHECK(Shard{r, P}.owns(id));
            seen[r].insert(l.begin(), l.end());
            uni.insert(uni.end(), l.begin(), l.end());
          }
          for (std::size_t r = 0; r < P; ++r) CHECK(vec(ranks[r].global_batch(epoch * per_epoch + k)) == uni);
        }
        for (std::size_t r = 0; r < P; ++r) {
          CHECK(std::set<std::int64_t>(seen[r].begin(), seen[r].end()).size() == seen[r].size());  // no id twice in an epoch
          CHECK(seen[r].size() == (drop_last ? per_epoch * b : Shard{r, P}.local_count(N)));
        }
      }
    }
  // Not P-invariant: the batches at P = 2 are not those at P = 1 (documented).
  ShardedBatches one(N, B, 5, {}, {.balance = Balance::per_rank});
  ShardedBatches two0(N, B, 5, Shard{0, 2}, {.balance = Balance::per_rank});
  CHECK(vec(one.global_batch(0)) != vec(two0.global_batch(0)));
}

TEST_CASE("bad sampler arguments: named errors; ranks that disagree: the same error on every rank") {
  CHECK(error_of([] { ShardedBatches(23, 7, 0, Shard{0, 2}, {.balance = Balance::per_rank}); }) ==
        "batch_size: got 7, expected a multiple of the world size P = 2 (the balanced sampler, Balance::per_rank, draws "
        "batch_size / P ids from every rank's shard)");
  CHECK(error_of([] { ShardedBatches(5, 6, 0, Shard{1, 2}, {.drop_last = true, .balance = Balance::per_rank}); }) ==
        "batch_size: got 6, expected a batch size in [1, num_examples = 5]");
  // (B <= N and P | B give B/P <= ⌊N/P⌋, the smallest shard: drop_last always has a batch per epoch.)
  CHECK(ShardedBatches(7, 6, 0, Shard{2, 3}, {.drop_last = true, .balance = Balance::per_rank}).batches_per_epoch() == 1);
  // Collective construction: one rank's bad B, or ranks that disagree, is every rank's error.
  for (std::size_t P : {2, 3}) {
    const auto errors = test::per_rank(P, [&](test::ThreadWorld::Comm& c) {
      std::pair<std::string, std::string> e{
          error_of([&] { (void)ShardedBatches::agreed(c, 24, c.rank() == 1 ? 7 : 6, 0, {.balance = Balance::per_rank}); }),
          error_of([&] { (void)ShardedBatches::agreed(c, 24, 6, c.rank() == 1 ? 9 : 0); })};  // ranks disagree
      const auto ok = ShardedBatches::agreed(c, 24, 6, 0, {.balance = Balance::per_rank});
      CHECK(ok.shard() == Shard{c.rank(), P});
      return e;
    });
    for (std::size_t r = 0; r < P; ++r) {
      CHECK(errors[r].first == "rank 1 of " + std::to_string(P) + ": batch_size: got 7, expected a multiple of the world size P = " +
                             std::to_string(P) + " (the balanced sampler, Balance::per_rank, draws batch_size / P ids from every rank's shard)");
      CHECK(errors[r].second == "seed: got 9 on rank 1, expected 0 as on rank 0 (every rank must sample alike)");
    }
  }
}
