// The per-step metrics (metrics/metrics.hpp) against closed forms and against the importance
// weights recomputed here from the DFT formulas, and the JSON Lines record (metrics/jsonl.hpp):
// exact text, escaping, null for non-finite numbers, shortest round-trip numbers, duplicate keys.
#include <dftune/metrics/jsonl.hpp>
#include <dftune/metrics/metrics.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/objective/dft.hpp>

#include <doctest/doctest.h>

#include "support/testing.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace dftune;

namespace {

// The metrics recomputed from d_ij and log u_i straight from the formulas of objective/dft.hpp.
struct Expected {
  double ess = 0, max_weight = 0, weight_sum = 0, lu_mean = 0, lu_min = 1e300, lu_max = -1e300;
};
Expected expected(const std::vector<double>& d, const std::vector<double>& log_u, std::size_t m) {
  Expected e;
  const std::size_t B = log_u.size();
  for (std::size_t i = 0; i < B; ++i) {
    long double z = 0, z2 = 0, top = 0, push = 0;
    for (std::size_t j = 0; j < m; ++j) {
      const long double w = std::exp(static_cast<long double>(d[i * m + j]));
      z += w;
      z2 += w * w;
      top = std::max(top, w);
      push += std::exp(static_cast<long double>(d[i * m + j]) - log_u[i]) / static_cast<long double>(m);
    }
    e.ess += static_cast<double>(z * z / z2) / static_cast<double>(B);
    e.max_weight = std::max(e.max_weight, static_cast<double>(top / z));
    e.weight_sum += static_cast<double>(push) / static_cast<double>(B);
    e.lu_mean += log_u[i] / static_cast<double>(B);
    e.lu_min = std::min(e.lu_min, log_u[i]);
    e.lu_max = std::max(e.lu_max, log_u[i]);
  }
  return e;
}

void check(const DftMetrics& got, const Expected& e) {
  CHECK(got.ess == doctest::Approx(e.ess).epsilon(1e-12));
  CHECK(got.max_weight == doctest::Approx(e.max_weight).epsilon(1e-12));
  CHECK(got.weight_sum == doctest::Approx(e.weight_sum).epsilon(1e-12));
  CHECK(got.log_u_mean == doctest::Approx(e.lu_mean).epsilon(1e-12));
  CHECK(got.log_u_min == doctest::Approx(e.lu_min).epsilon(1e-12));
  CHECK(got.log_u_max == doctest::Approx(e.lu_max).epsilon(1e-12));
}

}  // namespace

TEST_CASE("dft_metrics: closed form, two examples with weights 1:3 and 1:1") {
  // DFT, τ = 1, π_ref = 1 (log 0): d_ij = s'_ij. Example 0: exp(d) ∝ 1:3, so w̃ = 1/4, 3/4,
  // ESS = 1/(1/16 + 9/16) = 1.6; example 1: w̃ = 1/2, 1/2, ESS = 2. First visit: log u_i =
  // logmeanexp_j d_ij = log 2 for both, so the push (1/m) Σ_j exp(d_ij − log u_i) is exactly 1.
  const std::vector<std::int64_t> ids{0, 1};
  const std::vector<double> pos{-1, -2}, neg{std::log(1.0), std::log(3.0), std::log(2.0), std::log(2.0)}, ref(4, 0.0);
  const DftOptions opt{.tau = 1.0, .gamma = 0.85};
  Estimator<double> est(2, opt);
  const DftResult<double> r =
      dft_loss(SequenceScores<double>{.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 2}, est, opt);
  const DftMetrics got = dft_metrics(r, 2, opt);
  CHECK(got.ess == doctest::Approx(1.8).epsilon(1e-14));
  CHECK(got.max_weight == doctest::Approx(0.75).epsilon(1e-14));
  CHECK(got.weight_sum == doctest::Approx(1.0).epsilon(1e-14));
  CHECK(got.log_u_mean == doctest::Approx(std::log(2.0)).epsilon(1e-14));
  CHECK(got.log_u_min == doctest::Approx(std::log(2.0)).epsilon(1e-14));
  CHECK(got.log_u_max == doctest::Approx(std::log(2.0)).epsilon(1e-14));
}

