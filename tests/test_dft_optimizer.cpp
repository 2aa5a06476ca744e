// The categorical reference model and the DFT optimizer: model gradients against finite
// differences, one optimizer step against the closed-form update, state after errors unchanged,
// and a training run that pushes the positives up and the negatives down.
#include <dftune/callbacks/jsonl_logger.hpp>
#include <dftune/dftune.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
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
    DftOptimizer optimizer(model, est, opt, Sgd<double>{}, ConstantSchedule{.base_lr = lr});
    const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = d.ref, .num_negatives = 3};
    const std::vector<double> theta0(model.parameters().begin(), model.parameters().end());

    // Expected: the objective's gradients wrt log-probs, then ∇θ_c log π(y) = Σ_t onehot(y_t) − softmax(θ_c).
    std::vector<double> pos(4), neg(12);
    model.sequence_logp(d.pos.view(), pos);
    model.sequence_logp(d.neg.view(), neg);
    std::vector<std::int64_t> pl, nl;
    for (std::size_t i = 0; i < 4; ++i) pl.push_back(d.pos.view().completion_length(i));
    for (std::size_t k = 0; k < 12; ++k) nl.push_back(d.neg.view().completion_length(k));
    const auto r = dft_loss<double>({.ids = d.ids, .pos_logp = pos, .neg_logp = neg,
                                     .ref_neg_logp = d.ref, .pos_len = pl, .neg_len = nl, .num_negatives = 3},
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
  DftOptimizer optimizer(model, est, opt, Adam<double>{}, ConstantSchedule{.base_lr = 0.1});
  DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(),
                         .ref_neg_logp = d.ref, .num_negatives = 2};
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
    const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = d.ref, .num_negatives = 4};
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
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {.gamma = 0}, Sgd<double>{}, ConstantSchedule{.base_lr = 0.1}),
                       doctest::Contains("gamma: got 0"), error);
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {}, Sgd<double>{}, CosineSchedule{.base_lr = 1, .warmup_steps = 5, .total_steps = 2}),
                       doctest::Contains("warmup_steps: got 5"), error);
  CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {}, Sgd<double>{}, ConstantSchedule{.base_lr = -1}),
                       doctest::Contains("base_lr: got -1"), error);
}

namespace {

// A schedule whose rate at one step is whatever the test wants (NaN, huge) or an exception.
struct TrapSchedule {
  std::size_t at = 1;
  double rate = 0.1, trap = std::nan("");
  bool throws = false;
  double lr(std::size_t step) const {
    if (step != at) return rate;
    if (throws) throw dftune::argument_error("schedule: refused step " + std::to_string(step));
    return trap;
  }
};

// Everything a failed step must leave alone.
template <class Opt, class T>
struct State {
  std::vector<T> theta, log_u, m, v;
  std::vector<unsigned char> seen;
  std::size_t steps, rule_steps;
  State(const Opt& o)
      : theta(o.model().parameters().begin(), o.model().parameters().end()),
        log_u(o.estimator().raw_log_u().begin(), o.estimator().raw_log_u().end()),
        m(o.rule().first_moment().begin(), o.rule().first_moment().end()),
        v(o.rule().second_moment().begin(), o.rule().second_moment().end()),
        seen(o.estimator().raw_seen().begin(), o.estimator().raw_seen().end()),
        steps(o.steps()),
        rule_steps(o.rule().steps()) {}
  bool operator==(const State& b) const {
    auto same = [](const std::vector<T>& x, const std::vector<T>& y) {
      return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
    };
    return same(theta, b.theta) && same(log_u, b.log_u) && same(m, b.m) && same(v, b.v) && seen == b.seen &&
           steps == b.steps && rule_steps == b.rule_steps;
  }
};

}  // namespace

TEST_CASE("an error raised after evaluate() (schedule, inner rule) leaves estimator, parameters, moments and count") {
  std::mt19937_64 rng(17);
  CategoricalPolicy<double> ref(2, 5);
  randomize(ref, rng);
  const Data d = make_data(ref, 4, 2, rng);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = d.ref, .num_negatives = 2};
  auto run = [&](TrapSchedule s, const char* message) {
    CAPTURE(message);
    CategoricalPolicy<double> model(2, 5);
    std::copy(ref.parameters().begin(), ref.parameters().end(), model.parameters().begin());
    Estimator<double> est(4, opt);
    DftOptimizer optimizer(model, est, opt, AdamW<double>{}, s);
    optimizer.step(batch);  // step 0 succeeds: the state is not trivial
    using S = State<decltype(optimizer), double>;
    const S before(optimizer);
    CHECK_THROWS_WITH_AS(optimizer.step(batch), doctest::Contains(message), error);
    CHECK(S(optimizer) == before);
    return S(optimizer);
  };
  run({.trap = std::nan("")}, "lr: got nan");
  run({.trap = -1.0}, "lr: got -1");
  run({.throws = true}, "schedule: refused step 1");
  // The inner rule refuses a result that overflows (θ − lr·g with lr = 1e308): after the backward,
  // before the estimator is committed.
  run({.trap = 1e308}, "params[");
}

