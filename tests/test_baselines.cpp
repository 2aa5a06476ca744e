// The baseline objectives (SFT, DPO, IPO, SimPO, ORPO, RWR, REINFORCE/RLOO, Best-of-N) against their
// closed forms written out again here in long double from the papers' formulas, their gradients
// against central finite differences of the loss, an exact expectation check of the REINFORCE
// baselines' (un)biasedness on a small bandit, and every input error.
#include <dftune/objective/baseline.hpp>
#include <dftune/objective/best_of_n.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/reinforce.hpp>
#include <dftune/objective/rwr.hpp>
#include <dftune/objective/sft.hpp>
#include <dftune/objective/simpo.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

using namespace dftune;

namespace {

using L = long double;
const double nan_v = std::numeric_limits<double>::quiet_NaN();
const double inf_v = std::numeric_limits<double>::infinity();

L sigmoid(L x) { return 1 / (1 + std::exp(-x)); }

// A preference batch that owns its data; B = 3 prompts, m = 2 negatives.
struct Prefs {
  std::size_t m = 2;
  std::vector<double> pos{-12.5, -3.25, -40.0};
  std::vector<double> neg{-14.0, -9.5, -2.75, -6.0, -38.0, -45.5};
  std::vector<double> ref_pos{-13.0, -4.0, -39.0};
  std::vector<double> ref_neg{-13.5, -10.0, -3.5, -5.0, -41.0, -44.0};
  std::vector<std::int64_t> pos_len{10, 3, 25};
  std::vector<std::int64_t> neg_len{12, 6, 2, 4, 30, 28};

  PreferenceScores<double> view() const {
    return {.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = ref_pos, .ref_neg_logp = ref_neg,
            .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
  }
};

// Central differences of f's loss wrt every policy score, against f's own gradient.
void check_fd(const Prefs& p0, const std::function<PreferenceResult<double>(const PreferenceScores<double>&)>& f,
              double h = 1e-5, double tol = 1e-8) {
  const PreferenceResult<double> r = f(p0.view());
  for (int which = 0; which < 2; ++which) {
    const std::size_t n = which == 0 ? p0.pos.size() : p0.neg.size();
    for (std::size_t k = 0; k < n; ++k) {
      Prefs up = p0, down = p0;
      (which == 0 ? up.pos : up.neg)[k] += h;
      (which == 0 ? down.pos : down.neg)[k] -= h;
      const double fd = (f(up.view()).loss - f(down.view()).loss) / (2 * h);
      const double g = which == 0 ? r.grad_pos[k] : r.grad_neg[k];
      CAPTURE(which);
      CAPTURE(k);
      CHECK(g == doctest::Approx(fd).epsilon(tol).scale(1.0));
    }
  }
}

// Samples that own their data; B = 2 prompts, k = 3 samples.
struct Samples {
  std::size_t k = 3;
  std::vector<double> logp{-5.0, -2.5, -7.25, -1.0, -3.0, -0.5};
  std::vector<double> reward{0.5, 2.0, -1.0, 3.0, 3.0, 1.5};
  std::vector<std::int64_t> len{5, 2, 7, 1, 4, 2};
  SampleScores<double> view() const { return {.logp = logp, .reward = reward, .len = len, .group_size = k}; }
};

void check_fd(const Samples& s0, const std::function<ScoreResult<double>(const SampleScores<double>&)>& f) {
  const ScoreResult<double> r = f(s0.view());
  const double h = 1e-5;
  for (std::size_t n = 0; n < s0.logp.size(); ++n) {
    Samples up = s0, down = s0;
    up.logp[n] += h;
    down.logp[n] -= h;
    CAPTURE(n);
    CHECK(r.grad[n] == doctest::Approx((f(up.view()).loss - f(down.view()).loss) / (2 * h)).epsilon(1e-8).scale(1.0));
  }
}

}  // namespace

TEST_CASE("SFT: −mean log π(y) per sequence, per token and length-normalised, with exact gradients") {
  const std::vector<double> lp{-2.0, -6.0, -1.5};
  const std::vector<std::int64_t> len{2, 3, 1};
  const auto seq = sft_loss<double>(lp);
  CHECK(seq.loss == doctest::Approx((2.0 + 6.0 + 1.5) / 3).epsilon(1e-15));
  for (double g : seq.grad) CHECK(g == doctest::Approx(-1.0 / 3).epsilon(1e-15));
  const auto tok = sft_loss<double>(lp, len, {.reduction = NllReduction::token_mean});
  CHECK(tok.loss == doctest::Approx(9.5 / 6).epsilon(1e-15));
  for (double g : tok.grad) CHECK(g == doctest::Approx(-1.0 / 6).epsilon(1e-15));
  const auto norm = sft_loss<double>(lp, len, {.reduction = NllReduction::length_normalized});
  CHECK(norm.loss == doctest::Approx((1.0 + 2.0 + 1.5) / 3).epsilon(1e-15));
  CHECK(norm.grad[0] == doctest::Approx(-1.0 / 6).epsilon(1e-15));
  CHECK(norm.grad[1] == doctest::Approx(-1.0 / 9).epsilon(1e-15));
  CHECK(norm.grad[2] == doctest::Approx(-1.0 / 3).epsilon(1e-15));
  const auto f = sft_loss<float>(std::vector<float>{-1.0f, -3.0f});
  CHECK(f.loss == doctest::Approx(2.0).epsilon(1e-7));
}

TEST_CASE("DPO: −log σ(β[(s_w − r_w) − (s_l − r_l)]) averaged over the B·m pairs, gradient = finite differences") {
  const Prefs p;
  for (double beta : {0.1, 0.5, 2.0}) {
    CAPTURE(beta);
    const auto r = dpo_loss(p.view(), {.beta = beta});
    L loss = 0;
    std::vector<L> gpos(3, 0), gneg(6, 0);
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 2; ++j) {
        const std::size_t ij = i * 2 + j;
        const L u = L(beta) * ((L(p.pos[i]) - p.ref_pos[i]) - (L(p.neg[ij]) - p.ref_neg[ij]));
        loss += -std::log(sigmoid(u)) / 6;
        gpos[i] += -L(beta) * sigmoid(-u) / 6;
        gneg[ij] = L(beta) * sigmoid(-u) / 6;
      }
    CHECK(r.loss == doctest::Approx(double(loss)).epsilon(1e-14));
    for (std::size_t i = 0; i < 3; ++i) CHECK(r.grad_pos[i] == doctest::Approx(double(gpos[i])).epsilon(1e-14));
    for (std::size_t k = 0; k < 6; ++k) CHECK(r.grad_neg[k] == doctest::Approx(double(gneg[k])).epsilon(1e-14));
    check_fd(p, [&](const PreferenceScores<double>& b) { return dpo_loss(b, {.beta = beta}); });
  }
  // At zero margin (policy = reference) the loss is log 2 and the gradient ∓β/2 per pair.
  Prefs same = p;
  same.ref_pos = same.pos;
  same.ref_neg = same.neg;
  const auto z = dpo_loss(same.view(), {.beta = 0.3});
  CHECK(z.loss == doctest::Approx(std::log(2.0)).epsilon(1e-15));
  CHECK(z.grad_neg[0] == doctest::Approx(0.3 / 2 / 6).epsilon(1e-15));
  // No overflow at huge margins: −log σ(u) → −u for u → −∞ and → 0 for u → +∞.
  Prefs far = p;
  far.pos[0] = -5000;  // pair (0, j): u ≈ β·(−5000)
  const auto big = dpo_loss(far.view(), {.beta = 1.0});
  CHECK(std::isfinite(big.loss));
  CHECK(big.grad_pos[0] == doctest::Approx(-2.0 / 6).epsilon(1e-12));  // σ(−u) = 1 on both pairs
}

