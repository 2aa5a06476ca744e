// The conventions of the public API (CHANGELOG.md): the error taxonomy, one source of truth for
// the estimator's options, data-before-options argument orders and their deprecated spellings,
// the options structs taken by the metrics, and what the umbrella header offers.
#include <dftune/callbacks/jsonl.hpp>  // the deprecated paths still compile
#include <dftune/callbacks/metrics.hpp>
#include <dftune/metrics/metrics.hpp>
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include <doctest/doctest.h>

#include "distributed/thread_world.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

using namespace dftune;

namespace {

// The kind of what f throws, checked against the standard exception it must also be.
template <class F>
error_kind kind_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    const auto* d = dynamic_cast<const error*>(&e);
    REQUIRE(d != nullptr);
    CHECK(d->kind() == error_kind::argument);
    CHECK(std::string(d->what()) == e.what());
    return d->kind();
  } catch (const std::runtime_error& e) {
    const auto* d = dynamic_cast<const error*>(&e);
    REQUIRE(d != nullptr);
    CHECK(d->kind() != error_kind::argument);
    return d->kind();
  }
  FAIL("no exception");
  return error_kind::argument;
}

}  // namespace

TEST_CASE("one base, three kinds, each also the standard exception of its kind") {
  static_assert(std::is_abstract_v<error>);
  static_assert(std::is_base_of_v<error, argument_error> && std::is_base_of_v<std::invalid_argument, argument_error>);
  static_assert(std::is_base_of_v<error, io_error> && std::is_base_of_v<std::runtime_error, io_error>);
  static_assert(std::is_base_of_v<error, device_error> && std::is_base_of_v<std::runtime_error, device_error>);
  static_assert(!std::is_base_of_v<std::invalid_argument, io_error>);
  // Every kind is caught as std::exception (one such base each: no ambiguity) and as dftune::error.
  for (error_kind k : {error_kind::argument, error_kind::io, error_kind::device}) {
    try {
      detail::throw_error(k, "m");
    } catch (const std::exception& e) {
      CHECK(std::string(e.what()) == "m");
      const auto* d = dynamic_cast<const error*>(&e);
      REQUIRE(d != nullptr);
      CHECK(d->kind() == k);
    }
    CHECK_THROWS_AS(detail::throw_error(k, "m"), error);
  }
  CHECK(kind_of([] { detail::fail("x", 1, "2"); }) == error_kind::argument);
  CHECK(kind_of([] { Estimator<double>(0); }) == error_kind::argument);
}

TEST_CASE("the operating system's refusals are io_error, not invalid_argument; bad file contents are argument_error") {
  const Estimator<double> est(3);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "dftune_test_api_no_such_dir";
  std::filesystem::remove_all(dir);
  CHECK(kind_of([&] { io::save(dir / "u.ckpt", est); }) == error_kind::io);
  try {
    io::save(dir / "u.ckpt", est);
  } catch (const io_error& e) {
    CAPTURE(e.what());
    CHECK(std::string(e.what()).find("path: got ") != std::string::npos);
  }
  Estimator<double> into(3);
  CHECK(kind_of([&] { io::load(dir / "u.ckpt", into); }) == error_kind::io);  // no such file
  // A file that is there but is not a checkpoint: its content is the bad argument.
  std::filesystem::create_directories(dir);
  {
    std::FILE* f = std::fopen((dir / "junk.ckpt").c_str(), "wb");
    REQUIRE(f != nullptr);
    std::fputs("not a checkpoint, but long enough to hold a header of forty bytes or so", f);
    std::fclose(f);
  }
  CHECK(kind_of([&] { io::load(dir / "junk.ckpt", into); }) == error_kind::argument);
  std::filesystem::remove_all(dir);
}

TEST_CASE("agree rethrows a rank's error on every rank with that rank's kind") {
  test::ThreadWorld w(2);
  w.run([&](test::ThreadWorld::Comm& c) {
    for (error_kind k : {error_kind::argument, error_kind::io, error_kind::device}) {
      const error_kind got = kind_of([&] {
        distributed::agree(c, [&] {
          if (c.rank() == 1) detail::throw_error(k, "disk full");
        });
      });
      CHECK(got == k);
    }
  });
}

namespace {

struct Batch {
  std::vector<std::int64_t> ids{0, 2};
  std::vector<double> pos{-1.0, -2.0}, neg{-3.0, -0.5, -2.0, -4.0}, ref{-2.5, -1.0, -3.0, -3.5};
  SequenceScores<double> view() const {
    return {.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 2};
  }
};

}  // namespace