TEST_CASE("a float model refuses a rate its scalar type cannot hold, and the issue's AdamW<float> overflow") {
  std::mt19937_64 rng(19);
  CategoricalPolicy<double> ref64(2, 5);
  randomize(ref64, rng);
  const Data d = make_data(ref64, 4, 2, rng);
  const std::vector<float> ref(d.ref.begin(), d.ref.end());
  const DftBatch<float> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = ref, .num_negatives = 2};
  {
    CategoricalPolicy<float> model(2, 5);
    const DftOptions opt{};
    Estimator<float> est(4, opt);
    DftOptimizer optimizer(model, est, opt, Sgd<float>{}, TrapSchedule{.at = 0, .trap = 1e300});
    const std::vector<float> theta(model.parameters().begin(), model.parameters().end());
    CHECK_THROWS_WITH_AS(optimizer.step(batch), doctest::Contains("lr: got 1.0000000000000001e+300"), error);
    CHECK(std::equal(theta.begin(), theta.end(), model.parameters().begin()));
    CHECK(optimizer.steps() == 0);
    CHECK(optimizer.rule().steps() == 0);
    for (std::int64_t i = 0; i < 4; ++i) CHECK(!est.log_u(i));
  }
  {  // DFT with a fixed log u0 = −80: the weights exp(d + 80) make gradients ~1e34, whose squares pass
     // float's range in Adam's second moment. Before: the step returned and left v = +inf (a state
     // io::save wrote and io::load refused). Now: a named error, nothing changed.
    CategoricalPolicy<float> model(2, 5);
    const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85, .init = EstimatorInit::fixed, .log_u0 = -80};
    Estimator<float> est(4, opt);
    DftOptimizer optimizer(model, est, opt, AdamW<float>{}, ConstantSchedule{.base_lr = 1e-3});
    using S = State<decltype(optimizer), float>;
    const S before(optimizer);
    CHECK_THROWS_WITH_AS(optimizer.step(batch), doctest::Contains("second_moment["), error);
    CHECK(S(optimizer) == before);
    // With the reference recipe's clipping the same step is fine, and reports the unclipped norm.
    Estimator<float> est2(4, opt);
    DftOptimizer clipped(model, est2, opt, AdamW<float>{}, ConstantSchedule{.base_lr = 1e-3}, {.max_grad_norm = 1.0});
    const auto info = clipped.step(batch);
    CHECK(info.grad_norm > 1e30);
    for (float x : model.parameters()) CHECK(std::isfinite(x));
  }
}

