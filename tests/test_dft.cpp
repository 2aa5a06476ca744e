// The DFT / DFT2 objective and its estimator against docs/math.md, evaluated independently here
// in long double from the formulas, against finite differences where L's gradient is an exact
// gradient (γ = 1), and every error with the estimator left as it was.
#include <dftune/dftune.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

using dftune::DftOptions;
using dftune::Estimator;
using dftune::EstimatorInit;
using dftune::SequenceScores;
using dftune::Variant;

namespace {

struct Case {
  std::vector<std::int64_t> ids;
  std::size_t m = 1;
  std::vector<double> pos, neg, ref;
  std::vector<std::int64_t> pos_len, neg_len;

  template <class T>
  struct Typed {
    std::vector<T> pos, neg, ref;
  };
  SequenceScores<double> view() const {
    return {.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref,
            .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
  }
};

Case random_case(std::mt19937_64& rng, std::size_t B, std::size_t m, std::size_t num_examples, double lo) {
  std::uniform_real_distribution<double> lp(lo, 0.0);
  std::uniform_int_distribution<std::int64_t> len(1, 64);
  std::vector<std::int64_t> all(num_examples);
  for (std::size_t k = 0; k < num_examples; ++k) all[k] = static_cast<std::int64_t>(k);
  std::shuffle(all.begin(), all.end(), rng);
  Case c;
  c.ids.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(B));
  c.m = m;
  for (std::size_t i = 0; i < B; ++i) {
    c.pos.push_back(lp(rng));
    c.pos_len.push_back(len(rng));
  }
  // Negatives are sampled from π_ref, so log π_ref stays near log π_θ while both span [lo, 0].
  std::normal_distribution<double> drift(0.0, 3.0);
  for (std::size_t k = 0; k < B * m; ++k) {
    c.neg.push_back(lp(rng));
    c.ref.push_back(std::min(0.0, c.neg.back() + drift(rng)));
    c.neg_len.push_back(len(rng));
  }
  return c;
}

// docs/math.md written out once more, in long double, with its own u table.
struct Oracle {
  DftOptions opt;
  std::map<std::int64_t, long double> u;  // log u per seen id

  struct Out {
    long double loss = 0;
    std::vector<long double> gpos, gneg, log_u;
  };

  Out eval(const Case& c, bool store) {
    using L = long double;
    const std::size_t B = c.ids.size(), m = c.m;
    const bool two = opt.variant == Variant::dft2;
    auto score = [&](double lp, std::int64_t len) { return two ? L(lp) / (L(len) + L(opt.eps)) : L(lp); };
    Out o;
    for (std::size_t i = 0; i < B; ++i) {
      std::vector<L> d(m), s(m);
      L hi = -INFINITY;
      for (std::size_t j = 0; j < m; ++j) {
        const std::size_t ij = i * m + j;
        s[j] = score(c.neg[ij], c.neg_len[ij]);
        d[j] = s[j] / L(opt.tau) - (two ? L(0) : L(c.ref[ij]));
        hi = std::max(hi, d[j]);
      }
      L sum = 0;
      for (L dj : d) sum += std::exp(dj - hi);
      const L lme = hi + std::log(sum / L(m));
      L lu;
      const bool seen = u.count(c.ids[i]) != 0;
      if (opt.init == EstimatorInit::fixed) {
        lu = L(opt.log_u0);
      } else if (seen || opt.init == EstimatorInit::constant) {
        const L prev = seen ? u[c.ids[i]] : L(opt.log_u0);
        // log((1−γ) u + γ g) directly, guarded only against γ = 1.
        const L a = opt.gamma < 1 ? std::log(1 - L(opt.gamma)) + prev : -INFINITY;
        const L b = std::log(L(opt.gamma)) + lme;
        const L top = std::max(a, b);
        lu = top + std::log(std::exp(a - top) + std::exp(b - top));
      } else {
        lu = lme;
      }
      const L sp = score(c.pos[i], c.pos_len[i]);
      o.loss += -sp / L(B);
      o.gpos.push_back(-1 / L(B) * (two ? 1 / (L(c.pos_len[i]) + L(opt.eps)) : L(1)));
      for (std::size_t j = 0; j < m; ++j) {
        const L w = std::exp(d[j] - lu);
        o.loss += w * s[j] / L(B * m);
        o.gneg.push_back(w / L(B * m) * (two ? 1 / (L(c.neg_len[i * m + j]) + L(opt.eps)) : L(1)));
      }
      o.log_u.push_back(lu);
      if (store && opt.init != EstimatorInit::fixed) u[c.ids[i]] = lu;
    }
    return o;
  }
};

template <class T>
void check_close(T got, long double want, double rel, const char* what) {
  INFO(std::string(what) << ": got " << got << ", want " << double(want));
  CHECK(std::abs(static_cast<long double>(got) - want) <= rel * std::max<long double>(1, std::abs(want)));
}

// Snapshot of every log u, to assert that a failed call changed nothing.
template <class T>
std::vector<std::optional<T>> snapshot(const Estimator<T>& est) {
  std::vector<std::optional<T>> s;
  for (std::size_t i = 0; i < est.size(); ++i) s.push_back(est.log_u(static_cast<std::int64_t>(i)));
  return s;
}

}  // namespace