TEST_CASE("IPO: ((s_w − r_w) − (s_l − r_l) − 1/(2β))², gradient = finite differences") {
  const Prefs p;
  const double beta = 0.25;
  const auto r = ipo_loss(p.view(), {.beta = beta});
  L loss = 0;
  std::vector<L> gneg(6);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 2; ++j) {
      const std::size_t ij = i * 2 + j;
      const L h = (L(p.pos[i]) - p.ref_pos[i]) - (L(p.neg[ij]) - p.ref_neg[ij]);
      loss += (h - 1 / (2 * L(beta))) * (h - 1 / (2 * L(beta))) / 6;
      gneg[ij] = -2 * (h - 1 / (2 * L(beta))) / 6;
    }
  CHECK(r.loss == doctest::Approx(double(loss)).epsilon(1e-14));
  for (std::size_t k = 0; k < 6; ++k) CHECK(r.grad_neg[k] == doctest::Approx(double(gneg[k])).epsilon(1e-14));
  check_fd(p, [&](const PreferenceScores<double>& b) { return ipo_loss(b, {.beta = beta}); }, 1e-4, 1e-9);
  // At the target margin the loss and the gradients vanish.
  Prefs at = p;
  at.m = 1;
  at.neg = {-1.0, -1.0, -1.0};
  at.ref_neg = {-1.0, -1.0, -1.0};
  at.ref_pos = {-3.0, -3.0, -3.0};
  at.pos = {-3.0 + 2.0, -3.0 + 2.0, -3.0 + 2.0};  // h = 2 = 1/(2·0.25)
  const auto zero = ipo_loss(at.view(), {.beta = 0.25});
  CHECK(zero.loss == 0.0);
  CHECK(zero.grad_pos[1] == 0.0);
}

TEST_CASE("SimPO: −log σ(β s_w/|y_w| − β s_l/|y_l| − γ), gradient = finite differences") {
  const Prefs p;
  const SimpoOptions o{.beta = 2.5, .gamma = 1.2};
  const auto r = simpo_loss(p.view(), o);
  L loss = 0;
  std::vector<L> gpos(3, 0), gneg(6);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 2; ++j) {
      const std::size_t ij = i * 2 + j;
      const L h = L(o.beta) * p.pos[i] / p.pos_len[i] - L(o.beta) * p.neg[ij] / p.neg_len[ij] - L(o.gamma);
      loss += -std::log(sigmoid(h)) / 6;
      gpos[i] += -sigmoid(-h) * L(o.beta) / p.pos_len[i] / 6;
      gneg[ij] = sigmoid(-h) * L(o.beta) / p.neg_len[ij] / 6;
    }
  CHECK(r.loss == doctest::Approx(double(loss)).epsilon(1e-14));
  for (std::size_t i = 0; i < 3; ++i) CHECK(r.grad_pos[i] == doctest::Approx(double(gpos[i])).epsilon(1e-14));
  for (std::size_t k = 0; k < 6; ++k) CHECK(r.grad_neg[k] == doctest::Approx(double(gneg[k])).epsilon(1e-14));
  check_fd(p, [&](const PreferenceScores<double>& b) { return simpo_loss(b, o); });
  // Reference log-probs are not read: SimPO runs without them.
  Prefs noref = p;
  noref.ref_pos.clear();
  noref.ref_neg.clear();
  CHECK(simpo_loss(noref.view(), o).loss == r.loss);
}

TEST_CASE("ORPO: token-mean SFT + λ·(−log σ(log odds_w − log odds_l)) with length-averaged odds") {
  const Prefs p;
  const OrpoOptions o{.lambda = 0.3};
  const auto r = orpo_loss(p.view(), o);
  // Written with the paper's odds = P/(1 − P), P = exp(s/|y|).
  auto log_odds = [](L s, L len) {
    const L P = std::exp(s / len);
    return std::log(P / (1 - P));
  };
  L tokens = 0, nll = 0, lor = 0;
  for (std::size_t i = 0; i < 3; ++i) tokens += p.pos_len[i], nll -= p.pos[i];
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 2; ++j) {
      const std::size_t ij = i * 2 + j;
      lor += -std::log(sigmoid(log_odds(p.pos[i], p.pos_len[i]) - log_odds(p.neg[ij], p.neg_len[ij]))) / 6;
    }
  CHECK(r.loss == doctest::Approx(double(nll / tokens + L(o.lambda) * lor)).epsilon(1e-13));
  check_fd(p, [&](const PreferenceScores<double>& b) { return orpo_loss(b, o); });
  for (NllReduction red : {NllReduction::sequence_mean, NllReduction::length_normalized}) {
    const OrpoOptions o2{.lambda = 2.0, .sft_reduction = red};
    check_fd(p, [&](const PreferenceScores<double>& b) { return orpo_loss(b, o2); });
    // λ = 0 is exactly SFT with the same reduction on the chosen answers.
    const auto sft = sft_loss<double>(p.pos, p.pos_len, {.reduction = red});
    const auto only_sft = orpo_loss(p.view(), {.lambda = 0.0, .sft_reduction = red});
    CHECK(only_sft.loss == doctest::Approx(sft.loss).epsilon(1e-15));
    for (std::size_t i = 0; i < 3; ++i) CHECK(only_sft.grad_pos[i] == doctest::Approx(sft.grad[i]).epsilon(1e-15));
    for (double g : only_sft.grad_neg) CHECK(g == 0.0);
  }
  // P close to 1 (mean token log-prob −1e-12) keeps log odds and gradients finite and accurate.
  Prefs sure = p;
  sure.pos[0] = -1e-12 * double(sure.pos_len[0]);
  const auto s = orpo_loss(sure.view(), o);
  CHECK(std::isfinite(s.loss));
  // Finite differences are hopeless this close to P = 1 (a step below 1e-11 against a loss of
  // order 1); the closed form in long double, with ∂ log odds/∂s = 1/(|y|(1 − P)), instead.
  L want = -1 / tokens;
  for (std::size_t j = 0; j < 2; ++j) {
    const L pw = L(sure.pos[0]) / sure.pos_len[0], pl = L(sure.neg[j]) / sure.neg_len[j];
    const L h = (pw - std::log(-std::expm1(pw))) - (pl - std::log(-std::expm1(pl)));
    want += L(o.lambda) * -sigmoid(-h) / (sure.pos_len[0] * -std::expm1(pw)) / 6;
  }
  CHECK(s.grad_pos[0] == doctest::Approx(double(want)).epsilon(1e-10));
  CHECK(s.grad_pos[0] < -1 / double(tokens));  // the odds term still pulls on a near-certain answer
}