TEST_CASE("dft_metrics: DFT and DFT2 with every estimator init, against the weights recomputed from d") {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_int_distribution<int> length(1, 9);
  const std::size_t B = 5, m = 3;
  std::vector<std::int64_t> ids(B), pos_len(B), neg_len(B * m);
  std::vector<double> pos(B), neg(B * m), ref(B * m);
  for (std::size_t i = 0; i < B; ++i) {
    ids[i] = static_cast<std::int64_t>(i);
    pos[i] = -std::abs(normal(rng));
    pos_len[i] = length(rng);
  }
  for (std::size_t k = 0; k < B * m; ++k) {
    neg[k] = -std::abs(normal(rng)) - 1;
    ref[k] = -std::abs(normal(rng)) - 1;
    neg_len[k] = length(rng);
  }
  for (Variant v : {Variant::dft, Variant::dft2})
    for (EstimatorInit init : {EstimatorInit::first_visit, EstimatorInit::constant, EstimatorInit::fixed}) {
      CAPTURE(static_cast<int>(v));
      CAPTURE(static_cast<int>(init));
      const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = 0.9, .init = init, .log_u0 = -0.5};
      Estimator<double> est(B, opt);
      const SequenceScores<double> b{.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref,
                                     .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
      (void)dft_step(b, est, opt);  // a second visit, so constant/first_visit read a stored u
      const DftResult<double> r = dft_loss(b, est, opt);
      std::vector<double> d(B * m);
      for (std::size_t k = 0; k < B * m; ++k)
        d[k] = v == Variant::dft ? neg[k] / opt.tau - ref[k] : neg[k] / (static_cast<double>(neg_len[k]) + opt.eps) / opt.tau;
      check(dft_metrics(r, m, opt, neg_len), expected(d, r.log_u, m));
    }
}

TEST_CASE("dft_metrics: float results, and weights that all underflow give NaN, not a division by zero") {
  const std::vector<std::int64_t> ids{0};
  const std::vector<float> pos{-1}, neg{-200, -210}, ref{0, 0};
  const DftOptions opt{.init = EstimatorInit::fixed, .log_u0 = 0};
  Estimator<float> est(1, opt);
  const DftResult<float> r =
      dft_loss(SequenceScores<float>{.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 2}, est, opt);
  REQUIRE(r.grad_neg[0] == 0.0f);  // exp(−200) underflows float
  const DftMetrics got = dft_metrics(r, 2, opt);
  CHECK(std::isnan(got.ess));
  CHECK(std::isnan(got.max_weight));
  CHECK(got.weight_sum == 0.0);
  CHECK(got.log_u_mean == 0.0);
}

TEST_CASE("dft_metrics: input errors") {
  DftResult<double> r;
  r.log_u = {0.1, 0.2};
  r.grad_neg = {0.1, 0.2, 0.3};
  const DftOptions dft{}, dft2{.variant = Variant::dft2, .tau = 0.3};
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft); }).starts_with("grad_neg: got size 3, expected size 4"));
  r.grad_neg = {0.1, 0.2, -0.5, 0.4};
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft); }).starts_with("grad_neg[2]: got -0.5, expected a DFT weight >= 0"));
  r.grad_neg[2] = 0.3;
  CHECK(test::error_of([&] { (void)dft_metrics(r, 0, dft); }) == "num_negatives: got 0, expected at least 1");
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft2); }).starts_with("neg_len: got size 0, expected size 4"));
  const std::vector<std::int64_t> len{1, 2, 0, 4};
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft2, len); }).starts_with("neg_len[2]: got 0"));
  r.log_u[1] = std::numeric_limits<double>::quiet_NaN();
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft); }).starts_with("log_u[1]: got nan"));
  r.log_u.clear();
  CHECK(test::error_of([&] { (void)dft_metrics(r, 2, dft); }).starts_with("log_u: got size 0"));
}

TEST_CASE("reward_metrics: TRL's rewards/* over B·m pairs, closed form") {
  // B = 2 prompts, m = 2: chosen rewards 1, −1; rejected 0.5, 1 | −2, −1 (a tie: not accurate).
  const PairRewards r{.chosen = {1, -1}, .rejected = {0.5, 1, -2, -1}, .num_negatives = 2};
  const RewardMetrics got = reward_metrics(r);
  CHECK(got.chosen == doctest::Approx(0.0));
  CHECK(got.rejected == doctest::Approx(-0.375));
  CHECK(got.margins == doctest::Approx((0.5 + 0 + 1 + 0) / 4.0));
  CHECK(got.accuracies == doctest::Approx(0.5));  // 1 > 0.5 and −1 > −2 only; 1 = 1 and −1 = −1 are ties
  CHECK(test::error_of([&] { (void)reward_metrics(PairRewards{.chosen = {1}, .rejected = {1}, .num_negatives = 2}); })
            .starts_with("rejected: got size 1, expected size 2"));
  CHECK(test::error_of([&] { (void)reward_metrics(PairRewards{.chosen = {}, .rejected = {}, .num_negatives = 1}); })
            .starts_with("chosen: got size 0"));
}