TEST_CASE("dft_step matches docs/math.md over many steps, both variants, every init") {
  std::mt19937_64 rng(20250225);
  for (Variant v : {Variant::dft, Variant::dft2})
    for (EstimatorInit init : {EstimatorInit::first_visit, EstimatorInit::constant, EstimatorInit::fixed})
      for (double gamma : {1.0, 0.85, 0.3})
        for (std::size_t m : {1, 2, 5, 16}) {
          const double lo = (m % 2 == 0) ? -1e4 : -50.0;  // log-probs down to -1e4
          DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = gamma, .init = init,
                         .log_u0 = init == EstimatorInit::first_visit ? 0.0 : -0.7};
          Estimator<double> est(12, opt);
          Oracle oracle{opt, {}};
          for (int step = 0; step < 6; ++step) {  // 6 batches of 4 of 12 ids: revisits happen
            const Case c = random_case(rng, 4, m, 12, lo);
            const auto r = dftune::dft_step(c.view(), est, opt);
            const auto o = oracle.eval(c, true);
            CAPTURE(v);
            CAPTURE(init);
            CAPTURE(gamma);
            CAPTURE(m);
            // L sums terms of size up to 1e4 that cancel; compare at the scale of the terms.
            long double scale = 0;
            for (double p : c.pos) scale += std::abs(p);
            check_close(r.loss, o.loss, 1e-12 * std::max<double>(1, double(scale)), "loss");
            for (std::size_t i = 0; i < c.ids.size(); ++i) {
              check_close(r.grad_pos[i], o.gpos[i], 1e-12, "grad_pos");
              check_close(r.log_u[i], o.log_u[i], 1e-12, "log_u");
              const auto stored = est.log_u(c.ids[i]);
              if (init == EstimatorInit::fixed) {
                CHECK_FALSE(stored.has_value());
              } else {
                REQUIRE(stored.has_value());
                CHECK(*stored == r.log_u[i]);
              }
            }
            for (std::size_t k = 0; k < r.grad_neg.size(); ++k) check_close(r.grad_neg[k], o.gneg[k], 1e-12, "grad_neg");
          }
        }
}

TEST_CASE("closed form: B = 1, m = 1, first visit gives weight 1") {
  const std::vector<std::int64_t> ids{3};
  const std::vector<double> pos{-2.0}, neg{-5.0}, ref{-4.0};
  DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<double> est(5, opt);
  const auto r = dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                           .ref_neg_logp = ref, .num_negatives = 1},
                                          est, opt);
  CHECK(r.loss == doctest::Approx(2.0 - 5.0).epsilon(1e-15));
  CHECK(r.grad_pos[0] == -1.0);
  CHECK(r.grad_neg[0] == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(*est.log_u(3) == doctest::Approx(-5.0 + 4.0).epsilon(1e-15));  // d = s'/τ − log π_ref
  // Second visit with the same negative: log u = logaddexp(log .15 + (−1), log .85 + (−1)) = −1.
  const auto r2 = dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                            .ref_neg_logp = ref, .num_negatives = 1},
                                           est, opt);
  CHECK(*est.log_u(3) == doctest::Approx(-1.0).epsilon(1e-15));
  CHECK(r2.grad_neg[0] == doctest::Approx(1.0).epsilon(1e-15));
}

