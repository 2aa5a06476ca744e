// A quick end-to-end run of the demo's pipeline (examples/demo/pipeline.hpp) on a small model:
// pre-train a base, sample negatives from it, fine-tune with DFT and DFT2, and check that the
// training loss decreases and that the log-likelihood of the base model's wrong samples falls; and
// the pieces of the reference recipe and of the comparison harness: the recipe's settings, fresh
// negatives per epoch reaching the loop, gradient clipping in the loop's update rule, the per-step
// metrics, and the one-token split that gives Dynamic FT per-token log-probs through the Model concept.
#include "../examples/demo/cli.hpp"
#include "../examples/demo/pipeline.hpp"

#include <dftune/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <set>
#include <vector>

namespace {

demo::Settings small_settings() {
  demo::Settings s;
  s.model.d_model = 16;
  s.model.n_layers = 1;
  s.model.d_ff = 32;
  s.pretrain_steps = 150;
  s.train_prompts = 64;
  s.eval_prompts = 48;
  s.negatives = 2;
  s.steps = 30;
  s.batch = 16;
  s.curve_points = 1;
  return s;
}

// An untrained model of the same shape: enough to sample from and to score (no pre-training cost).
demo::Model untrained() { return demo::Model(small_settings().model, 11); }

}  // namespace

TEST_CASE("demo pipeline: DFT's loss decreases and the likelihood of negatives falls") {
  const demo::Settings s = small_settings();
  const demo::Progress progress;
  demo::Model base = demo::pretrain(s, progress);
  const auto data = demo::make_train_data(base, demo::draw(demo::Split::finetune, s.train_prompts, 1), s, 2);
  REQUIRE(data.epochs.size() == 1);
  REQUIRE(data.epochs[0].negatives.size() == s.train_prompts * s.negatives);
  REQUIRE(data.epochs[0].ref_neg_logp.size() == data.epochs[0].negatives.size());
  const auto val = demo::make_eval_set(base, demo::draw(demo::Split::validation, s.eval_prompts, 3), s, 4);
  const auto test = demo::make_eval_set(base, demo::draw(demo::Split::test, s.eval_prompts, 5), s, 6);
  REQUIRE(test.wrong.size() > 0);
  for (demo::Method m : {demo::Method::dft, demo::Method::dft2}) {
    const demo::RunResult r = demo::finetune(base, m, 1e-3, data, val, test, s, 1, progress);
    INFO(demo::name(m), ": loss ", r.first_loss, " -> ", r.last_loss, ", log π(neg) ", r.curve.front().test.neg_logp, " -> ",
         r.test.neg_logp);
    CHECK(r.last_loss < r.first_loss);
    CHECK(r.test.neg_logp < r.curve.front().test.neg_logp);
    // One metrics record per step, with the estimator's numbers in range.
    REQUIRE(r.log.size() == s.steps);
    for (const demo::StepLog& log : r.log) {
      CHECK(log.get("dft/ess") >= 1.0 - 1e-9);
      CHECK(log.get("dft/ess") <= static_cast<double>(s.negatives) + 1e-9);
      CHECK(log.get("dft/max_weight") >= 1.0 / static_cast<double>(s.negatives) - 1e-9);
      CHECK(log.get("dft/max_weight") <= 1.0 + 1e-9);
      CHECK(log.get("dft/log_u_min") <= log.get("dft/log_u_mean"));
      CHECK(log.get("dft/log_u_mean") <= log.get("dft/log_u_max"));
      CHECK(log.get("grad_norm") > 0);
      CHECK(std::isnan(log.get("rewards/margins")));  // not logged for DFT
    }
    CHECK(r.log.front().get("step") == 1.0);
    double last = 0;  // the log's losses are the loop's: their mean over the last tenth is last_loss
    for (std::size_t t = s.steps - s.steps / 10; t < s.steps; ++t) last += r.log[t].get("loss") / static_cast<double>(s.steps / 10);
    CHECK(last == doctest::Approx(r.last_loss).epsilon(1e-6));
  }
  // The same seed gives the same run.
  const demo::RunResult a = demo::finetune(base, demo::Method::sft, 1e-3, data, val, test, s, 7, progress);
  const demo::RunResult b = demo::finetune(base, demo::Method::sft, 1e-3, data, val, test, s, 7, progress);
  CHECK(a.test.pos_logp == b.test.pos_logp);
}