TEST_CASE("log_ratio_rewards and length_normalized_rewards: TRL's DPO and CPO/ORPO rewards") {
  const std::vector<double> pos{-4, -9}, neg{-6, -3, -12, -10}, ref_pos{-5, -9}, ref_neg{-6, -4, -10, -11};
  const std::vector<std::int64_t> pos_len{2, 3}, neg_len{3, 1, 4, 5};
  const PreferenceScores<double> b{.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = ref_pos,
                                   .ref_neg_logp = ref_neg, .pos_len = pos_len, .neg_len = neg_len, .num_negatives = 2};
  const PairRewards dpo = log_ratio_rewards(b, DpoOptions{.beta = 0.1});
  CHECK(dpo.chosen == std::vector<double>{0.1 * 1, 0.1 * 0});
  CHECK(dpo.rejected[0] == doctest::Approx(0.0));
  CHECK(dpo.rejected[1] == doctest::Approx(0.1));
  CHECK(dpo.rejected[2] == doctest::Approx(-0.2));
  CHECK(dpo.rejected[3] == doctest::Approx(0.1));
  const PairRewards simpo = length_normalized_rewards(b, SimpoOptions{.beta = 2.0});
  CHECK(simpo.chosen[0] == doctest::Approx(-4.0));
  CHECK(simpo.chosen[1] == doctest::Approx(-6.0));
  CHECK(simpo.rejected[0] == doctest::Approx(-4.0));
  CHECK(simpo.rejected[3] == doctest::Approx(-4.0));
  CHECK(test::error_of([&] { (void)log_ratio_rewards(b, DpoOptions{.beta = std::nan("")}); }).starts_with("beta: got nan"));
  // IPO's β and ORPO's λ (TRL's ORPOTrainer uses λ as the reward's β) give the same rewards.
  CHECK(log_ratio_rewards(b, IpoOptions{.beta = 0.1}).rejected == dpo.rejected);
  CHECK(length_normalized_rewards(b, OrpoOptions{.lambda = 2.0}).chosen == simpo.chosen);
  PreferenceScores<double> no_ref = b;
  no_ref.ref_pos_logp = {};
  CHECK(test::error_of([&] { (void)log_ratio_rewards(no_ref, DpoOptions{}); }).starts_with("ref_pos_logp: got size 0"));
  PreferenceScores<double> no_len = b;
  no_len.neg_len = {};
  CHECK(test::error_of([&] { (void)length_normalized_rewards(no_len, SimpoOptions{}); }).starts_with("neg_len: got size 0"));
}

TEST_CASE("JsonRecord: exact text, escaping, null for non-finite numbers") {
  JsonRecord rec;
  rec.add("step", std::size_t{12}).add("loss", 0.25).add("method", "DFT").add("ok", true).add("delta", -3);
  CHECK(rec.str() == R"({"step": 12, "loss": 0.25, "method": "DFT", "ok": true, "delta": -3})");
  CHECK(rec.size() == 5);
  CHECK(rec.contains("loss"));
  CHECK(!rec.contains("lr"));
  JsonRecord odd;
  odd.add("a\"b\\c", std::string_view("line\nnext\ttab\x01")).add("nan", std::nan("")).add("inf", -std::numeric_limits<double>::infinity());
  CHECK(odd.str() == R"({"a\"b\\c": "line\nnext\ttab\u0001", "nan": null, "inf": null})");
  CHECK(test::error_of([&] { rec.add("loss", 1.0); }) == "key: got loss, expected a key not yet in the record");
  CHECK(rec.size() == 5);
  CHECK(JsonRecord{}.str() == "{}");
}

TEST_CASE("JsonRecord: numbers read back to the same double") {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-30, 30);
  for (int k = 0; k < 2000; ++k) {
    const double x = std::ldexp(u(rng), static_cast<int>(u(rng) * 10));
    JsonRecord rec;
    rec.add("x", x);
    const std::string s = rec.str();
    const std::string num = s.substr(6, s.size() - 7);  // {"x": NUM}
    CHECK(std::strtod(num.c_str(), nullptr) == x);
  }
  JsonRecord tiny;
  tiny.add("x", 1e-300).add("y", 0.1);
  CHECK(tiny.str() == R"({"x": 1e-300, "y": 0.1})");
}
