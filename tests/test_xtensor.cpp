// The xtensor backend (include/dftune/backend/xtensor/): the reductions on xt::xtensor, xt::xarray
// and views against the span API bit for bit and a long-double evaluation of the definition,
// views read in place or evaluated once, every error named as on the Eigen path; and the
// xtensor CategoricalPolicy against closed forms, finite differences and, bit for bit, the
// Eigen-path dftune::CategoricalPolicy through a whole DFT training run.
#include <doctest/doctest.h>

#if !__has_include(<xtensor/xtensor.hpp>)
TEST_CASE("xtensor backend (skipped: xtensor headers not found; Debian: libxtensor-dev)" * doctest::skip()) {}
#else
#include <dftune/backend/xtensor/categorical_policy.hpp>
#include <dftune/backend/xtensor/logprob.hpp>
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include <doctest/doctest.h>

#include <xtensor/xadapt.hpp>
#include <xtensor/xbroadcast.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace dftune;
namespace xb = dftune::backend::xtensor;

namespace {

template <class T>
bool bit_equal(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}
template <class X>
auto span_of(const X& x) {
  return std::span<const typename X::value_type>(x.data(), x.size());
}

// N rows of vocab V in S sequences (one empty), every fourth row masked with a garbage target.
template <class T>
struct Problem {
  std::size_t V = 0, N = 0;
  xt::xtensor<T, 2> logits;
  xt::xtensor<token_t, 1> targets;
  xt::xtensor<logprob::compute_t<T>, 1> weights;
  xt::xtensor<std::int64_t, 1> offsets;
  std::vector<std::int64_t> off_vec;

  logprob::TokenLogits<T> view() const {
    return {.logits = span_of(logits), .vocab = V, .targets = span_of(targets), .weights = span_of(weights),
            .offsets = span_of(offsets)};
  }
};

template <class T>
Problem<T> random_problem(std::mt19937_64& rng, std::size_t V, std::size_t S, double scale) {
  Problem<T> p;
  p.V = V;
  p.off_vec = {0};
  std::uniform_int_distribution<int> len(0, 5);
  for (std::size_t s = 0; s < S; ++s) p.off_vec.push_back(p.off_vec.back() + (s == 1 ? 0 : len(rng)));
  p.N = static_cast<std::size_t>(p.off_vec.back());
  p.logits = xt::xtensor<T, 2>::from_shape({p.N, V});
  p.targets = xt::xtensor<token_t, 1>::from_shape({p.N});
  p.weights = xt::xtensor<logprob::compute_t<T>, 1>::from_shape({p.N});
  std::normal_distribution<double> z(0.0, scale);
  std::uniform_int_distribution<token_t> y(0, static_cast<token_t>(V - 1));
  std::uniform_real_distribution<double> w(0.25, 2.0);
  for (auto& x : p.logits) x = static_cast<T>(z(rng));
  for (std::size_t n = 0; n < p.N; ++n) {
    const bool masked = n % 4 == 1;
    p.targets(n) = masked ? static_cast<token_t>(V + 7) : y(rng);
    p.weights(n) = static_cast<logprob::compute_t<T>>(masked ? 0.0 : w(rng));
  }
  p.offsets = xt::xtensor<std::int64_t, 1>::from_shape({p.off_vec.size()});
  std::copy(p.off_vec.begin(), p.off_vec.end(), p.offsets.begin());
  return p;
}

// The definition in long double.
template <class T>
std::vector<long double> reference_seq(const Problem<T>& p) {
  std::vector<long double> seq(p.off_vec.size() - 1, 0.0L);
  for (std::size_t s = 0; s + 1 < p.off_vec.size(); ++s)
    for (auto n = static_cast<std::size_t>(p.off_vec[s]); n < static_cast<std::size_t>(p.off_vec[s + 1]); ++n) {
      if (p.weights(n) == 0) continue;
      long double sum = 0;
      for (std::size_t v = 0; v < p.V; ++v) sum += std::exp(static_cast<long double>(p.logits(n, v)));
      seq[s] += static_cast<long double>(p.weights(n)) *
                (static_cast<long double>(p.logits(n, static_cast<std::size_t>(p.targets(n)))) - std::log(sum));
    }
  return seq;
}

void expect_error(const std::function<void()>& f, const std::string& argument) {
  bool thrown = false;
  try {
    f();
  } catch (const dftune::error& e) {
    thrown = true;
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(argument) != std::string::npos);
  }
  CHECK_MESSAGE(thrown, "expected a dftune::error naming " << argument);
}

}  // namespace