TEST_CASE("demo recipe: official sets the reference trainer's four choices, dftune restores the defaults") {
  demo::Settings s;
  demo::apply(demo::Recipe::official, s);
  CHECK(s.estimator == dftune::EstimatorInit::constant);
  CHECK(s.log_u0 == 0.0);
  CHECK(s.eps_dft2 == 0.0);
  CHECK(s.fresh_negatives);
  CHECK(s.max_grad_norm == 1.0);
  const dftune::DftOptions o = demo::dft_options(s, true);
  CHECK(o.eps == 0.0);
  CHECK(o.init == dftune::EstimatorInit::constant);
  demo::apply(demo::Recipe::dftune, s);
  const demo::Settings d;
  CHECK(s.estimator == d.estimator);
  CHECK(s.eps_dft2 == d.eps_dft2);
  CHECK(!s.fresh_negatives);
  CHECK(std::isinf(s.max_grad_norm));
}

TEST_CASE("demo fresh negatives: one set per epoch, epoch 0 as before, and the loop reads epoch e's set in epoch e") {
  demo::Settings s = small_settings();
  s.steps = 10;  // 10 × 16 = 160 prompts of a 64-prompt set: epochs 0, 1, 2
  demo::Model base = untrained();
  const auto problems = demo::draw(demo::Split::finetune, s.train_prompts, 1);
  const auto once = demo::make_train_data(base, problems, s, 2);
  s.fresh_negatives = true;
  const auto fresh = demo::make_train_data(base, problems, s, 2);
  REQUIRE(fresh.epochs.size() == 3);
  CHECK(demo::epochs_needed(10, 16, 64) == 3);
  CHECK(demo::epochs_needed(8, 16, 64) == 2);
  CHECK(fresh.epochs[0].negatives.tokens == once.epochs[0].negatives.tokens);
  CHECK(fresh.epochs[0].ref_neg_logp == once.epochs[0].ref_neg_logp);
  CHECK(fresh.epochs[1].negatives.tokens != fresh.epochs[0].negatives.tokens);
  CHECK(fresh.epochs[2].negatives.tokens != fresh.epochs[1].negatives.tokens);
  // The loop: batch b of step t holds prompts (t·B + b)-th of the shuffled order; epoch = that / N.
  demo::Model model = base;
  const auto eval = demo::make_eval_set(base, demo::draw(demo::Split::test, 8, 5), s, 6);
  std::size_t checked = 0;
  (void)demo::finetune_loop(model, "probe", 1e-3, fresh, eval, eval, s, 3, demo::Progress{},
                            [&](std::size_t step, const demo::StepBatch& b, demo::StepLog& log) -> float {
                              for (std::size_t k = 0; k < b.ids.size(); ++k) {
                                const std::size_t epoch = (step * s.batch + k) / s.train_prompts;
                                const auto& set = fresh.epochs[epoch];
                                const auto i = static_cast<std::size_t>(b.ids[k]);
                                for (std::size_t j = 0; j < s.negatives; ++j) {
                                  const auto want = set.negatives.view().sequence(i * s.negatives + j);
                                  const auto got = b.negatives.sequence(k * s.negatives + j);
                                  CHECK(std::equal(want.begin(), want.end(), got.begin(), got.end()));
                                  CHECK(b.ref_neg_logp[k * s.negatives + j] == set.ref_neg_logp[i * s.negatives + j]);
                                  ++checked;
                                }
                              }
                              CHECK(log.get("epoch") == doctest::Approx(static_cast<double>((step + 1) * s.batch) / 64.0));
                              return 0.0f;
                            });
  CHECK(checked == s.steps * s.batch * s.negatives);
}

TEST_CASE("demo ClippedRule: torch's clipping before the inner rule, the pre-clip norm kept, +inf bit for bit") {
  // SGD with lr 1: θ ← θ − g', so the step shows the clipped gradient g'.
  std::vector<float> theta{1, 2, 3}, plain{1, 2, 3};
  const std::vector<float> g{3, 0, 4};  // ‖g‖ = 5
  demo::ClippedRule<float, dftune::Sgd<float>> clipped(dftune::Sgd<float>{}, 1.0);
  clipped.step(theta, g, 1.0f);
  CHECK(clipped.last_grad_norm() == 5.0);
  const double c = 1.0 / (5.0 + 1e-6);
  CHECK(theta[0] == doctest::Approx(1 - 3 * c).epsilon(1e-7));
  CHECK(theta[1] == 2.0f);
  CHECK(theta[2] == doctest::Approx(3 - 4 * c).epsilon(1e-7));
  CHECK(clipped.steps() == 1);
  // Below the threshold and with +inf: exactly the inner rule.
  demo::ClippedRule<float, dftune::Sgd<float>> loose(dftune::Sgd<float>{}, 10.0), none;
  dftune::Sgd<float> sgd;
  std::vector<float> a{1, 2, 3}, b{1, 2, 3};
  loose.step(a, g, 0.1f);
  none.step(b, g, 0.1f);
  sgd.step(plain, g, 0.1f);
  CHECK(a == plain);
  CHECK(b == plain);
  CHECK(none.last_grad_norm() == 5.0);
  using Clipped = demo::ClippedRule<float, dftune::Sgd<float>>;
  CHECK_THROWS_AS(Clipped(dftune::Sgd<float>{}, 0.0), dftune::error);
  // A non-finite gradient is an error that changes nothing.
  std::vector<float> bad{1, std::numeric_limits<float>::quiet_NaN(), 0};
  std::vector<float> kept = theta;
  CHECK_THROWS_AS(clipped.step(theta, bad, 1.0f), dftune::error);
  CHECK(theta == kept);
  CHECK(clipped.last_grad_norm() == 5.0);
}

