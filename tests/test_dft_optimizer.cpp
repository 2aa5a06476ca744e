// The categorical reference model and the DFT optimizer: model gradients against finite
// differences, one optimizer step against the closed-form update, state after errors unchanged,
// and a training run that pushes the positives up and the negatives down.
#include <dftune/dftune.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace dftune;

namespace {

// Prompt = one context token; completions of random length from a random policy.
struct Data {
  std::vector<std::int64_t> ids;
  Sequences pos, neg;
  std::vector<double> ref;
};

Data make_data(CategoricalPolicy<double>& ref_model, std::size_t B, std::size_t m, std::mt19937_64& rng) {
  Data d;
  std::uniform_int_distribution<std::size_t> len(1, 4);
  for (std::size_t i = 0; i < B; ++i) {
    const token_t c = static_cast<token_t>(i % ref_model.num_contexts());
    d.ids.push_back(static_cast<std::int64_t>(i));
    const std::vector<token_t> prompt{c};
    d.pos.push(prompt, std::vector<token_t>(len(rng), static_cast<token_t>((c + 1) % 5)));
    for (std::size_t j = 0; j < m; ++j) d.neg.push(prompt, ref_model.sample(static_cast<std::size_t>(c), len(rng), rng, {.temperature = 0.7}));
  }
  d.ref.resize(d.neg.size());
  ref_model.sequence_logp(d.neg.view(), d.ref);
  return d;
}

void randomize(CategoricalPolicy<double>& p, std::mt19937_64& rng) {
  std::normal_distribution<double> n(0, 1);
  for (double& x : p.parameters()) x = n(rng);
}

}  // namespace

TEST_CASE("CategoricalPolicy satisfies the Model concept") {
  static_assert(Model<CategoricalPolicy<double>>);
  static_assert(Model<CategoricalPolicy<float>>);
  struct NotAModel {
    using scalar_type = double;
  };
  static_assert(!Model<NotAModel>);
}

TEST_CASE("CategoricalPolicy: log-probs in closed form and gradients against finite differences") {
  std::mt19937_64 rng(5);
  CategoricalPolicy<double> p(3, 7);
  randomize(p, rng);
  Sequences s;
  s.push(std::vector<token_t>{4, 2}, std::vector<token_t>{1, 6, 1});  // context = last prompt token = 2
  s.push(std::vector<token_t>{0}, std::vector<token_t>{3});
  std::vector<double> lp(2);
  p.sequence_logp(s.view(), lp);
  auto log_softmax = [&](std::size_t c, token_t y) {
    const auto row = p.logits(c);
    double z = 0;
    for (double v : row) z += std::exp(v);
    return row[static_cast<std::size_t>(y)] - std::log(z);
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
}

TEST_CASE("one DftOptimizer step with plain SGD equals θ − lr · Σ ∂L/∂s ∇s, computed in closed form") {
  std::mt19937_64 rng(9);
  for (Variant v : {Variant::dft, Variant::dft2}) {
    CategoricalPolicy<double> ref(2, 5), model(2, 5);
    randomize(ref, rng);
    std::copy(ref.parameters().begin(), ref.parameters().end(), model.parameters().begin());
    const Data d = make_data(ref, 4, 3, rng);
    const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = 0.9};
    Estimator<double> est(4, opt);
    Estimator<double> est_copy = est;
    const double lr = 0.05;
    DftOptimizer optimizer(model, est, opt, Sgd<double>{}, ConstantSchedule{.rate = lr});
    const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(),
                                 .num_negatives = 3, .ref_neg_logp = d.ref};
    const std::vector<double> theta0(model.parameters().begin(), model.parameters().end());

    // Expected: the objective's gradients wrt log-probs, then ∇θ_c log π(y) = Σ_t onehot(y_t) − softmax(θ_c).
    std::vector<double> pos(4), neg(12);
    model.sequence_logp(d.pos.view(), pos);
    model.sequence_logp(d.neg.view(), neg);
    std::vector<std::int64_t> pl, nl;
    for (std::size_t i = 0; i < 4; ++i) pl.push_back(d.pos.view().completion_length(i));
    for (std::size_t k = 0; k < 12; ++k) nl.push_back(d.neg.view().completion_length(k));
    const auto r = dft_loss<double>({.ids = d.ids, .num_negatives = 3, .pos_logp = pos, .neg_logp = neg,
                                     .ref_neg_logp = d.ref, .pos_len = pl, .neg_len = nl},
                                    est_copy, opt);
    std::vector<double> expect = theta0;
    auto add = [&](const Sequences& s, std::size_t k, double dL) {
      const auto seq = s.view().sequence(k);
      const auto c = static_cast<std::size_t>(seq[static_cast<std::size_t>(s.prompt_len[k]) - 1]);
      double z = 0;
      for (std::size_t a = 0; a < 5; ++a) z += std::exp(theta0[c * 5 + a]);
      for (std::size_t t = static_cast<std::size_t>(s.prompt_len[k]); t < seq.size(); ++t)
        for (std::size_t a = 0; a < 5; ++a)
          expect[c * 5 + a] -= lr * dL * ((static_cast<std::size_t>(seq[t]) == a) - std::exp(theta0[c * 5 + a]) / z);
    };
    for (std::size_t i = 0; i < 4; ++i) add(d.pos, i, r.grad_pos[i]);
    for (std::size_t k = 0; k < 12; ++k) add(d.neg, k, r.grad_neg[k]);

    const auto info = optimizer.step(batch);
    CHECK(info.result.loss == doctest::Approx(r.loss).epsilon(1e-14));
    CHECK(info.lr == lr);
    CHECK(optimizer.steps() == 1);
    for (std::size_t k = 0; k < expect.size(); ++k) CHECK(model.parameters()[k] == doctest::Approx(expect[k]).epsilon(1e-13));
    for (std::size_t i = 0; i < 4; ++i) CHECK(*est.log_u(static_cast<std::int64_t>(i)) == r.log_u[i]);
  }
}