TEST_CASE("pairwise objectives on a DFT batch: positive ≻ each negative, equal to m separate single-pair batches") {
  const Prefs p;
  const std::vector<std::int64_t> ids{7, 8, 9};
  const SequenceScores<double> dft{.ids = ids, .pos_logp = p.pos, .neg_logp = p.neg,
                                   .ref_neg_logp = p.ref_neg, .pos_len = p.pos_len, .neg_len = p.neg_len, .num_negatives = 2};
  const auto whole = dpo_loss(as_preferences(dft, std::span<const double>(p.ref_pos)), {.beta = 0.5});
  L loss = 0;
  std::vector<L> gpos(3, 0);
  for (std::size_t j = 0; j < 2; ++j) {  // batch j: each prompt's j-th negative only
    Prefs one = p;
    one.m = 1;
    one.neg.clear(), one.ref_neg.clear(), one.neg_len.clear();
    for (std::size_t i = 0; i < 3; ++i) {
      one.neg.push_back(p.neg[i * 2 + j]);
      one.ref_neg.push_back(p.ref_neg[i * 2 + j]);
      one.neg_len.push_back(p.neg_len[i * 2 + j]);
    }
    const auto r = dpo_loss(one.view(), {.beta = 0.5});
    loss += L(r.loss) / 2;
    for (std::size_t i = 0; i < 3; ++i) {
      gpos[i] += L(r.grad_pos[i]) / 2;
      CHECK(whole.grad_neg[i * 2 + j] == doctest::Approx(r.grad_neg[i] / 2).epsilon(1e-15));
    }
  }
  CHECK(whole.loss == doctest::Approx(double(loss)).epsilon(1e-15));
  for (std::size_t i = 0; i < 3; ++i) CHECK(whole.grad_pos[i] == doctest::Approx(double(gpos[i])).epsilon(1e-15));
}

TEST_CASE("RWR: exp(r/η)-weighted SFT, weights normalised over the batch or per prompt") {
  const Samples s;
  const double eta = 0.7;
  {
    const auto r = rwr_loss(s.view(), {.eta = eta});
    L z = 0, loss = 0;
    for (double x : s.reward) z += std::exp(L(x) / eta);
    for (std::size_t n = 0; n < 6; ++n) {
      const L w = std::exp(L(s.reward[n]) / eta) / z;
      loss -= w * s.logp[n];
      CHECK(r.grad[n] == doctest::Approx(double(-w)).epsilon(1e-14));
    }
    CHECK(r.loss == doctest::Approx(double(loss)).epsilon(1e-14));
    CHECK(std::accumulate(r.grad.begin(), r.grad.end(), 0.0) == doctest::Approx(-1.0).epsilon(1e-15));
    check_fd(s, [&](const SampleScores<double>& b) { return rwr_loss(b, {.eta = eta}); });
  }
  {
    const auto r = rwr_loss(s.view(), {.eta = eta, .normalization = RwrNormalization::group});
    for (std::size_t i = 0; i < 2; ++i) {
      L z = 0;
      for (std::size_t j = 0; j < 3; ++j) z += std::exp(L(s.reward[i * 3 + j]) / eta);
      for (std::size_t j = 0; j < 3; ++j)
        CHECK(r.grad[i * 3 + j] == doctest::Approx(double(-std::exp(L(s.reward[i * 3 + j]) / eta) / z / 2)).epsilon(1e-14));
    }
    check_fd(s, [&](const SampleScores<double>& b) { return rwr_loss(b, {.eta = eta, .normalization = RwrNormalization::group}); });
  }
  // Rewards of 1e4 at η = 0.01 would overflow exp(r/η) without the max subtracted.
  Samples huge = s;
  for (double& x : huge.reward) x *= 1e4;
  const auto h = rwr_loss(huge.view(), {.eta = 0.01, .normalization = RwrNormalization::group});
  CHECK(std::isfinite(h.loss));
  // η → 0 with group normalisation is Best-of-N (prompt 1 ties two samples at 3.0: weight 1/2 each).
  const auto cold = rwr_loss(s.view(), {.eta = 1e-3, .normalization = RwrNormalization::group});
  CHECK(cold.grad[1] == doctest::Approx(-0.5).epsilon(1e-12));
  CHECK(cold.grad[3] == doctest::Approx(-0.25).epsilon(1e-12));
  CHECK(cold.grad[4] == doctest::Approx(-0.25).epsilon(1e-12));
  CHECK(std::abs(cold.grad[0]) < 1e-300);
}