TEST_CASE_TEMPLATE("xtensor reductions equal the span API bit for bit and the long-double definition", T, float, double) {
  using C = logprob::compute_t<T>;
  std::mt19937_64 rng(3);
  for (std::size_t V : {1u, 2u, 7u, 300u, 5000u}) {
    CAPTURE(V);
    const Problem<T> p = random_problem<T>(rng, V, 6, 3.0);
    const auto seq = xb::forward(p.logits, p.targets, p.offsets, p.weights);
    std::vector<C> want(p.off_vec.size() - 1);
    logprob::forward(p.view(), std::span<C>(want));
    CHECK(bit_equal<C>(span_of(seq), want));
    const auto ref = reference_seq(p);
    const long double tol = std::is_same_v<T, float> ? 2e-5L : 1e-12L;
    for (std::size_t s = 0; s < ref.size(); ++s) CHECK(std::fabs(seq(s) - ref[s]) <= tol * (1 + std::fabs(ref[s])) * 4);

    std::normal_distribution<double> dn(0, 1);
    xt::xtensor<C, 1> d = xt::xtensor<C, 1>::from_shape({ref.size()});
    for (auto& x : d) x = static_cast<C>(dn(rng));
    const auto g = xb::backward(p.logits, p.targets, p.offsets, d, p.weights);
    std::vector<T> gw(p.N * V);
    logprob::backward(p.view(), std::span<const C>(d.data(), d.size()), std::span<T>(gw));
    CHECK(g.shape()[0] == p.N);
    CHECK(g.shape()[1] == V);
    CHECK(bit_equal<T>(span_of(g), gw));

    // Without weights: every token counts once.
    xt::xtensor<token_t, 1> valid = p.targets;
    for (auto& t : valid) t = t % static_cast<token_t>(V);
    auto unweighted = p.view();
    unweighted.weights = {};
    unweighted.targets = span_of(valid);
    {
      const auto seq1 = xb::forward(p.logits, valid, p.offsets);
      logprob::forward(unweighted, std::span<C>(want));
      CHECK(bit_equal<C>(span_of(seq1), want));
    }
  }
}

TEST_CASE("xarray and contiguous views are read in place; other views and expressions are evaluated once") {
  std::mt19937_64 rng(5);
  const Problem<double> p = random_problem<double>(rng, 9, 5, 2.0);
  const auto want = xb::forward(p.logits, p.targets, p.offsets, p.weights);
  // Keep the garbage targets of masked rows out of the unweighted calls below.
  {
    const xt::xarray<double> a = p.logits;
    CHECK(xb::Contiguous<double, 2>("logits", a).in_place());
    CHECK(xb::forward(a, p.targets, p.offsets, p.weights) == want);
  }
  {  // a block of rows of a bigger tensor: contiguous, read in place
    xt::xtensor<double, 2> big = xt::zeros<double>({p.N + 3, p.V});
    xt::view(big, xt::range(2, 2 + p.N), xt::all()) = p.logits;
    const auto rows = xt::view(big, xt::range(2, 2 + p.N), xt::all());
    CHECK(xb::Contiguous<double, 2>("logits", rows).in_place());
    CHECK(xb::forward(rows, p.targets, p.offsets, p.weights) == want);
  }
  {  // columns of a wider tensor: strided, evaluated once
    xt::xtensor<double, 2> wide = xt::zeros<double>({p.N, p.V + 4});
    xt::view(wide, xt::all(), xt::range(1, 1 + p.V)) = p.logits;
    const auto cols = xt::view(wide, xt::all(), xt::range(1, 1 + p.V));
    CHECK_FALSE(xb::Contiguous<double, 2>("logits", cols).in_place());
    CHECK(xb::forward(cols, p.targets, p.offsets, p.weights) == want);
  }
  {  // a transposed (column-major) tensor and a lazy expression
    const xt::xtensor<double, 2> t = xt::transpose(p.logits);
    const auto tt = xt::transpose(t);
    CHECK(xb::forward(tt, p.targets, p.offsets, p.weights) == want);
    CHECK(xb::forward(p.logits + 0.0, p.targets, p.offsets, p.weights) == want);
  }
  {  // targets and offsets of other integer types, weights of another float type
    const xt::xtensor<std::int64_t, 1> t64 = xt::cast<std::int64_t>(p.targets);
    const xt::xtensor<int, 1> o32 = xt::cast<int>(p.offsets);
    const xt::xtensor<float, 1> wf = xt::cast<float>(p.weights);
    const auto got = xb::forward(p.logits, t64, o32, wf);
    CHECK(got.shape()[0] == want.shape()[0]);
  }
  {  // backward through a view equals backward on the container
    xt::xtensor<double, 1> d = xt::ones<double>({want.size()});
    xt::xtensor<double, 2> wide = xt::zeros<double>({p.N, p.V + 4});
    xt::view(wide, xt::all(), xt::range(1, 1 + p.V)) = p.logits;
    CHECK(xb::backward(xt::view(wide, xt::all(), xt::range(1, 1 + p.V)), p.targets, p.offsets, d, p.weights) ==
          xb::backward(p.logits, p.targets, p.offsets, d, p.weights));
  }
}