TEST_CASE("demo split_tokens: per-token log-probs that sum to the sequence's, and the same gradient") {
  demo::Model model = untrained();
  dftune::Sequences seqs;
  const std::vector<dftune::token_t> p1{1, 2, 3, 10, 4, 5, 6, 11}, c1{5, 7, 9, 0}, p2{9, 9, 9, 10, 9, 9, 9, 11}, c2{8, 9, 9, 1};
  seqs.push(p1, c1);
  seqs.push(p2, c2);
  std::vector<std::int64_t> offsets;
  const demo::Sequences tokens = demo::split_tokens(seqs.view(), offsets);
  REQUIRE(tokens.size() == 8);
  CHECK(offsets == std::vector<std::int64_t>{0, 4, 8});
  CHECK(tokens.view().completion_length(5) == 1);
  CHECK(tokens.view().sequence(5).size() == 8 + 2);  // prompt 2 + its first token, then token 2
  std::vector<float> seq(2), tok(8);
  model.sequence_logp(seqs.view(), seq);
  model.sequence_logp(tokens.view(), tok);
  CHECK(tok[0] + tok[1] + tok[2] + tok[3] == doctest::Approx(seq[0]).epsilon(1e-5));
  CHECK(tok[4] + tok[5] + tok[6] + tok[7] == doctest::Approx(seq[1]).epsilon(1e-5));
  // Σ_t 1·∇ log π(y_t|…) = ∇ log π(y|x).
  const std::vector<float> ones_seq(2, 0.5f), ones_tok(8, 0.5f);
  model.zero_gradients();
  model.accumulate_gradients(seqs.view(), ones_seq);
  const std::vector<float> g_seq(model.gradients().begin(), model.gradients().end());
  model.zero_gradients();
  model.accumulate_gradients(tokens.view(), ones_tok);
  const auto g_tok = model.gradients();
  double diff = 0, norm = 0;
  for (std::size_t k = 0; k < g_seq.size(); ++k) {
    diff = std::max(diff, static_cast<double>(std::abs(g_seq[k] - g_tok[k])));
    norm = std::max(norm, static_cast<double>(std::abs(g_seq[k])));
  }
  CHECK(norm > 0);
  CHECK(diff <= 1e-5 * norm);
}

TEST_CASE("demo flags: --config FILE stands for its flags in place, --recipe applies first, other flags override it") {
  const std::string path = "test_demo_quick_flags.cfg";
  {
    std::ofstream f(path);
    f << "# a comment line\n"
         "methods = DFT,DPO   # trailing comment\n"
         "\n"
         "--m 4\n"
         "lr-grid DFT=1e-3,3e-3\n"
         "lr-grid=1e-4\n"
         "fresh-negatives\n";
  }
  const char* argv[] = {"compare", "--seeds", "2", "--config", path.c_str(), "--m", "3"};
  const demo::Flags flags{"compare"};
  const std::vector<std::string> args = flags.expand(7, const_cast<char**>(argv));
  CHECK(args == std::vector<std::string>{"--seeds", "2", "--methods", "DFT,DPO", "--m", "4", "--lr-grid", "DFT=1e-3,3e-3",
                                          "--lr-grid", "1e-4", "--fresh-negatives", "--m", "3"});
  std::remove(path.c_str());
  // The recipe first, wherever it stands; the explicit flag after it wins.
  demo::Settings s;
  const std::vector<std::string> r{"--max-grad-norm", "inf", "--recipe", "official"};
  demo::apply_recipe(flags, r, s);
  CHECK(s.max_grad_norm == 1.0);
  CHECK(demo::settings_flag(flags, r[0], r[1], s));
  CHECK(std::isinf(s.max_grad_norm));
  CHECK(s.fresh_negatives);
}