TEST_CASE("gradient clipping by global L2 norm: torch's rule on the model's gradient, grad_norm before clipping") {
  std::mt19937_64 rng(23);
  CategoricalPolicy<double> ref(2, 5);
  randomize(ref, rng);
  const Data d = make_data(ref, 4, 3, rng);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  const DftBatch<double> batch{.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = d.ref, .num_negatives = 3};
  const double lr = 0.05;
  // The unclipped gradient, computed apart: evaluate, then the model's backward.
  CategoricalPolicy<double> probe(2, 5);
  std::copy(ref.parameters().begin(), ref.parameters().end(), probe.parameters().begin());
  Estimator<double> probe_est(4, opt);
  DftOptimizer probe_opt(probe, probe_est, opt, Sgd<double>{}, ConstantSchedule{.base_lr = lr});
  const auto r = probe_opt.evaluate(batch).result;
  probe.zero_gradients();
  probe.accumulate_gradients(d.pos.view(), r.grad_pos);
  probe.accumulate_gradients(d.neg.view(), r.grad_neg);
  const std::vector<double> g(probe.gradients().begin(), probe.gradients().end());
  long double ss = 0;
  for (double x : g) ss += static_cast<long double>(x) * x;
  const double norm = static_cast<double>(std::sqrt(ss));
  REQUIRE(norm > 0.2);

  for (double max_norm : {std::numeric_limits<double>::infinity(), 10 * norm, norm / 4}) {
    CAPTURE(max_norm);
    CategoricalPolicy<double> model(2, 5);
    std::copy(ref.parameters().begin(), ref.parameters().end(), model.parameters().begin());
    Estimator<double> est(4, opt);
    DftOptimizer optimizer(model, est, opt, Sgd<double>{}, ConstantSchedule{.base_lr = lr}, {.max_grad_norm = max_norm});
    CHECK(optimizer.step_options().max_grad_norm == max_norm);
    const auto info = optimizer.step(batch);
    CHECK(info.grad_norm == doctest::Approx(norm).epsilon(1e-15));
    const double c = norm > max_norm ? max_norm / (info.grad_norm + 1e-6) : 1.0;
    for (std::size_t k = 0; k < g.size(); ++k) {
      const double want = ref.parameters()[k] - lr * (c == 1.0 ? g[k] : g[k] * c);
      if (c == 1.0) CHECK(model.parameters()[k] == want);  // no clipping: the unclipped step, bit for bit
      else CHECK(model.parameters()[k] == doctest::Approx(want).epsilon(1e-15));
    }
    if (c != 1.0) {  // the step taken has norm max_norm (a hair below, by torch's + 1e-6)
      long double moved = 0;
      for (std::size_t k = 0; k < g.size(); ++k) {
        const long double dk = (static_cast<long double>(ref.parameters()[k]) - model.parameters()[k]) / lr;
        moved += dk * dk;
      }
      CHECK(static_cast<double>(std::sqrt(moved)) == doctest::Approx(max_norm * norm / (norm + 1e-6)).epsilon(1e-12));
      CHECK(static_cast<double>(std::sqrt(moved)) < max_norm);
    }
  }
  CategoricalPolicy<double> model(2, 3);
  Estimator<double> est(2);
  for (double bad : {0.0, -1.0, std::nan("")})
    CHECK_THROWS_WITH_AS(DftOptimizer(model, est, {}, Sgd<double>{}, ConstantSchedule{.base_lr = 0.1}, {.max_grad_norm = bad}),
                         doctest::Contains("max_grad_norm: got"), error);
}

// ---- step callbacks (callbacks/step_callback.hpp) -----------------------------------------------

namespace {

// Two optimizers on equal models and estimators: one stepped with callbacks, one without.
struct CallbackRun {
  CategoricalPolicy<double> ref{2, 5}, model{2, 5}, twin{2, 5};
  Data d;
  DftOptions opt{.variant = Variant::dft2, .tau = 0.5, .gamma = 0.9};
  Estimator<double> est{4, opt}, twin_est{4, opt};
  DftOptimizer<CategoricalPolicy<double>, Adam<double>, CosineSchedule> a, b;
  CallbackRun()
      : a(model, est, opt, Adam<double>{}, CosineSchedule{.base_lr = 0.1, .warmup_steps = 1, .total_steps = 4}),
        b(twin, twin_est, opt, Adam<double>{}, CosineSchedule{.base_lr = 0.1, .warmup_steps = 1, .total_steps = 4}) {
    std::mt19937_64 rng(41);
    randomize(ref, rng);
    d = make_data(ref, 4, 3, rng);
  }
  DftBatch<double> batch() const {
    return {.ids = d.ids, .positives = d.pos.view(), .negatives = d.neg.view(), .ref_neg_logp = d.ref, .num_negatives = 3};
  }
};

bool same_info(const DftStepInfo<double>& x, const DftStepInfo<double>& y) {
  return x.step == y.step && x.lr == y.lr && x.grad_norm == y.grad_norm && x.result.loss == y.result.loss &&
         x.result.objective == y.result.objective && x.result.grad_pos == y.result.grad_pos &&
         x.result.grad_neg == y.result.grad_neg && x.result.log_u == y.result.log_u &&
         x.mean_pos_logp == y.mean_pos_logp && x.mean_neg_logp == y.mean_neg_logp;
}

struct Recorder {
  std::vector<std::string>* calls;
  std::vector<DftStepInfo<double>> seen;
  void on_step(const DftStepInfo<double>& s) {
    calls->push_back("recorder " + std::to_string(s.step));
    seen.push_back(s);
  }
};

}  // namespace