TEST_CASE("xtensor reductions throw dftune::error naming the argument, as the span API does") {
  std::mt19937_64 rng(7);
  const Problem<double> p = random_problem<double>(rng, 5, 4, 1.0);
  xt::xtensor<double, 1> d = xt::ones<double>({p.off_vec.size() - 1});
  const xt::xtensor<double, 3> cube = xt::zeros<double>({2, 2, 2});
  const xt::xarray<double> flat = xt::zeros<double>({6});
  expect_error([&] { xb::forward(cube, p.targets, p.offsets); }, "logits");
  expect_error([&] { xb::forward(flat, p.targets, p.offsets); }, "logits: got 1 dimensions");
  expect_error([&] { xb::forward(p.logits, p.logits, p.offsets); }, "targets");
  xt::xtensor<token_t, 1> bad_t = p.targets;
  bad_t(0) = 99;
  expect_error([&] { xb::forward(p.logits, bad_t, p.offsets, p.weights); }, "targets[0]");
  xt::xtensor<std::int64_t, 1> bad_o = p.offsets;
  bad_o(bad_o.size() - 1) += 1;
  expect_error([&] { xb::forward(p.logits, p.targets, bad_o, p.weights); }, "offsets");
  const xt::xtensor<double, 1> short_w = xt::ones<double>({p.N + 1});
  expect_error([&] { xb::forward(p.logits, p.targets, p.offsets, short_w); }, "weights");
  const xt::xtensor<double, 1> short_d = xt::ones<double>({d.size() + 1});
  expect_error([&] { xb::backward(p.logits, p.targets, p.offsets, short_d, p.weights); }, "d_seq");
  xt::xtensor<double, 1> nan_d = d;
  nan_d(0) = std::nan("");
  expect_error([&] { xb::backward(p.logits, p.targets, p.offsets, nan_d, p.weights); }, "d_seq[0]");
}

TEST_CASE("xtensor: a shape whose element count wraps size_t is a named error before anything is evaluated") {
  // [2^33, 2^31] logits of a broadcast scalar: 2^64 elements wrap to 0 (before the fix: an empty
  // span of logits was passed on, and the call failed later with a wrong "targets" size error).
  const auto huge = xt::broadcast(xt::xscalar<double>(0.0), std::array<std::size_t, 2>{std::size_t{1} << 33, std::size_t{1} << 31});
  const xt::xtensor<token_t, 1> targets = xt::zeros<token_t>({1});
  const xt::xtensor<std::int64_t, 1> offsets{0, 1};
  CHECK_THROWS_WITH_AS(xb::forward(huge, targets, offsets), doctest::Contains("logits: got 8589934592·2147483648, expected a product of sizes that fits in size_t"),
                       dftune::error);
}