TEST_CASE("DftOptions' init and log_u0 must be the estimator's: a named error, before any state changes") {
  const Batch b;
  Estimator<double> est(4, {.init = EstimatorInit::constant, .log_u0 = -0.5});
  const DftOptions fixed{.init = EstimatorInit::fixed, .log_u0 = 5};
  CHECK_THROWS_WITH_AS(dft_step(b.view(), est, fixed),
                       "options.init: got fixed, expected constant, the estimator's (build the Estimator with the same DftOptions)",
                       argument_error);
  CHECK_THROWS_WITH_AS(dft_loss(b.view(), est, DftOptions{.init = EstimatorInit::constant, .log_u0 = 0.0}),
                       "options.log_u0: got 0, expected -0.5, the estimator's (build the Estimator with the same DftOptions)",
                       argument_error);
  CHECK(!est.log_u(0));  // nothing stored
  // The trap: Estimator(2) with an optimizer told fixed/5 used to run first_visit silently.
  CategoricalPolicy<double> model(2, 3);
  Estimator<double> two(2);
  using Opt = DftOptimizer<CategoricalPolicy<double>, Sgd<double>, ConstantSchedule>;
  CHECK_THROWS_WITH_AS(Opt(model, two, fixed, Sgd<double>(), ConstantSchedule{.base_lr = 0.1}),
                       doctest::Contains("options.init: got fixed, expected first_visit"), argument_error);
  // Matching options construct; the defaults match a default estimator.
  Opt ok(model, two, DftOptions{}, Sgd<double>(), ConstantSchedule{.base_lr = 0.1});
  CHECK(ok.options().init == two.init());
}

TEST_CASE("dft_loss and dft_step default their options from the estimator, as the other objectives default theirs") {
  const Batch b;
  Estimator<double> e1(4, {.init = EstimatorInit::constant, .log_u0 = -0.5}), e2 = e1;
  const DftOptions explicit_opt{.init = EstimatorInit::constant, .log_u0 = -0.5};
  CHECK(default_options(e1).tau == 1.0);
  CHECK(default_options(e1).gamma == 0.85);
  const DftResult<double> a = dft_loss(b.view(), e1), c = dft_loss(b.view(), e1, explicit_opt);
  CHECK(a.loss == c.loss);
  CHECK(a.grad_neg == c.grad_neg);
  (void)dft_step(b.view(), e1);
  (void)dft_step(b.view(), e2, explicit_opt);
  CHECK(*e1.log_u(2) == *e2.log_u(2));
}

TEST_CASE("sft_loss takes data first; the old order still compiles, deprecated") {
  const std::vector<double> lp{-2.0, -6.0};
  const std::vector<std::int64_t> len{2, 3};
  const SftOptions tok{.reduction = NllReduction::token_mean};
  const ScoreResult<double> now = sft_loss<double>(lp, len, tok);
  CHECK(now.loss == doctest::Approx(8.0 / 5.0));
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
  const ScoreResult<double> old = sft_loss<double>(lp, tok, len);
  const PairRewards raw = log_ratio_rewards(
      PreferenceScores<double>{.pos_logp = lp, .neg_logp = lp, .ref_pos_logp = lp, .ref_neg_logp = lp, .num_negatives = 1},
      0.1);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  CHECK(old.loss == now.loss);
  CHECK(old.grad == now.grad);
  CHECK(raw.chosen == std::vector<double>{0.0, 0.0});
  CHECK(sft_loss<double>(lp).loss == doctest::Approx(4.0));
}

TEST_CASE("the umbrella header offers Dynamic FT") {
  const std::vector<double> token_logp{-0.5, -1.0, -2.0};
  const std::vector<std::int64_t> offsets{0, 1, 3};
  const ScoreResult<double> r = dynamic_ft_loss(TokenScores<double>{.token_logp = token_logp, .offsets = offsets});
  CHECK(std::isfinite(r.loss));
  CHECK(r.grad.size() == 3);
}

TEST_CASE("one result convention: ScoreResult for one list, PreferenceResult for pairs, DftResult extends it") {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
  static_assert(std::is_same_v<TokenResult<float>, ScoreResult<float>>);  // the old name, deprecated
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  static_assert(std::is_base_of_v<PreferenceResult<double>, DftResult<double>>);
  // A harness that reads pairs takes DPO's result and DFT's alike.
  auto pair_grad_sum = [](const PreferenceResult<double>& r) {
    double s = r.loss;
    for (double g : r.grad_pos) s += g;
    for (double g : r.grad_neg) s += g;
    return s;
  };
  const std::vector<double> pos{-1.0, -2.0}, neg{-3.0, -4.0}, ref{-3.5, -3.0};
  const std::vector<std::int64_t> ids{0, 1};
  Estimator<double> est(2);
  const DftResult<double> dft = dft_loss(SequenceScores<double>{.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                                                .ref_neg_logp = ref, .num_negatives = 1},
                                         est);
  const PreferenceResult<double>& as_pairs = dft;
  CHECK(pair_grad_sum(dft) == as_pairs.loss + dft.grad_pos[0] + dft.grad_pos[1] + dft.grad_neg[0] + dft.grad_neg[1]);
  const PreferenceResult<double> dpo = dpo_loss(PreferenceScores<double>{.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                                                         .ref_pos_logp = ref, .ref_neg_logp = ref,
                                                                         .num_negatives = 1});
  CHECK(std::isfinite(pair_grad_sum(dpo)));
  CHECK(dpo.grad_pos.size() == 2);
}