TEST_CASE("step callbacks: each called once per step, in order, with what the step returned; no effect on the step") {
  CallbackRun r;
  std::vector<std::string> calls;
  Recorder rec{&calls, {}};
  auto lambda = [&](const DftStepInfo<double>& s) { calls.push_back("lambda " + std::to_string(s.step)); };
  for (std::size_t t = 0; t < 3; ++t) {
    const DftStepInfo<double> with = r.a.step(r.batch(), rec, lambda);
    const DftStepInfo<double> without = r.b.step(r.batch());
    CHECK(same_info(with, without));  // bit for bit: the callbacks change nothing of the step
    REQUIRE(rec.seen.size() == t + 1);
    CHECK(same_info(rec.seen.back(), with));
    CHECK(rec.seen.back().step == t);
    CHECK(!with.stop_requested);
    // The metrics handed to callbacks are dft_metrics of the step's result (DFT2: with neg_len).
    REQUIRE(with.metrics.has_value());
    CHECK(!without.metrics.has_value());
    std::vector<std::int64_t> neg_len(r.d.neg.size());
    for (std::size_t k = 0; k < neg_len.size(); ++k) neg_len[k] = r.d.neg.view().completion_length(k);
    const DftMetrics want = dft_metrics(with.result, 3, r.opt, neg_len);
    CHECK(with.metrics->log_u_mean == want.log_u_mean);
    CHECK(with.metrics->ess == want.ess);
    CHECK(with.metrics->weight_sum == want.weight_sum);
  }
  CHECK(calls == std::vector<std::string>{"recorder 0", "lambda 0", "recorder 1", "lambda 1", "recorder 2", "lambda 2"});
  CHECK(std::equal(r.model.parameters().begin(), r.model.parameters().end(), r.twin.parameters().begin()));
  CHECK(r.a.steps() == 3);
}

TEST_CASE("step callbacks: one returning true requests a stop; every callback still sees the step") {
  CallbackRun r;
  std::size_t logged = 0;
  auto stop_below = [](const DftStepInfo<double>& s) { return s.step >= 1; };  // stop once two steps are done
  auto count = [&](const DftStepInfo<double>&) { ++logged; };
  std::size_t steps = 0;
  while (true) {
    ++steps;
    if (r.a.step(r.batch(), stop_below, count).stop_requested) break;
    REQUIRE(steps < 10);
  }
  CHECK(steps == 2);
  CHECK(logged == 2);
  CHECK(r.a.steps() == 2);
}

TEST_CASE("step callbacks: an exception from one leaves the optimizer as after the step; later callbacks not called") {
  CallbackRun r;
  std::size_t after = 0;
  auto thrower = [](const DftStepInfo<double>& s) {
    if (s.step == 1) throw std::runtime_error("callback failed at step 1");
  };
  auto later = [&](const DftStepInfo<double>&) { ++after; };
  r.a.step(r.batch(), thrower, later);
  r.b.step(r.batch());
  CHECK_THROWS_WITH_AS(r.a.step(r.batch(), thrower, later), "callback failed at step 1", std::runtime_error);
  r.b.step(r.batch());
  using S = State<decltype(r.a), double>;
  CHECK(S(r.a) == S(r.b));  // the step was taken and committed, as without the callback
  CHECK(r.a.steps() == 2);
  CHECK(after == 1);
  r.a.step(r.batch(), thrower, later);  // training goes on
  CHECK(after == 2);
}

TEST_CASE("JsonlLogger: one line per step with add_step_info's keys; a failed stream is an io_error after the step") {
  CallbackRun r;
  std::ostringstream out;
  JsonlLogger log(out);
  const DftStepInfo<double> s0 = r.a.step(r.batch(), log);
  const DftStepInfo<double> s1 = r.a.step(r.batch(), log);
  JsonRecord want0, want1;
  add_step_info(want0, s0);
  add_step_info(want1, s1);
  CHECK(out.str() == want0.str() + "\n" + want1.str() + "\n");
  CHECK(log.lines() == 2);
  CHECK(want0.str().starts_with("{\"step\": 1, \"loss\": "));
  for (const char* key : {"learning_rate", "grad_norm", "logps/chosen", "logps/rejected", "dft/objective", "dft/ess", "dft/log_u_mean"})
    CHECK(want1.contains(key));
  JsonRecord taken;
  taken.add("loss", 1.0);
  CHECK_THROWS_WITH_AS(add_step_info(taken, s0), "key: got loss, expected a key not yet in the record", error);
  CHECK(taken.size() == 1);
  std::ostringstream broken;
  broken.setstate(std::ios::badbit);
  JsonlLogger bad(broken);
  CHECK_THROWS_AS(r.a.step(r.batch(), bad), io_error);
  CHECK(r.a.steps() == 3);
}