TEST_CASE("REINFORCE: −(1/N) Σ (r − b) log π with the batch mean, a constant, per-sample baselines and RLOO") {
  const Samples s;
  const double mean = (0.5 + 2.0 - 1.0 + 3.0 + 3.0 + 1.5) / 6;
  const auto bm = reinforce_loss(s.view());
  for (std::size_t n = 0; n < 6; ++n) CHECK(bm.grad[n] == doctest::Approx(-(s.reward[n] - mean) / 6).epsilon(1e-14));
  L loss = 0;
  for (std::size_t n = 0; n < 6; ++n) loss -= (L(s.reward[n]) - mean) * s.logp[n] / 6;
  CHECK(bm.loss == doctest::Approx(double(loss)).epsilon(1e-14));
  check_fd(s, [](const SampleScores<double>& b) { return reinforce_loss(b); });

  const auto cb = reinforce_loss(s.view(), ConstantBaseline{.value = 1.0});
  for (std::size_t n = 0; n < 6; ++n) CHECK(cb.grad[n] == doctest::Approx(-(s.reward[n] - 1.0) / 6).epsilon(1e-15));
  const std::vector<double> v{0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  const auto sb = reinforce_loss(s.view(), SampleBaseline<double>{.values = v});
  for (std::size_t n = 0; n < 6; ++n) CHECK(sb.grad[n] == doctest::Approx(-(s.reward[n] - v[n]) / 6).epsilon(1e-15));

  // RLOO: b_ij = mean of the other k − 1 rewards of prompt i; equivalently k/(k−1)·(r − group mean).
  const auto loo = rloo_loss(s.view());
  for (std::size_t i = 0; i < 2; ++i) {
    L sum = 0;
    for (std::size_t j = 0; j < 3; ++j) sum += s.reward[i * 3 + j];
    for (std::size_t j = 0; j < 3; ++j) {
      const std::size_t n = i * 3 + j;
      const L b = (sum - s.reward[n]) / 2;
      CHECK(loo.grad[n] == doctest::Approx(double(-(s.reward[n] - b) / 6)).epsilon(1e-14));
      CHECK(loo.grad[n] == doctest::Approx(double(-(L(3) / 2) * (s.reward[n] - sum / 3) / 6)).epsilon(1e-14));
    }
  }
  check_fd(s, [](const SampleScores<double>& b) { return rloo_loss(b); });
  CHECK(rloo_loss(s.view()).loss == reinforce_loss(s.view(), LeaveOneOutBaseline{}).loss);
}

TEST_CASE("REINFORCE baselines in expectation on a 3-armed bandit: RLOO unbiased, batch mean biased by (1 − 1/N)") {
  // π = softmax(θ), k = 3 samples of one prompt; enumerate all 27 outcomes exactly.
  const std::vector<double> theta{0.3, -0.8, 1.1}, r{1.0, 4.0, -2.0};
  std::vector<double> pi(3);
  double z = 0;
  for (std::size_t a = 0; a < 3; ++a) z += std::exp(theta[a]);
  for (std::size_t a = 0; a < 3; ++a) pi[a] = std::exp(theta[a]) / z;
  // True gradient of the loss −E_π[r]: −π_a (r_a − E_π r).
  double er = 0;
  for (std::size_t a = 0; a < 3; ++a) er += pi[a] * r[a];
  std::vector<double> truth(3), e_loo(3, 0), e_mean(3, 0);
  for (std::size_t a = 0; a < 3; ++a) truth[a] = -pi[a] * (r[a] - er);
  for (std::size_t t = 0; t < 27; ++t) {
    const std::size_t arm[3] = {t % 3, (t / 3) % 3, t / 9};
    const double prob = pi[arm[0]] * pi[arm[1]] * pi[arm[2]];
    std::vector<double> lp(3), rew(3);
    for (std::size_t j = 0; j < 3; ++j) lp[j] = std::log(pi[arm[j]]), rew[j] = r[arm[j]];
    const SampleScores<double> s{.logp = lp, .reward = rew, .group_size = 3};
    const auto loo = rloo_loss(s), mean = reinforce_loss(s);
    // ∂L/∂θ_a = Σ_j ∂L/∂s_j · (1[arm_j = a] − π_a).
    for (std::size_t a = 0; a < 3; ++a)
      for (std::size_t j = 0; j < 3; ++j) {
        e_loo[a] += prob * loo.grad[j] * ((arm[j] == a) - pi[a]);
        e_mean[a] += prob * mean.grad[j] * ((arm[j] == a) - pi[a]);
      }
  }
  for (std::size_t a = 0; a < 3; ++a) {
    CHECK(e_loo[a] == doctest::Approx(truth[a]).epsilon(1e-12));
    CHECK(e_mean[a] == doctest::Approx(truth[a] * (1 - 1.0 / 3)).epsilon(1e-12));
  }
}

TEST_CASE("Best-of-N: SFT on the highest-reward sample of each prompt, ties to the first") {
  const Samples s;
  CHECK(best_of_n_indices(s.view()) == std::vector<std::size_t>{1, 3});  // prompt 1: 3.0 twice → j = 0
  const auto r = best_of_n_loss(s.view());
  CHECK(r.loss == doctest::Approx((2.5 + 1.0) / 2).epsilon(1e-15));
  const std::vector<double> want{0, -0.5, 0, -0.5, 0, 0};
  for (std::size_t n = 0; n < 6; ++n) CHECK(r.grad[n] == doctest::Approx(want[n]).epsilon(1e-15));
  const auto tok = best_of_n_loss(s.view(), {.reduction = NllReduction::token_mean});
  CHECK(tok.loss == doctest::Approx(3.5 / 3).epsilon(1e-15));  // |y| = 2 and 1
  CHECK(tok.grad[1] == doctest::Approx(-1.0 / 3).epsilon(1e-15));
  check_fd(s, [](const SampleScores<double>& b) { return best_of_n_loss(b); });
  // N = 1 is SFT on every sample.
  Samples one = s;
  one.k = 1;
  const auto all = best_of_n_loss(one.view());
  const auto sft = sft_loss<double>(s.logp);
  CHECK(all.loss == doctest::Approx(sft.loss).epsilon(1e-15));
}

TEST_CASE("preference objectives reject bad input and options, naming the argument") {
  const Prefs p;
  auto with = [&](auto edit) {
    Prefs q = p;
    edit(q);
    return q;
  };
  auto all = [&](const Prefs& q, const char* what) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(dpo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(ipo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(simpo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(orpo_loss(q.view()), doctest::Contains(what), error);
  };
  all(with([](Prefs& q) { q.pos[1] = nan_v; }), "pos_logp[1]: got nan");
  all(with([](Prefs& q) { q.neg[5] = -inf_v; }), "neg_logp[5]: got -inf, expected a finite number");
  all(with([](Prefs& q) { q.neg.pop_back(); }), "neg_logp: got size 5, expected size 6");
  all(with([](Prefs& q) { q.m = 0; }), "num_negatives: got 0");
  all(with([](Prefs& q) { q.pos.clear(); }), "pos_logp: got size 0, expected at least one prompt");
  // B·m wraps around size_t to 2 = neg.size() when B = 3: the check must see the true product
  // (before the fix the wrapped product passed and the pairwise loop read past the buffer).
  all(with([](Prefs& q) { q.m = std::numeric_limits<std::size_t>::max() / 3 + 1; q.neg.resize(2); }),
      "num_negatives (B·m): got 3·6148914691236517206, expected a product of sizes that fits in size_t");

  // What only some objectives read.
  auto ref_users = [&](const Prefs& q, const char* what) {
    CHECK_THROWS_WITH_AS(dpo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(ipo_loss(q.view()), doctest::Contains(what), error);
    CHECK_NOTHROW(simpo_loss(q.view()));
    CHECK_NOTHROW(orpo_loss(q.view()));
  };
  ref_users(with([](Prefs& q) { q.ref_pos.clear(); }), "ref_pos_logp: got size 0, expected size B = 3 (");
  ref_users(with([](Prefs& q) { q.ref_neg[2] = inf_v; }), "ref_neg_logp[2]: got inf");
  ref_users(with([](Prefs& q) { q.ref_neg.push_back(0); }), "ref_neg_logp: got size 7, expected size 6");
  auto len_users = [&](const Prefs& q, const char* what) {
    CHECK_NOTHROW(dpo_loss(q.view()));
    CHECK_NOTHROW(ipo_loss(q.view()));
    CHECK_THROWS_WITH_AS(simpo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(orpo_loss(q.view()), doctest::Contains(what), error);
  };
  len_users(with([](Prefs& q) { q.neg_len.clear(); }), "neg_len: got size 0, expected size 6");
  len_users(with([](Prefs& q) { q.pos_len[2] = 0; }), "pos_len[2]: got 0, expected a completion length >= 1");
  len_users(with([](Prefs& q) { q.pos_len.pop_back(); }), "pos_len: got size 2, expected size 3");
  CHECK_THROWS_WITH_AS(orpo_loss(with([](Prefs& q) { q.neg[3] = 0.0; }).view()),
                       doctest::Contains("neg_logp[3]: got 0, expected a log-prob < 0"), error);

  CHECK_THROWS_WITH_AS(dpo_loss(p.view(), {.beta = 0}), doctest::Contains("beta: got 0, expected a finite number > 0"), error);
  CHECK_THROWS_WITH_AS(dpo_loss(p.view(), {.beta = -0.1}), doctest::Contains("beta"), error);
  CHECK_THROWS_WITH_AS(dpo_loss(p.view(), {.beta = nan_v}), doctest::Contains("beta"), error);
  CHECK_THROWS_WITH_AS(ipo_loss(p.view(), {.beta = 0}), doctest::Contains("beta"), error);
  CHECK_THROWS_WITH_AS(ipo_loss(p.view(), {.beta = inf_v}), doctest::Contains("beta"), error);
  CHECK_THROWS_WITH_AS(simpo_loss(p.view(), {.beta = -2}), doctest::Contains("beta"), error);
  CHECK_THROWS_WITH_AS(simpo_loss(p.view(), {.gamma = -0.5}), doctest::Contains("gamma: got -0.5"), error);
  CHECK_THROWS_WITH_AS(simpo_loss(p.view(), {.gamma = nan_v}), doctest::Contains("gamma"), error);
  CHECK_THROWS_WITH_AS(orpo_loss(p.view(), {.lambda = -1}), doctest::Contains("lambda: got -1"), error);
  CHECK_THROWS_WITH_AS(orpo_loss(p.view(), {.sft_reduction = NllReduction(7)}), doctest::Contains("reduction: got 7"), error);
}

TEST_CASE("SFT and sample objectives reject bad input and options, naming the argument") {
  const std::vector<double> lp{-1.0, -2.0};
  const std::vector<std::int64_t> len{1, 2};
  CHECK_THROWS_WITH_AS(sft_loss<double>(std::vector<double>{}), doctest::Contains("logp: got size 0"), error);
  CHECK_THROWS_WITH_AS(sft_loss<double>(std::vector<double>{-1.0, nan_v}), doctest::Contains("logp[1]: got nan"), error);
  CHECK_THROWS_WITH_AS(sft_loss<double>(lp, {}, {.reduction = NllReduction::token_mean}), doctest::Contains("len: got size 0"), error);
  CHECK_THROWS_WITH_AS(sft_loss<double>(lp, std::vector<std::int64_t>{1, -2}, {.reduction = NllReduction::length_normalized}),
                       doctest::Contains("len[1]: got -2"), error);
  CHECK_THROWS_WITH_AS(sft_loss<double>(lp, std::vector<std::int64_t>{1}, {.reduction = NllReduction::token_mean}),
                       doctest::Contains("len: got size 1, expected size 2"), error);
  CHECK_THROWS_WITH_AS(sft_loss<double>(lp, {}, {.reduction = NllReduction(3)}), doctest::Contains("reduction"), error);
  CHECK_NOTHROW(sft_loss<double>(lp, len));

  const Samples s;
  auto with = [&](auto edit) {
    Samples q = s;
    edit(q);
    return q;
  };
  auto all = [&](const Samples& q, const char* what) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(rwr_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(reinforce_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(rloo_loss(q.view()), doctest::Contains(what), error);
    CHECK_THROWS_WITH_AS(best_of_n_loss(q.view()), doctest::Contains(what), error);
  };
  all(with([](Samples& q) { q.logp[4] = inf_v; }), "logp[4]: got inf");
  all(with([](Samples& q) { q.reward[2] = nan_v; }), "reward[2]: got nan");
  all(with([](Samples& q) { q.reward.pop_back(); }), "reward: got size 5, expected size 6");
  all(with([](Samples& q) { q.logp.pop_back(), q.reward.pop_back(); }), "logp: got size 5, expected a multiple of group_size = 3");
  all(with([](Samples& q) { q.k = 0; }), "group_size: got 0");
  all(with([](Samples& q) { q.logp.clear(), q.reward.clear(); }), "logp: got size 0");
  CHECK_THROWS_WITH_AS(rloo_loss(with([](Samples& q) { q.k = 1; }).view()),
                       doctest::Contains("group_size: got 1, expected at least 2 (RLOO"), error);
  CHECK_NOTHROW(reinforce_loss(with([](Samples& q) { q.k = 1; }).view()));

  CHECK_THROWS_WITH_AS(rwr_loss(s.view(), {.eta = 0}), doctest::Contains("eta: got 0"), error);
  CHECK_THROWS_WITH_AS(rwr_loss(s.view(), {.eta = inf_v}), doctest::Contains("eta"), error);
  CHECK_THROWS_WITH_AS(rwr_loss(s.view(), {.normalization = RwrNormalization(5)}), doctest::Contains("normalization"), error);
  CHECK_THROWS_WITH_AS(reinforce_loss(s.view(), ConstantBaseline{.value = nan_v}), doctest::Contains("baseline: got nan"), error);
  const std::vector<double> short_b{1.0}, bad_b{0, 0, 0, 0, inf_v, 0};
  CHECK_THROWS_WITH_AS(reinforce_loss(s.view(), SampleBaseline<double>{.values = short_b}),
                       doctest::Contains("baseline: got size 1, expected size 6"), error);
  CHECK_THROWS_WITH_AS(reinforce_loss(s.view(), SampleBaseline<double>{.values = bad_b}), doctest::Contains("baseline[4]: got inf"), error);
  CHECK_THROWS_WITH_AS(best_of_n_loss(with([](Samples& q) { q.len.clear(); }).view(), {.reduction = NllReduction::token_mean}),
                       doctest::Contains("len: got size 0"), error);
}

TEST_CASE("every objective instantiates for float and agrees with double") {
  const Prefs p;
  const std::vector<float> pos(p.pos.begin(), p.pos.end()), neg(p.neg.begin(), p.neg.end());
  const std::vector<float> rpos(p.ref_pos.begin(), p.ref_pos.end()), rneg(p.ref_neg.begin(), p.ref_neg.end());
  const PreferenceScores<float> f{.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = rpos,
                                  .ref_neg_logp = rneg, .pos_len = p.pos_len, .neg_len = p.neg_len, .num_negatives = 2};
  CHECK(dpo_loss(f).loss == doctest::Approx(dpo_loss(p.view()).loss).epsilon(1e-6));
  CHECK(ipo_loss(f).loss == doctest::Approx(ipo_loss(p.view()).loss).epsilon(1e-6));
  CHECK(simpo_loss(f).loss == doctest::Approx(simpo_loss(p.view()).loss).epsilon(1e-6));
  CHECK(orpo_loss(f).loss == doctest::Approx(orpo_loss(p.view()).loss).epsilon(1e-6));
  const Samples s;
  const std::vector<float> lp(s.logp.begin(), s.logp.end()), rw(s.reward.begin(), s.reward.end());
  const SampleScores<float> fs{.logp = lp, .reward = rw, .len = s.len, .group_size = 3};
  CHECK(rwr_loss(fs).loss == doctest::Approx(rwr_loss(s.view()).loss).epsilon(1e-6));
  CHECK(reinforce_loss(fs).loss == doctest::Approx(reinforce_loss(s.view()).loss).epsilon(1e-6));
  CHECK(rloo_loss(fs).loss == doctest::Approx(rloo_loss(s.view()).loss).epsilon(1e-6));
  CHECK(best_of_n_loss(fs).loss == doctest::Approx(best_of_n_loss(s.view()).loss).epsilon(1e-6));
  CHECK(sft_loss<float>(lp).loss == doctest::Approx(sft_loss<double>(s.logp).loss).epsilon(1e-6));
}

// ---- Extreme finite inputs (issue #12, item 5): a finite result, equal to the closed form where it
// fits, or a dftune::error naming what T cannot hold — never inf or NaN.

TEST_CASE("IPO: the mean of squares fits where one pair's square overflows; a subnormal β is a named error") {
  // B = 1, m = 2, β = 0.5 (target 1): pair 0 has e = h − 1 ≈ 1.5e154, e² ≈ 2.25e308 > max; pair 1
  // sits at the target. L = e²/2 ≈ 1.125e308 fits (before the fix: (Σ e²)/2 = inf/2 = inf).
  Prefs p;
  p.m = 2;
  p.pos = {0.0};
  p.ref_pos = {0.0};
  p.neg = {-1.5e154, -1.0};
  p.ref_neg = {0.0, 0.0};
  p.pos_len = {1};
  p.neg_len = {1, 1};
  const auto r = ipo_loss(p.view(), {.beta = 0.5});
  const L e = L(1.5e154) - 1;
  CHECK(r.loss == doctest::Approx(double(e * e / 2)).epsilon(1e-15));
  CHECK(r.grad_pos[0] == doctest::Approx(double(e)).epsilon(1e-15));  // 2e/2 + 2·0/2
  CHECK(r.grad_neg[0] == doctest::Approx(double(-e)).epsilon(1e-15));
  CHECK(r.grad_neg[1] == 0.0);
  // One pair whose square does not fit: the loss is an error naming it, not inf.
  p.m = 1;
  p.neg = {-1.5e154};
  p.ref_neg = {0.0};
  p.neg_len = {1};
  CHECK_THROWS_WITH_AS(ipo_loss(p.view(), {.beta = 0.5}), doctest::Contains("loss: got inf, expected a value the scalar type can hold"),
                       error);
  // β = 5e-324: 1/(2β) is inf (before the fix: loss inf, gradient -inf).
  const Prefs q;
  CHECK_THROWS_WITH_AS(ipo_loss(q.view(), {.beta = 5e-324}),
                       doctest::Contains("beta: got 4.9406564584124654e-324, expected a number > 0 whose target margin 1/(2β) is finite"),
                       error);
  CHECK_NOTHROW(ipo_loss(q.view(), {.beta = 1e-150}));  // target 5e149: its square fits
}

TEST_CASE("float baselines whose double result float cannot hold are errors, not inf") {
  const Prefs p;
  const std::vector<float> pos(p.pos.begin(), p.pos.end()), neg(p.neg.begin(), p.neg.end());
  const std::vector<float> rpos(p.ref_pos.begin(), p.ref_pos.end()), rneg(p.ref_neg.begin(), p.ref_neg.end());
  const PreferenceScores<float> f{.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = rpos,
                                  .ref_neg_logp = rneg, .pos_len = p.pos_len, .neg_len = p.neg_len, .num_negatives = 2};
  // DPO β = 1e300: pair (2, 0) has the log-ratio margin −4, so its loss is 4e300/6 (before the fix: inf).
  CHECK_THROWS_WITH_AS(dpo_loss(f, {.beta = 1e300}), doctest::Contains("loss: got 6.666666666666667e+299, expected a value the scalar type can hold"), error);
  // SimPO γ = 1e39: the loss ≈ 1e39 exceeds FLT_MAX.
  CHECK_THROWS_WITH_AS(simpo_loss(f, {.gamma = 1e39}), doctest::Contains("loss: got 9.9999999999999994e+38"), error);
  // ORPO λ = 1e300.
  CHECK_THROWS_WITH_AS(orpo_loss(f, {.lambda = 1e300}), doctest::Contains("loss: got "), error);
  // The same in double fits, and equals the closed form.
  const auto d = orpo_loss(p.view(), {.lambda = 1e300});
  const auto base = orpo_loss(p.view(), {.lambda = 1.0});
  const auto sft_only = orpo_loss(p.view(), {.lambda = 0.0});
  CHECK(d.loss == doctest::Approx(1e300 * (base.loss - sft_only.loss)).epsilon(1e-13));
  // SFT at FLT_MAX-sized log-probs: the mean still fits float.
  const std::vector<float> big{-3.0e38f, -3.4e38f, -3.4e38f};
  CHECK(sft_loss<float>(big).loss == doctest::Approx(3.2666667e38).epsilon(1e-6));
  // A REINFORCE gradient −(r − b)/N beyond FLT_MAX: a named error for the gradient entry.
  const std::vector<float> lp{0.f}, rw{3e38f};
  CHECK_THROWS_WITH_AS(reinforce_loss(SampleScores<float>{.logp = lp, .reward = rw, .group_size = 1}, ConstantBaseline{.value = -1e39}),
                       doctest::Contains("grad[0]: got -1.3000000"), error);
}

TEST_CASE("REINFORCE and RLOO: rewards near ±1e308 give the closed-form advantages (no overflow in sums)") {
  // B = 1, k = 3: Σ r = 2e308 overflows, the mean 6.67e307 does not (before the fix: loss −inf / NaN).
  Samples s;
  s.k = 3;
  s.reward = {1.5e308, 1.5e308, -1e308};
  s.logp = {-0.5, -0.25, -1.0};
  s.len = {1, 1, 1};
  const L mean = (L(1.5e308) + L(1.5e308) - L(1e308)) / 3;
  const auto bm = reinforce_loss(s.view());
  L loss = 0;
  for (std::size_t n = 0; n < 3; ++n) {
    const L c = (L(s.reward[n]) - mean) / 3;
    CHECK(bm.grad[n] == doctest::Approx(double(-c)).epsilon(1e-15));
    loss -= c * s.logp[n];
  }
  CHECK(bm.loss == doctest::Approx(double(loss)).epsilon(1e-15));
  const auto loo = rloo_loss(s.view());
  loss = 0;
  for (std::size_t n = 0; n < 3; ++n) {
    const L b = (3 * mean - s.reward[n]) / 2;
    const L c = (L(s.reward[n]) - b) / 3;
    CHECK(loo.grad[n] == doctest::Approx(double(-c)).epsilon(1e-15));
    loss -= c * s.logp[n];
  }
  CHECK(loo.loss == doctest::Approx(double(loss)).epsilon(1e-15));
  // r − b overflows (1.7e308 + 1.7e308) but (r − b)/N fits.
  Samples two = s;
  two.k = 2;
  two.reward = {1.7e308, 0.0};
  two.logp = {-0.5, 0.5};
  two.len = {1, 1};
  const auto cb = reinforce_loss(two.view(), ConstantBaseline{.value = -1.7e308});
  CHECK(cb.grad[0] == doctest::Approx(-1.7e308).epsilon(1e-15));
  CHECK(cb.grad[1] == doctest::Approx(-0.85e308).epsilon(1e-15));
  // Ordinary rewards: exactly the plain formula's bits (the fallback only runs on overflow).
  const Samples o;
  const auto plain = reinforce_loss(o.view());
  double sum = 0;
  for (double r : o.reward) sum += r;
  for (std::size_t n = 0; n < 6; ++n) CHECK(plain.grad[n] == -((o.reward[n] - sum / 6) * (1.0 / 6)));
}

TEST_CASE("RWR: a subnormal η or rewards of −1e308 give the softmax's limit, not NaN") {
  Samples s;
  s.k = 2;
  s.logp = {-1.0, -2.0, -3.0, -4.0};
  s.reward = {1.0, 2.0, 3.0, 4.0};
  // η = 5e-324: all the weight on the best reward (batch: sample 3; group: samples 1 and 3).
  const auto b = rwr_loss(s.view(), {.eta = 5e-324});
  CHECK(b.loss == 4.0);
  CHECK(b.grad == std::vector<double>{-0.0, -0.0, -0.0, -1.0});
  const auto g = rwr_loss(s.view(), {.eta = 5e-324, .normalization = RwrNormalization::group});
  CHECK(g.loss == 3.0);
  CHECK(g.grad == std::vector<double>{-0.0, -0.5, -0.0, -0.5});
  // Equal rewards of −1e308 at η = 1e-10: r/η is −inf for all, the weights are uniform.
  s.reward = {-1e308, -1e308, -1e308, -1e308};
  const auto u = rwr_loss(s.view(), {.eta = 1e-10});
  CHECK(u.loss == 2.5);
  for (double x : u.grad) CHECK(x == -0.25);
  // r − r_max overflows (−1e308 − 1e308) while (r − r_max)/η = −2 does not: weights e^−2 : 1.
  s.reward = {-1e308, 1e308, 1e308, 1e308};
  const auto w = rwr_loss(s.view(), {.eta = 1e308, .normalization = RwrNormalization::group});
  const L e2 = std::exp(L(-2));
  CHECK(w.grad[0] == doctest::Approx(double(-e2 / (1 + e2) / 2)).epsilon(1e-15));
  CHECK(w.grad[1] == doctest::Approx(double(-1 / (1 + e2) / 2)).epsilon(1e-15));
  CHECK(w.grad[2] == -0.25);
}

namespace {

// Every baseline objective on one batch; `check` gets each result (loss and gradients as doubles).
template <class T>
void every_baseline(const PreferenceScores<T>& p, const SampleScores<T>& s, double a, double b, std::size_t& results,
                    std::size_t& errors) {
  auto run = [&](auto&& f) {
    try {
      const auto r = f();
      bool finite = std::isfinite(static_cast<double>(r.loss));
      if constexpr (requires { r.grad; }) {
        for (T g : r.grad) finite = finite && std::isfinite(g);
      } else {
        for (T g : r.grad_pos) finite = finite && std::isfinite(g);
        for (T g : r.grad_neg) finite = finite && std::isfinite(g);
      }
      CHECK(finite);
      ++results;
    } catch (const dftune::error&) {
      ++errors;
    }
  };
  run([&] { return dpo_loss(p, {.beta = a}); });
  run([&] { return ipo_loss(p, {.beta = a}); });
  run([&] { return simpo_loss(p, {.beta = a, .gamma = b}); });
  run([&] { return orpo_loss(p, {.lambda = b}); });
  run([&] { return orpo_loss(p, {.lambda = b, .sft_reduction = NllReduction::sequence_mean}); });
  for (auto red : {NllReduction::sequence_mean, NllReduction::token_mean, NllReduction::length_normalized}) {
    run([&] { return sft_loss(s.logp, s.len, {.reduction = red}); });
    run([&] { return best_of_n_loss(s, {.reduction = red}); });
  }
  run([&] { return rwr_loss(s, {.eta = a}); });
  run([&] { return rwr_loss(s, {.eta = a, .normalization = RwrNormalization::group}); });
  run([&] { return reinforce_loss(s); });
  run([&] { return reinforce_loss(s, ConstantBaseline{.value = b}); });
  run([&] { return reinforce_loss(s, SampleBaseline<T>{.values = s.reward}); });
  run([&] { return rloo_loss(s); });
}

}  // namespace

TEST_CASE_TEMPLATE("every baseline: finite inputs give a finite result or a dftune::error (extreme-value sweep)", T, float, double) {
  // Scores, rewards and options drawn from the edges of T's range; each call must return finite
  // values or throw dftune::error (CHECK(finite) fails on any inf/NaN; another exception escapes).
  const T mx = std::numeric_limits<T>::max();
  const std::vector<double> values{0.0, -0.0, static_cast<double>(std::numeric_limits<T>::denorm_min()), -1.0, -0.5, 1.0,
                                   -1e10, 1e10, -1e30, -1e38, 3e38, -1e154, 1e154, -1e300, 1e300,
                                   -static_cast<double>(mx), static_cast<double>(mx), -1.7e308, 1.7e308};
  const std::vector<double> options{5e-324, 1e-300, 1e-10, 0.1, 1.0, 1e39, 1e154, 1e300, 1.7e308};
  std::mt19937_64 rng(12);
  auto pick = [&](const std::vector<double>& from) { return from[rng() % from.size()]; };
  auto value = [&] {
    T x = static_cast<T>(pick(values));
    while (!std::isfinite(x)) x = static_cast<T>(pick(values));
    return x;
  };
  std::size_t results = 0, errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<T> pos{value(), value()}, neg{value(), value(), value(), value()};
    std::vector<T> rpos{value(), value()}, rneg{value(), value(), value(), value()};
    const std::vector<std::int64_t> pl{1, 7}, nl{3, 1, 1, 100000};
    const PreferenceScores<T> p{.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = rpos,
                                .ref_neg_logp = rneg, .pos_len = pl, .neg_len = nl, .num_negatives = 2};
    std::vector<T> lp{value(), value(), value(), value()}, rw{value(), value(), value(), value()};
    const std::vector<std::int64_t> len{1, 2, 5, 1};
    const SampleScores<T> s{.logp = lp, .reward = rw, .len = len, .group_size = 2};
    every_baseline(p, s, pick(options), (trial % 3 == 0) ? -pick(values) : pick(options), results, errors);
  }
  MESSAGE(results << " finite results, " << errors << " named errors");
  CHECK(results > 1000);
}

TEST_CASE("preference objectives name what overflowed: a log-ratio, β·margin, a reward, γ, the odds") {
  Prefs p;
  p.m = 1;
  p.pos = {-1.0};
  p.ref_pos = {-1.0};
  p.neg = {-1.0};
  p.ref_neg = {-1.0};
  p.pos_len = {1};
  p.neg_len = {1};
  auto with = [&](auto edit) {
    Prefs q = p;
    edit(q);
    return q;
  };
  // s_w − r_w overflows: the positive's log-prob, not the negative (before: "neg_logp[0]: got -1").
  CHECK_THROWS_WITH_AS(dpo_loss(with([](Prefs& q) { q.pos = {-1e308}; q.ref_pos = {1e308}; }).view()),
                       "pos_logp[0]: got -1e+308, expected log-probs for which s_w − log π_ref(y_w) is finite (ref_pos_logp[0] = 1e+308)",
                       error);
  CHECK_THROWS_WITH_AS(ipo_loss(with([](Prefs& q) { q.neg = {1e308}; q.ref_neg = {-1e308}; }).view()),
                       "neg_logp[0]: got 1e+308, expected log-probs for which s_l − log π_ref(y_l) is finite (ref_neg_logp[0] = -1e+308)",
                       error);
  // β times a finite margin.
  CHECK_THROWS_WITH_AS(dpo_loss(with([](Prefs& q) { q.neg = {-1e10}; }).view(), {.beta = 1e300}),
                       "beta: got 1.0000000000000001e+300, expected a value for which beta·margin is finite (the pair of "
                       "neg_logp[0]: margin = 9999999999)",
                       error);
  // SimPO: a reward β·s/|y|, then γ.
  CHECK_THROWS_WITH_AS(simpo_loss(with([](Prefs& q) { q.neg = {-1e300}; }).view(), {.beta = 1e10}),
                       doctest::Contains("beta: got 10000000000, expected a value for which the rewards β·s/|y| are finite"), error);
  CHECK_THROWS_WITH_AS(simpo_loss(with([](Prefs& q) { q.pos = {-1e308}; }).view(), {.beta = 1.0, .gamma = 1e308}),
                       doctest::Contains("gamma: got 1e+308, expected a value for which the margin"), error);
  // ORPO: a log-prob so close to 0 that s/|y| rounds to −0 makes the positive's odds infinite.
  CHECK_THROWS_WITH_AS(orpo_loss(with([](Prefs& q) { q.pos = {-5e-324}; q.pos_len = {2}; }).view()),
                       doctest::Contains("pos_logp[0]: got -4.9406564584124654e-324, expected scores whose pair margin"), error);
}