TEST_CASE("xtensor reductions refuse non-finite logits as the span API does (one semantics for every backend)") {
  xt::xtensor<float, 2> z{{0.0f, 1.0f, 2.0f}, {0.5f, -1.0f, 3.0f}};
  const xt::xtensor<token_t, 1> y{2, 0};
  const xt::xtensor<std::int64_t, 1> o{0, 2};
  const xt::xtensor<float, 1> d{1.0f};
  CHECK(std::isfinite(xb::forward(z, y, o)(0)));
  z(1, 1) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(xb::forward(z, y, o), "logits[4]: got inf, expected a finite number or −inf on a weighted row (row 1)", dftune::error);
  CHECK_THROWS_WITH_AS(xb::backward(z, y, o, d), "logits[4]: got inf, expected a finite number or −inf on a weighted row (row 1)", dftune::error);
  z(1, 1) = -std::numeric_limits<float>::infinity();  // log 0: fine
  CHECK(std::isfinite(xb::forward(z, y, o)(0)));
}

// ---- the Model adapter ------------------------------------------------------------------------

TEST_CASE("xtensor CategoricalPolicy satisfies the Model concept; its spans alias the tensors") {
  static_assert(Model<xb::CategoricalPolicy<double>>);
  static_assert(Model<xb::CategoricalPolicy<float>>);
  xb::CategoricalPolicy<double> m(3, 4);
  m.parameters()[5] = 2.5;
  CHECK(m.theta()(1, 1) == 2.5);
  CHECK(m.num_contexts() == 3);
  CHECK(m.vocab_size() == 4);
  expect_error([] { xb::CategoricalPolicy<double>(0, 4); }, "num_contexts");
  expect_error([] { xb::CategoricalPolicy<double>(2, 0); }, "vocab");
}

TEST_CASE("xtensor CategoricalPolicy: log-probs in closed form and gradients against finite differences") {
  std::mt19937_64 rng(5);
  xb::CategoricalPolicy<double> p(3, 7);
  std::normal_distribution<double> n(0, 1);
  for (double& x : p.parameters()) x = n(rng);
  Sequences s;
  s.push(std::vector<token_t>{4, 2}, std::vector<token_t>{1, 6, 1});  // context = last prompt token = 2
  s.push(std::vector<token_t>{0}, std::vector<token_t>{3});
  std::vector<double> lp(2);
  p.sequence_logp(s.view(), lp);
  auto log_softmax = [&](std::size_t c, token_t y) {
    double z = 0;
    for (std::size_t v = 0; v < 7; ++v) z += std::exp(p.theta()(c, v));
    return p.theta()(c, static_cast<std::size_t>(y)) - std::log(z);
  };
  CHECK(lp[0] == doctest::Approx(2 * log_softmax(2, 1) + log_softmax(2, 6)).epsilon(1e-13));
  CHECK(lp[1] == doctest::Approx(log_softmax(0, 3)).epsilon(1e-13));

  const std::vector<double> d{0.7, -1.3};
  p.zero_gradients();
  p.accumulate_gradients(s.view(), d);
  const std::vector<double> g(p.gradients().begin(), p.gradients().end());
  auto f = [&] {
    std::vector<double> out(2);
    p.sequence_logp(s.view(), out);
    return d[0] * out[0] + d[1] * out[1];
  };
  const double h = 1e-6;
  for (std::size_t k = 0; k < g.size(); ++k) {
    const double x = p.parameters()[k];
    p.parameters()[k] = x + h;
    const double up = f();
    p.parameters()[k] = x - h;
    const double down = f();
    p.parameters()[k] = x;
    CHECK(g[k] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-7));
  }
  // The checks of the Eigen-path model, with the same messages.
  Sequences bad;
  bad.push(std::vector<token_t>{5}, std::vector<token_t>{1});
  expect_error([&] { p.sequence_logp(bad.view(), lp); }, "a context id");
  expect_error([&] { p.sequence_logp(s.view(), std::span<double>(lp).first(1)); }, "scores");
}

