// A quick end-to-end run of the demo's pipeline (examples/demo/pipeline.hpp) on a small model:
// pre-train a base, sample negatives from it, fine-tune with DFT and DFT2, and check that the
// training loss decreases and that the log-likelihood of the base model's wrong samples falls.
#include "../examples/demo/pipeline.hpp"

#include <doctest/doctest.h>

TEST_CASE("demo pipeline: DFT's loss decreases and the likelihood of negatives falls") {
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
  const demo::Progress progress;
  demo::Model base = demo::pretrain(s, progress);
  const auto data = demo::make_train_data(base, demo::draw(demo::Split::finetune, s.train_prompts, 1), s, 2);
  REQUIRE(data.negatives.size() == s.train_prompts * s.negatives);
  REQUIRE(data.ref_neg_logp.size() == data.negatives.size());
  const auto val = demo::make_eval_set(base, demo::draw(demo::Split::validation, s.eval_prompts, 3), s, 4);
  const auto test = demo::make_eval_set(base, demo::draw(demo::Split::test, s.eval_prompts, 5), s, 6);
  REQUIRE(test.wrong.size() > 0);
  for (demo::Method m : {demo::Method::dft, demo::Method::dft2}) {
    const demo::RunResult r = demo::finetune(base, m, 1e-3, data, val, test, s, 1, progress);
    INFO(demo::name(m), ": loss ", r.first_loss, " -> ", r.last_loss, ", log π(neg) ", r.curve.front().test.neg_logp, " -> ",
         r.test.neg_logp);
    CHECK(r.last_loss < r.first_loss);
    CHECK(r.test.neg_logp < r.curve.front().test.neg_logp);
  }
  // The same seed gives the same run.
  const demo::RunResult a = demo::finetune(base, demo::Method::sft, 1e-3, data, val, test, s, 7, progress);
  const demo::RunResult b = demo::finetune(base, demo::Method::sft, 1e-3, data, val, test, s, 7, progress);
  CHECK(a.test.pos_logp == b.test.pos_logp);
}