TEST_CASE("with γ = 1 the DFT step is −τ/B × the gradient of Σ_i [s_i/τ − logmeanexp_j d_ij] (finite differences)") {
  std::mt19937_64 rng(7);
  for (Variant v : {Variant::dft, Variant::dft2}) {
    const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = 1.0};
    Case c = random_case(rng, 3, 4, 3, -20.0);
    auto objective = [&](const Case& cc) {
      Estimator<double> fresh(3, opt);  // γ = 1: log u is this batch's logmeanexp, whatever came before
      const auto r = dftune::dft_loss(cc.view(), fresh, opt);
      double j = 0;
      for (std::size_t i = 0; i < cc.ids.size(); ++i) {
        const double s = v == Variant::dft ? cc.pos[i] : cc.pos[i] / (double(cc.pos_len[i]) + opt.eps);
        j += s / opt.tau - r.log_u[i];
      }
      return -opt.tau / double(cc.ids.size()) * j;
    };
    Estimator<double> est(3, opt);
    const auto r = dftune::dft_loss(c.view(), est, opt);
    const double h = 1e-5;
    for (std::size_t i = 0; i < c.pos.size(); ++i) {
      Case p = c, q = c;
      p.pos[i] += h;
      q.pos[i] -= h;
      CHECK(r.grad_pos[i] == doctest::Approx((objective(p) - objective(q)) / (2 * h)).epsilon(1e-7));
    }
    for (std::size_t k = 0; k < c.neg.size(); ++k) {
      Case p = c, q = c;
      p.neg[k] += h;
      q.neg[k] -= h;
      CHECK(r.grad_neg[k] == doctest::Approx((objective(p) - objective(q)) / (2 * h)).epsilon(1e-7));
    }
  }
}

TEST_CASE("dft_loss never mutates the estimator; dft_step stores only the batch's ids") {
  const DftOptions opt{.variant = Variant::dft2, .tau = 0.3, .gamma = 0.9};
  std::mt19937_64 rng(1);
  Estimator<double> est(1000, opt);
  CHECK_FALSE(est.log_u(17).has_value());
  Case c = random_case(rng, 8, 3, 1000, -30.0);
  c.ids = {17, 4, 999, 0, 5, 6, 7, 8};
  const auto before = snapshot(est);
  const auto e = dftune::dft_loss(c.view(), est, opt);
  CHECK(snapshot(est) == before);
  const auto r = dftune::dft_step(c.view(), est, opt);
  CHECK(r.loss == e.loss);
  CHECK(r.grad_neg == e.grad_neg);
  REQUIRE(est.log_u(17).has_value());
  CHECK(*est.log_u(17) == r.log_u[0]);
  CHECK_FALSE(est.log_u(1).has_value());
  // A second evaluation sees the stored state, so it now differs from the first-visit one.
  const auto e2 = dftune::dft_loss(c.view(), est, opt);
  CHECK(e2.log_u[0] != doctest::Approx(e.log_u[0]).epsilon(0));
}

TEST_CASE("float agrees with double") {
  std::mt19937_64 rng(3);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  const Case c = random_case(rng, 16, 4, 16, -60.0);
  std::vector<float> pos(c.pos.begin(), c.pos.end()), neg(c.neg.begin(), c.neg.end()), ref(c.ref.begin(), c.ref.end());
  Estimator<float> ef(16, opt);
  Estimator<double> ed(16, opt);
  const auto rf = dftune::dft_step<float>({.ids = c.ids, .pos_logp = pos, .neg_logp = neg,
                                           .ref_neg_logp = ref, .num_negatives = 4},
                                          ef, opt);
  // The double run sees the float-rounded inputs, so only the output rounding differs.
  std::vector<double> posd(pos.begin(), pos.end()), negd(neg.begin(), neg.end()), refd(ref.begin(), ref.end());
  const auto rd = dftune::dft_step<double>({.ids = c.ids, .pos_logp = posd,
                                            .neg_logp = negd, .ref_neg_logp = refd, .num_negatives = 4},
                                           ed, opt);
  CHECK(rf.loss == doctest::Approx(rd.loss).epsilon(1e-6));
  for (std::size_t k = 0; k < rf.grad_neg.size(); ++k) CHECK(rf.grad_neg[k] == doctest::Approx(rd.grad_neg[k]).epsilon(1e-6));
}