TEST_CASE_TEMPLATE("a DFT training run on the xtensor model equals the Eigen-path model bit for bit", T, float, double) {
  std::mt19937_64 rng(21);
  constexpr std::size_t C = 4, V = 10, B = 8, m = 4;
  dftune::CategoricalPolicy<T> ref(C, V), eigen_model(C, V);
  xb::CategoricalPolicy<T> xt_model(C, V);
  std::normal_distribution<double> n(0, 1);
  for (T& x : ref.parameters()) x = static_cast<T>(n(rng));
  std::copy(ref.parameters().begin(), ref.parameters().end(), eigen_model.parameters().begin());
  std::copy(ref.parameters().begin(), ref.parameters().end(), xt_model.parameters().begin());
  std::vector<std::int64_t> ids;
  Sequences pos, neg;
  std::uniform_int_distribution<std::size_t> len(1, 4);
  for (std::size_t i = 0; i < B; ++i) {
    const auto c = static_cast<token_t>(i % C);
    ids.push_back(static_cast<std::int64_t>(i));
    const std::vector<token_t> prompt{c};
    pos.push(prompt, std::vector<token_t>(len(rng), static_cast<token_t>((c + 1) % 5)));
    for (std::size_t j = 0; j < m; ++j) {
      std::mt19937_64 r2(rng());
      neg.push(prompt, ref.sample(static_cast<std::size_t>(c), len(rng), r2, {.temperature = 0.7}));
    }
  }
  std::vector<T> ref_logp(neg.size());
  ref.sequence_logp(neg.view(), ref_logp);
  for (Variant v : {Variant::dft, Variant::dft2}) {
    CAPTURE(v);
    const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = 0.9};
    std::copy(ref.parameters().begin(), ref.parameters().end(), eigen_model.parameters().begin());
    std::copy(ref.parameters().begin(), ref.parameters().end(), xt_model.parameters().begin());
    Estimator<T> e1(B, opt), e2(B, opt);
    const CosineSchedule sched{.base_lr = 0.05, .warmup_steps = 3, .total_steps = 30};
    DftOptimizer o1(eigen_model, e1, opt, AdamW<T>{}, sched);
    DftOptimizer o2(xt_model, e2, opt, AdamW<T>{}, sched);
    const DftBatch<T> batch{.ids = ids, .positives = pos.view(), .negatives = neg.view(),
                            .ref_neg_logp = ref_logp, .num_negatives = m};
    const auto first = o2.evaluate(batch);
    for (int t = 0; t < 30; ++t) {
      const auto a = o1.step(batch);
      const auto b = o2.step(batch);
      REQUIRE(std::memcmp(&a.result.loss, &b.result.loss, sizeof(T)) == 0);
    }
    CHECK(bit_equal<T>(eigen_model.parameters(), xt_model.parameters()));
    CHECK(bit_equal<T>(e1.raw_log_u(), e2.raw_log_u()));
    const auto last = o2.evaluate(batch);
    CHECK(last.mean_pos_logp > first.mean_pos_logp + 1);  // and the run did move
  }
}

TEST_CASE("a run on the xtensor model checkpoints and resumes bit for bit, like any Model") {
  constexpr std::size_t C = 2, V = 5;
  Sequences pos, neg;
  for (token_t c = 0; c < 2; ++c) {
    pos.push(std::vector<token_t>{c}, std::vector<token_t>{1, 2});
    neg.push(std::vector<token_t>{c}, std::vector<token_t>{3});
    neg.push(std::vector<token_t>{c}, std::vector<token_t>{0, 4, 4});
  }
  const std::vector<std::int64_t> ids{0, 1};
  const std::vector<double> ref{-1.7, -4.9, -1.6, -5.2};
  const DftBatch<double> batch{.ids = ids, .positives = pos.view(), .negatives = neg.view(),
                               .ref_neg_logp = ref, .num_negatives = 2};
  const DftOptions opt{};
  const CosineSchedule sched{.base_lr = 0.1, .warmup_steps = 2, .total_steps = 12};
  xb::CategoricalPolicy<double> a(C, V), b(C, V);
  Estimator<double> ea(2, opt), eb(2, opt);
  DftOptimizer oa(a, ea, opt, AdamW<double>{}, sched), ob(b, eb, opt, AdamW<double>{}, sched);
  for (int t = 0; t < 4; ++t) oa.step(batch);
  const std::vector<std::byte> saved = io::encode(oa);
  for (int t = 4; t < 12; ++t) oa.step(batch);
  io::decode(saved, ob);
  for (int t = 4; t < 12; ++t) ob.step(batch);
  CHECK(bit_equal<double>(a.parameters(), b.parameters()));
  CHECK(bit_equal<double>(oa.rule().second_moment(), ob.rule().second_moment()));
  CHECK(bit_equal<double>(ea.raw_log_u(), eb.raw_log_u()));
}

#endif  // __has_include(<xtensor/xtensor.hpp>)