TEST_CASE("a failing DftOptimizer step leaves parameters, estimator and step count as they were") {
  std::mt19937_64 rng(13);
  CategoricalPolicy<double> ref(2, 5), model(2, 5);
  randomize(ref, rng);
  const Data d = make_data(ref, 4, 2, rng);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<double> est(4, opt);
  DftOptimizer optimizer(model, est, opt, Adam<double>{}, ConstantSchedule{.rate = 0.1});
  DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .num_negatives = 2,
                         .ref_neg_logp = d.ref};
  optimizer.step(batch);
  const std::vector<double> theta(model.parameters().begin(), model.parameters().end());
  std::vector<std::optional<double>> u;
  for (std::int64_t i = 0; i < 4; ++i) u.push_back(est.log_u(i));

  auto unchanged = [&] {
    CHECK(optimizer.steps() == 1);
    CHECK(std::equal(theta.begin(), theta.end(), model.parameters().begin()));
    for (std::int64_t i = 0; i < 4; ++i) CHECK(est.log_u(i) == u[static_cast<std::size_t>(i)]);
  };
  {  // NaN in the reference log-probs
    std::vector<double> bad = d.ref;
    bad[3] = std::nan("");
    DftBatch<double> b = batch;
    b.ref_neg_logp = bad;
    CHECK_THROWS_WITH_AS(optimizer.step(b), doctest::Contains("ref_neg_logp[3]"), error);
    unchanged();
  }
  {  // a token outside the vocabulary in a negative
    Sequences neg = d.neg;
    neg.tokens[neg.tokens.size() - 1] = 5;
    DftBatch<double> b = batch;
    b.negatives = neg.view();
    CHECK_THROWS_WITH_AS(optimizer.step(b), doctest::Contains("batch.tokens"), error);
    unchanged();
  }
  {  // B·m negatives expected
    DftBatch<double> b = batch;
    b.num_negatives = 3;
    CHECK_THROWS_WITH_AS(optimizer.step(b), doctest::Contains("batch.negatives"), error);
    unchanged();
  }
  {  // an id out of range
    std::vector<std::int64_t> ids = d.ids;
    ids[0] = 4;
    DftBatch<double> b = batch;
    b.ids = ids;
    CHECK_THROWS_WITH_AS(optimizer.step(b), doctest::Contains("ids[0]"), error);
    unchanged();
  }
}

TEST_CASE("training with DFT and DFT2 raises the positives and pushes the base model's negatives down") {
  for (Variant v : {Variant::dft, Variant::dft2}) {
    std::mt19937_64 rng(21);
    CategoricalPolicy<double> ref(4, 10), model(4, 10);
    randomize(ref, rng);
    std::copy(ref.parameters().begin(), ref.parameters().end(), model.parameters().begin());
    const Data d = make_data(ref, 8, 4, rng);
    const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = v == Variant::dft ? 0.85 : 0.9};
    Estimator<double> est(8, opt);
    DftOptimizer optimizer(model, est, opt, AdamW<double>{}, CosineSchedule{.base_lr = 0.05, .warmup_steps = 5, .total_steps = 60});
    const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(),
                                 .num_negatives = 4, .ref_neg_logp = d.ref};
    const auto first = optimizer.evaluate(batch);
    for (int t = 0; t < 60; ++t) optimizer.step(batch);
    const auto last = optimizer.evaluate(batch);
    CAPTURE(v);
    CHECK(last.mean_pos_logp > first.mean_pos_logp + 1.0);
    CHECK(last.mean_neg_logp < first.mean_neg_logp - 1.0);
    CHECK(last.result.loss < first.result.loss);
  }
}

TEST_CASE("DftOptimizer refuses bad options and a bad schedule at construction") {
  CategoricalPolicy<double> model(2, 3);
  Estimator<double> est(2);
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {.gamma = 0}, Sgd<double>{}, ConstantSchedule{.rate = 0.1}),
                       doctest::Contains("gamma: got 0"), error);
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {}, Sgd<double>{}, CosineSchedule{.base_lr = 1, .warmup_steps = 5, .total_steps = 2}),
                       doctest::Contains("warmup_steps: got 5"), error);
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {}, Sgd<double>{}, ConstantSchedule{.rate = -1}),
                       doctest::Contains("rate: got -1"), error);
}