TEST_CASE("every bad input throws dftune::error naming the argument, and the estimator is unchanged") {
  std::mt19937_64 rng(11);
  const DftOptions good{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  const DftOptions good2{.variant = Variant::dft2, .tau = 0.3, .gamma = 0.9};
  Estimator<double> est(10, good);
  // Some state to protect.
  const Case warm = random_case(rng, 4, 2, 10, -10.0);
  dftune::dft_step(warm.view(), est, good);
  const auto before = snapshot(est);

  auto expect_error = [&](Case c, DftOptions opt, const std::string& argument) {
    CAPTURE(argument);
    try {
      dftune::dft_step(c.view(), est, opt);
      FAIL("no exception");
    } catch (const dftune::error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.rfind(argument, 0) == 0);
      CHECK(msg.find("expected") != std::string::npos);
    }
    CHECK(snapshot(est) == before);
  };
  const Case c = random_case(rng, 4, 2, 10, -10.0);
  const double nan = std::nan(""), inf = INFINITY;
  { Case b = c; b.pos.pop_back(); expect_error(b, good, "pos_logp"); }
  { Case b = c; b.neg.push_back(-1); expect_error(b, good, "neg_logp"); }
  { Case b = c; b.ref.clear(); expect_error(b, good, "ref_neg_logp"); }
  { Case b = c; b.ref.pop_back(); expect_error(b, good, "ref_neg_logp"); }
  { Case b = c; b.ids[1] = 10; expect_error(b, good, "ids[1]"); }
  { Case b = c; b.ids[2] = -1; expect_error(b, good, "ids[2]"); }
  { Case b = c; b.ids[3] = b.ids[0]; expect_error(b, good, "ids"); }
  { Case b = c; b.ids.clear(); b.pos.clear(); b.neg.clear(); b.ref.clear(); expect_error(b, good, "ids"); }
  { Case b = c; b.m = 0; expect_error(b, good, "num_negatives"); }
  // B = 4, m = 2^62 + 1: B·m wraps to 4 (before the fix: std::length_error, not a named error).
  { Case b = c; b.m = (std::size_t{1} << 62) + 1; b.neg.resize(4); b.ref.resize(4); expect_error(b, good, "num_negatives (B·m)"); }
  { Case b = c; b.pos[0] = nan; expect_error(b, good, "pos_logp[0]"); }
  { Case b = c; b.neg[5] = -inf; expect_error(b, good, "neg_logp[5]"); }
  { Case b = c; b.ref[2] = inf; expect_error(b, good, "ref_neg_logp[2]"); }
  { Case b = c; b.pos_len.clear(); expect_error(b, good2, "pos_len"); }
  { Case b = c; b.neg_len.pop_back(); expect_error(b, good2, "neg_len"); }
  { Case b = c; b.pos_len[1] = 0; expect_error(b, good2, "pos_len[1]"); }
  { Case b = c; b.neg_len[3] = -2; expect_error(b, good2, "neg_len[3]"); }
  for (double tau : {0.0, -1.0, nan, inf}) expect_error(c, {.tau = tau}, "tau");
  for (double gamma : {0.0, -0.1, 1.0000001, nan}) expect_error(c, {.gamma = gamma}, "gamma");
  expect_error(c, {.tau = 1e-320}, "tau");  // s/τ overflows to -inf
  {  // a fixed normaliser far below the negatives' exponents: exp(d − log u) overflows
    Estimator<double> fixed(10, {.init = EstimatorInit::fixed, .log_u0 = -1e4});
    Case b = c;
    CHECK_THROWS_WITH_AS(dftune::dft_step(b.view(), fixed, {.init = EstimatorInit::fixed, .log_u0 = -1e4}),
                         doctest::Contains("log_u0"), dftune::error);
  }
  CHECK_THROWS_AS(Estimator<double>(0), dftune::error);
  CHECK_THROWS_AS(Estimator<double>(3, {.gamma = 2}), dftune::error);
  CHECK_THROWS_AS((void)est.log_u(10), dftune::error);
}

TEST_CASE("error messages name the argument, the value and what was expected") {
  Estimator<double> est(4);
  const std::vector<std::int64_t> ids{0, 9};
  const std::vector<double> pos{-1, -1}, neg{-1, -1}, ref{-1, -1};
  try {
    dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 1},
                             est, {});
    FAIL("no exception");
  } catch (const dftune::error& e) {
    CHECK(std::string(e.what()) == "ids[1]: got 9, expected an example id in [0, num_examples = 4)");
  }
  try {
    dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 1},
                             est, {.gamma = 1.5});
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {  // a bad argument is a dftune::argument_error, a std::invalid_argument
    CHECK(std::string(e.what()) == "gamma: got 1.5, expected a number in (0, 1]");
  }
}

TEST_CASE("float results that float cannot hold are errors, not inf (fuzz finding)") {
  // Fixed normaliser log u = 0 and d = 99: the weight exp(99) ≈ 1e43 overflows float.
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85, .init = EstimatorInit::fixed};
  Estimator<float> est(2, opt);
  const std::vector<std::int64_t> ids{1};
  const std::vector<float> pos{-1.f}, neg{-1.f}, ref{-100.f};
  CHECK_THROWS_WITH_AS(dftune::dft_step<float>({.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                                .ref_neg_logp = ref, .num_negatives = 1},
                                               est, opt),
                       doctest::Contains("grad_neg"), dftune::error);
  CHECK_FALSE(est.log_u(1).has_value());
}

TEST_CASE("an overflow names what overflowed: the log-probs, or τ (issue #12, item 11)") {
  Estimator<double> est(2);
  const std::vector<std::int64_t> ids{0};
  const std::vector<double> pos{-1.0}, neg{1e308}, ref{-1e308};
  // d = 1e308/1 − (−1e308) overflows: a positive "log-prob" beside a very negative reference, not τ
  // (before the fix: "tau: got 1, ...").
  try {
    dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg, .ref_neg_logp = ref, .num_negatives = 1}, est, {});
    FAIL("no exception");
  } catch (const dftune::error& e) {
    CHECK(std::string(e.what()) ==
          "neg_logp[0]: got 1e+308, expected log-probs for which d = s/τ − log π_ref is finite "
          "(ref_neg_logp[0] = -1e+308: d[0] overflowed)");
  }
  // s/τ itself overflows, for a negative or for the positive: τ is named.
  const std::vector<double> small{-1.0}, huge{-1e308};
  CHECK_THROWS_WITH_AS(dftune::dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = huge,
                                                 .ref_neg_logp = small, .num_negatives = 1},
                                                est, {.tau = 0.1}),
                       "tau: got 0.10000000000000001, expected a temperature for which s/τ is finite (d[0] overflowed)",
                       dftune::error);
  CHECK_THROWS_WITH_AS(dftune::dft_step<double>({.ids = ids, .pos_logp = huge, .neg_logp = small,
                                                 .ref_neg_logp = small, .num_negatives = 1},
                                                est, {.tau = 0.1}),
                       "tau: got 0.10000000000000001, expected a temperature for which s/τ is finite (pos_logp[0]/τ overflowed)",
                       dftune::error);
  CHECK_FALSE(est.log_u(0).has_value());
}

TEST_CASE("the finite-result guard accepts exactly the doubles that round to a finite T") {
  using dftune::detail::narrow_checked;
  const double fmax = std::numeric_limits<float>::max();
  // FLT_MAX + 2^103 is the midpoint to 2^128 and rounds (to even) to inf; anything below rounds to FLT_MAX.
  CHECK(narrow_checked<float>(fmax + std::ldexp(1.0, 102), "x") == std::numeric_limits<float>::max());
  CHECK(narrow_checked<float>(std::nextafter(fmax + std::ldexp(1.0, 103), 0.0), "x") == std::numeric_limits<float>::max());
  CHECK(narrow_checked<float>(-std::nextafter(fmax + std::ldexp(1.0, 103), 0.0), "x") == -std::numeric_limits<float>::max());
  CHECK_THROWS_WITH_AS(narrow_checked<float>(fmax + std::ldexp(1.0, 103), "loss"),
                       doctest::Contains("loss: got 3.4028235677973366e+38, expected a value the scalar type can hold"),
                       dftune::error);
  CHECK_THROWS_AS(narrow_checked<float>(-(fmax + std::ldexp(1.0, 103)), "x"), dftune::error);
  CHECK(narrow_checked<float>(std::numeric_limits<double>::denorm_min(), "x") == 0.0f);  // underflow is fine
  CHECK(narrow_checked<double>(std::numeric_limits<double>::max(), "x") == std::numeric_limits<double>::max());
  for (double bad : {INFINITY, -INFINITY, NAN}) {
    CHECK_THROWS_AS(narrow_checked<double>(bad, "x"), dftune::error);
    CHECK_THROWS_AS(narrow_checked<float>(bad, "x"), dftune::error);
  }
  CHECK_THROWS_WITH_AS(dftune::detail::narrow_checked_at<float>(1e39, "grad", 7), doctest::Contains("grad[7]: got 9.9999999999999994e+38"),
                       dftune::error);
}
