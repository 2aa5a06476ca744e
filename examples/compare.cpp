// Every objective of dftune on the demo's task (docs/math.md, "Fair comparisons" and "The other
// DFT"): SFT, DFT, DFT2, DPO, IPO, SimPO, ORPO, Dynamic FT (offline, on the demo's positives and,
// for the pairwise ones, the base model's negatives) and RWR, Best-of-N SFT, RLOO (on-policy: k
// samples per prompt from the current model every step, reward 1 for the exact right answer, else
// 0), all from the same base, on the same batches, with the same steps, AdamW, cosine schedule and
// gradient clipping (none by default), each at its own learning rate picked on the validation split
// from a grid (one shared grid, or one per method), ≥ 3 seeds, mean ± std.
// The task, base model, negatives, evaluation and the training loop are examples/demo/pipeline.hpp;
// the objective options come from flags or a --config file (defaults: the library's), and every
// step's metrics go to metrics.jsonl under TRL's names (docs/math.md, "Metrics").
// On-policy details: RWR, BoN-SFT and RLOO train on the k samples only (the positive is never
// added); BoN-SFT keeps the library's tie rule, so a prompt with no right sample trains on its first
// (wrong) sample; RWR uses η = 1 with batch normalisation by default (not tuned: a right sample
// weighs e times a wrong one). Dynamic FT scores the positives token by token through the Model
// concept (demo::split_tokens). ms/step is the wall time of one training step (batching, on-policy
// sampling, scores, gradients, AdamW), evaluation excluded, measured while two runs share the two
// cores: it moves with the machine's load, compare it within one run only. Run with --help.
#include "demo/cli.hpp"
#include "demo/metrics_out.hpp"
#include "demo/pipeline.hpp"
#include "demo/report.hpp"

#include <dftune/metrics/jsonl.hpp>
#include <dftune/metrics/metrics.hpp>
#include <dftune/model/weights_io.hpp>
#include <dftune/objective/best_of_n.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/dynamic_ft.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/reinforce.hpp>
#include <dftune/objective/rwr.hpp>
#include <dftune/objective/simpo.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

enum class Obj { sft, dft, dft2, dpo, ipo, simpo, orpo, dynft, rwr, best_of_n, rloo };
constexpr Obj kAll[] = {Obj::sft,  Obj::dft,   Obj::dft2, Obj::dpo,       Obj::ipo, Obj::simpo,
                        Obj::orpo, Obj::dynft, Obj::rwr,  Obj::best_of_n, Obj::rloo};
const char* label(Obj o) {
  constexpr const char* names[] = {"SFT", "DFT", "DFT2", "DPO", "IPO", "SimPO", "ORPO", "DynFT", "RWR", "BoN-SFT", "RLOO"};
  return names[static_cast<int>(o)];
}
bool on_policy(Obj o) { return o == Obj::rwr || o == Obj::best_of_n || o == Obj::rloo; }
const char* reduction_name(dftune::NllReduction r) {
  return r == dftune::NllReduction::token_mean ? "token_mean" : r == dftune::NllReduction::sequence_mean ? "sequence_mean" : "length_normalized";
}

struct Cli {
  demo::Settings settings;
  std::size_t seeds = 3, k = 4;  // k: on-policy samples per prompt and step
  std::vector<double> lr_grid{1e-4, 3e-4, 1e-3};
  std::map<Obj, std::vector<double>> lr_grid_of;  // per-method grids (--lr-grid METHOD=...)
  std::vector<Obj> methods{std::begin(kAll), std::end(kAll)};
  dftune::DpoOptions dpo;
  dftune::IpoOptions ipo;
  dftune::SimpoOptions simpo;
  dftune::OrpoOptions orpo;
  dftune::RwrOptions rwr;
  dftune::DynamicFtOptions dynft;
  std::string out = "compare_out";
  std::string base;  // load the base model from here instead of pre-training it
  std::string plot_script = (std::filesystem::path(__FILE__).parent_path().parent_path() / "scripts" / "plot_compare.gp").string();

  const std::vector<double>& grid(Obj o) const {
    const auto it = lr_grid_of.find(o);
    return it == lr_grid_of.end() ? lr_grid : it->second;
  }
};

void usage(std::FILE* f) {
  const Cli d;
  std::fprintf(f,
               "usage: compare [flags]\n"
               "Every dftune objective fine-tuning the demo's tiny causal LM on three-digit addition.\n"
               "  --seeds N            fine-tuning seeds                                [%zu]\n"
               "  --k N                on-policy samples per prompt (RWR, BoN-SFT, RLOO) [%zu]\n"
               "  --lr-grid A,B,...    shared grid; each method's lr picked on validation [1e-4,3e-4,1e-3]\n"
               "  --lr-grid M=A,B,...  the grid of method M alone (repeatable)\n"
               "  --methods A,B,...    subset of SFT,DFT,DFT2,DPO,IPO,SimPO,ORPO,DynFT,RWR,BoN-SFT,RLOO [all]\n"
               "  --dpo-beta X         DPO β                                            [%g]\n"
               "  --ipo-beta X         IPO β (target margin 1/(2β))                     [%g]\n"
               "  --simpo-beta X       SimPO β                                          [%g]\n"
               "  --simpo-gamma X      SimPO target margin γ                            [%g]\n"
               "  --orpo-lambda X      ORPO λ (token-mean SFT term + λ · odds-ratio term) [%g]\n"
               "  --rwr-eta X          RWR temperature η (batch-normalised weights)     [%g]\n"
               "  --dynft-reduction R  Dynamic FT: token_mean (TRL), sequence_mean or length_normalized [token_mean]\n",
               d.seeds, d.k, d.dpo.beta, d.ipo.beta, d.simpo.beta, d.simpo.gamma, d.orpo.lambda, d.rwr.eta);
  demo::settings_usage(f, d.settings);
  std::fprintf(f,
               "  --base FILE          load the base model (DIR/base.bin of a demo or compare run)\n"
               "  --out DIR            output directory                                 [compare_out]\n"
               "  --plot-script PATH   gnuplot script                                   [scripts/plot_compare.gp]\n"
               "  --quick              smoke test: tiny budget, one lr, 2 seeds\n"
               "  --help               this text\n"
               "Writes DIR/{results.csv,results.jsonl,results.json,curves.dat,accuracy.png} and the per-step metrics\n"
               "DIR/{metrics.jsonl,metrics.dat,metrics.png} (scripts/plot_metrics.gp).\n");
}

constexpr demo::Flags flags{"compare"};

Obj method_of(const std::string& flag, const std::string& x) {
  const auto it = std::find_if(std::begin(kAll), std::end(kAll), [&](Obj o) { return x == label(o); });
  if (it == std::end(kAll)) flags.bad(flag, "unknown method '" + x + "'");
  return *it;
}

double positive(const std::string& a, const std::string& v) {
  const double x = flags.real(a, v);
  if (!(x > 0)) flags.bad(a, "got '" + v + "', expected a number > 0");
  return x;
}

Cli parse(int argc, char** argv) {
  Cli c;
  demo::Settings& s = c.settings;
  const std::vector<std::string> args = flags.expand(argc, argv);
  demo::apply_recipe(flags, args, s);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    }
    if (a == "--quick") {
      s.pretrain_steps = 150;
      s.steps = 10;
      s.batch = 16;
      s.train_prompts = 96;
      s.eval_prompts = 64;
      s.curve_points = 2;
      c.seeds = 2;
      c.lr_grid = {1e-3};
      continue;
    }
    if (demo::settings_switch(a, s)) continue;
    if (i + 1 >= args.size()) flags.bad(a, "unknown flag or missing value");
    const std::string& v = args[++i];
    if (demo::settings_flag(flags, a, v, s)) continue;
    if (a == "--seeds") c.seeds = flags.count(a, v);
    else if (a == "--k") c.k = flags.count(a, v);
    else if (a == "--out") c.out = v;
    else if (a == "--base") c.base = v;
    else if (a == "--plot-script") c.plot_script = v;
    else if (a == "--dpo-beta") c.dpo.beta = positive(a, v);
    else if (a == "--ipo-beta") c.ipo.beta = positive(a, v);
    else if (a == "--simpo-beta") c.simpo.beta = positive(a, v);
    else if (a == "--simpo-gamma") c.simpo.gamma = flags.real(a, v);
    else if (a == "--orpo-lambda") c.orpo.lambda = flags.real(a, v);
    else if (a == "--rwr-eta") c.rwr.eta = positive(a, v);
    else if (a == "--dynft-reduction") {
      if (v == "token_mean") c.dynft.reduction = dftune::NllReduction::token_mean;
      else if (v == "sequence_mean") c.dynft.reduction = dftune::NllReduction::sequence_mean;
      else if (v == "length_normalized") c.dynft.reduction = dftune::NllReduction::length_normalized;
      else flags.bad(a, "got '" + v + "', expected token_mean, sequence_mean or length_normalized");
    } else if (a == "--lr-grid") {
      const std::size_t eq = v.find('=');
      if (eq == std::string::npos) c.lr_grid = flags.rates(a, v);
      else c.lr_grid_of[method_of(a, v.substr(0, eq))] = flags.rates(a, v.substr(eq + 1));
    } else if (a == "--methods") {
      c.methods.clear();
      for (const std::string& x : demo::Flags::split(v)) {
        const Obj o = method_of(a, x);
        if (std::find(c.methods.begin(), c.methods.end(), o) != c.methods.end()) flags.bad(a, "method '" + x + "' twice");
        c.methods.push_back(o);
      }
    } else flags.bad(a, "unknown flag");
  }
  if (c.k < 2) flags.bad("--k", "RLOO needs k >= 2");
  demo::check_settings(flags, s);
  try {
    dftune::validate(c.simpo);
    dftune::validate(c.orpo);
  } catch (const dftune::error& e) {
    flags.bad("objective options", e.what());
  }
  return c;
}

// Per seed: the demo's training data plus log π_ref of the positives (DPO, IPO), computed once.
struct SeedData {
  demo::TrainData train;
  std::vector<float> ref_pos_logp;
};

// model.gradients ← Σ d_pos ∂s_pos/∂θ + Σ d_neg ∂s_neg/∂θ, then one (clipped) AdamW step at the
// scheduled lr.
template <class Schedule>
void apply(demo::Model& model, demo::Rule& rule, const Schedule& schedule, std::size_t step, const dftune::SequenceBatch& a,
           std::span<const float> da, const dftune::SequenceBatch* b = nullptr, std::span<const float> db = {}) {
  model.zero_gradients();
  model.accumulate_gradients(a, da);
  if (b) model.accumulate_gradients(*b, db);
  rule.step(model.parameters(), std::span<const float>(model.gradients()), static_cast<float>(schedule.lr(step)));
}

double mean(std::span<const float> x) {
  double s = 0;
  for (float v : x) s += v;
  return x.empty() ? 0.0 : s / static_cast<double>(x.size());
}

void log_rewards(demo::StepLog& log, const dftune::PairRewards& r) {
  const dftune::RewardMetrics m = dftune::reward_metrics(r);
  log.add("rewards/chosen", m.chosen);
  log.add("rewards/rejected", m.rejected);
  log.add("rewards/margins", m.margins);
  log.add("rewards/accuracies", m.accuracies);
}

demo::RunResult run(const demo::Model& base, Obj obj, double lr, const SeedData& sd, const demo::EvalSet& validation,
                    const demo::EvalSet& test, const Cli& cli, std::uint64_t seed, const demo::Progress& progress) {
  const demo::Settings& s = cli.settings;
  if (obj == Obj::sft || obj == Obj::dft || obj == Obj::dft2) {
    const demo::Method m = obj == Obj::sft ? demo::Method::sft : obj == Obj::dft ? demo::Method::dft : demo::Method::dft2;
    return demo::finetune(base, m, lr, sd.train, validation, test, s, seed, progress);  // the demo's own runs
  }
  demo::Model model = base;
  model.set_activation_memory(demo::kActivationMemory);
  demo::Rule rule = demo::rule_for(s);
  const auto schedule = demo::schedule_for(lr, s.steps);
  const std::size_t B = s.batch, m = s.negatives, k = cli.k;
  std::vector<float> pos_lp(B), neg_lp(B * m), ref_pos(B), logp(B * k), reward(B * k), token_lp;
  std::vector<std::int64_t> token_offsets;
  const std::vector<std::int64_t> pos_len(B, demo::kAnswerLen), neg_len(B * m, demo::kAnswerLen), len(B * k, demo::kAnswerLen);
  auto step_fn = [&](std::size_t step, const demo::StepBatch& b, demo::StepLog& log) -> float {
    if (obj == Obj::dynft) {
      // Per-token log-probs of the positives, the token-level loss, and its gradient back as the
      // weights of the one-token completions.
      const demo::Sequences tokens = demo::split_tokens(b.positives, token_offsets);
      token_lp.resize(tokens.size());
      dftune::score_for_backward(model, tokens.view(), std::span<float>(token_lp));
      const dftune::ScoreResult<float> r =
          dftune::dynamic_ft_loss(dftune::TokenScores<float>{.token_logp = token_lp, .weights = {}, .offsets = token_offsets}, cli.dynft);
      apply(model, rule, schedule, step, tokens.view(), r.grad);
      double prob = 0;
      for (float x : token_lp) prob += std::exp(static_cast<double>(x)) / static_cast<double>(token_lp.size());
      log.add("loss", r.loss);
      log.add("grad_norm", rule.last_grad_norm());
      log.add("logps/chosen", mean(token_lp) * static_cast<double>(token_lp.size()) / static_cast<double>(B));
      log.add("dynft/token_prob", prob);
      return r.loss;
    }
    if (!on_policy(obj)) {
      dftune::score_for_backward(model, b.positives, std::span<float>(pos_lp));
      dftune::score_for_backward(model, b.negatives, std::span<float>(neg_lp));
      for (std::size_t i = 0; i < B; ++i) ref_pos[i] = sd.ref_pos_logp[static_cast<std::size_t>(b.ids[i])];
      const dftune::PreferenceScores<float> p{.pos_logp = pos_lp, .neg_logp = neg_lp,
                                              .ref_pos_logp = ref_pos, .ref_neg_logp = b.ref_neg_logp,
                                              .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
      const dftune::PreferenceResult<float> r = obj == Obj::dpo     ? dftune::dpo_loss(p, cli.dpo)
                                                : obj == Obj::ipo   ? dftune::ipo_loss(p, cli.ipo)
                                                : obj == Obj::simpo ? dftune::simpo_loss(p, cli.simpo)
                                                                    : dftune::orpo_loss(p, cli.orpo);
      apply(model, rule, schedule, step, b.positives, r.grad_pos, &b.negatives, r.grad_neg);
      log.add("loss", r.loss);
      log.add("grad_norm", rule.last_grad_norm());
      log.add("logps/chosen", mean(pos_lp));
      log.add("logps/rejected", mean(neg_lp));
      // TRL's rewards: β·log ratio (DPOTrainer: DPO, IPO), β·mean token log-prob (CPOTrainer for
      // SimPO; ORPOTrainer with β = λ).
      log_rewards(log, obj == Obj::dpo     ? dftune::log_ratio_rewards(p, cli.dpo)
                       : obj == Obj::ipo   ? dftune::log_ratio_rewards(p, cli.ipo)
                       : obj == Obj::simpo ? dftune::length_normalized_rewards(p, cli.simpo)
                                           : dftune::length_normalized_rewards(p, cli.orpo));
      return r.loss;
    }
    // On-policy: k samples per prompt from the current model, the demo's sampler (T 0.7, top-k 50).
    std::vector<demo::Problem> ask;
    for (std::size_t i = 0; i < B; ++i)
      for (std::size_t j = 0; j < k; ++j) ask.push_back(sd.train.problems[static_cast<std::size_t>(b.ids[i])]);
    dftune::SamplingOptions o = s.sampling;
    o.seed = seed * 1000003 + 7919 * step + 11;
    const demo::Sequences samples = model.generate(demo::PromptSet(ask).view(), demo::kAnswerLen, o);
    for (std::size_t n = 0; n < ask.size(); ++n)
      reward[n] = demo::is_correct(ask[n], samples.view().sequence(n).subspan(demo::kPromptLen)) ? 1.0f : 0.0f;
    dftune::score_for_backward(model, samples.view(), std::span<float>(logp));
    const dftune::SampleScores<float> ss{.logp = logp, .reward = reward, .len = len, .group_size = k};
    const dftune::ScoreResult<float> r = obj == Obj::rwr         ? dftune::rwr_loss(ss, cli.rwr)
                                         : obj == Obj::best_of_n ? dftune::best_of_n_loss(ss)
                                                                 : dftune::rloo_loss(ss);
    apply(model, rule, schedule, step, samples.view(), r.grad);
    const double mr = mean(reward);
    double var = 0;
    for (float x : reward) var += (x - mr) * (x - mr) / static_cast<double>(reward.size());
    log.add("loss", r.loss);
    log.add("grad_norm", rule.last_grad_norm());
    log.add("logps/samples", mean(logp));
    log.add("reward", mr);  // GRPO's and RLOO's names in TRL
    log.add("reward_std", std::sqrt(var));
    return r.loss;
  };
  return demo::finetune_loop(model, label(obj), lr, sd.train, validation, test, s, seed, progress, step_fn);
}

struct Row {
  Obj obj;
  double lr;
  std::vector<const demo::RunResult*> runs;
  demo::Stat over(double (*f)(const demo::RunResult&)) const {
    std::vector<double> x;
    for (const auto* r : runs) x.push_back(f(*r));
    return demo::stat(x);
  }
  demo::Stat acc() const { return over([](const demo::RunResult& r) { return r.test.accuracy; }); }
  demo::Stat pos() const { return over([](const demo::RunResult& r) { return r.test.pos_logp; }); }
  demo::Stat neg() const { return over([](const demo::RunResult& r) { return r.test.neg_logp; }); }
  demo::Stat val() const { return over([](const demo::RunResult& r) { return r.validation.accuracy; }); }
  demo::Stat val_pos() const { return over([](const demo::RunResult& r) { return r.validation.pos_logp; }); }
  demo::Stat ms() const { return over([](const demo::RunResult& r) { return r.ms_per_step; }); }
};

void print_header(std::FILE* f) {
  std::fprintf(f, "%-8s %8s  %-15s %-17s %-17s %-15s %s\n", "method", "lr", "test accuracy", "test log π(pos)", "test log π(neg)",
               "val accuracy", "ms/step");
}
void print_row(std::FILE* f, const Row& r, bool selected) {
  std::fprintf(f, "%-8s %7.0e%s  %-15s %-17s %-17s %-15s %s\n", label(r.obj), r.lr, selected ? "*" : " ", demo::pm(r.acc(), 3).c_str(),
               demo::pm(r.pos(), 3).c_str(), demo::pm(r.neg(), 2).c_str(), demo::pm(r.val(), 3).c_str(), demo::pm(r.ms(), 1).c_str());
}


// Every option a (method, lr) row was run with, for results.jsonl: the shared settings, then the
// objective's own.
dftune::JsonRecord row_json(const Row& r, bool selected, const Cli& cli) {
  const demo::Settings& s = cli.settings;
  dftune::JsonRecord j;
  j.add("method", label(r.obj)).add("lr", r.lr).add("selected", selected).add("seeds", r.runs.size());
  j.add("test_acc_mean", r.acc().mean).add("test_acc_std", r.acc().std).add("test_pos_logp_mean", r.pos().mean)
      .add("test_pos_logp_std", r.pos().std).add("test_neg_logp_mean", r.neg().mean).add("test_neg_logp_std", r.neg().std)
      .add("val_acc_mean", r.val().mean).add("val_acc_std", r.val().std).add("ms_per_step_mean", r.ms().mean)
      .add("ms_per_step_std", r.ms().std);
  j.add("steps", s.steps).add("batch", s.batch).add("max_grad_norm", s.max_grad_norm).add("train_prompts", s.train_prompts);
  std::ostringstream est;
  est << s.estimator;
  switch (r.obj) {
    case Obj::dft:
    case Obj::dft2: {
      const dftune::DftOptions o = demo::dft_options(s, r.obj == Obj::dft2);
      j.add("m", s.negatives).add("fresh_negatives", s.fresh_negatives).add("tau", o.tau).add("gamma", o.gamma)
          .add("estimator", est.str()).add("log_u0", o.log_u0);
      if (r.obj == Obj::dft2) j.add("eps", o.eps);
      break;
    }
    case Obj::dpo: j.add("m", s.negatives).add("fresh_negatives", s.fresh_negatives).add("beta", cli.dpo.beta); break;
    case Obj::ipo: j.add("m", s.negatives).add("fresh_negatives", s.fresh_negatives).add("beta", cli.ipo.beta); break;
    case Obj::simpo:
      j.add("m", s.negatives).add("fresh_negatives", s.fresh_negatives).add("beta", cli.simpo.beta).add("gamma", cli.simpo.gamma);
      break;
    case Obj::orpo: j.add("m", s.negatives).add("fresh_negatives", s.fresh_negatives).add("lambda", cli.orpo.lambda); break;
    case Obj::dynft: j.add("reduction", reduction_name(cli.dynft.reduction)); break;
    case Obj::rwr: j.add("k", cli.k).add("eta", cli.rwr.eta); break;
    case Obj::best_of_n:
    case Obj::rloo: j.add("k", cli.k); break;
    case Obj::sft: break;
  }
  return j;
}

}  // namespace

int main(int argc, char** argv) try {
  const Cli cli = parse(argc, argv);
  const demo::Settings& s = cli.settings;
  const demo::Progress progress;
  std::filesystem::create_directories(cli.out);
  const std::filesystem::path out(cli.out);

  // The demo's base model (also π_ref), splits, evaluation sets and per-seed negatives.
  demo::Model base = cli.base.empty() ? demo::pretrain(s, progress) : dftune::load_weights<float>(cli.base);
  if (!(base.config() == s.model)) flags.bad("--base", "the file's model configuration differs from the demo's");
  dftune::save_weights((out / "base.bin").string(), base);
  const auto train = demo::draw(demo::Split::finetune, s.train_prompts, s.base_seed + 101);
  demo::EvalSet validation = demo::make_eval_set(base, demo::draw(demo::Split::validation, s.eval_prompts, s.base_seed + 202), s, 7001);
  demo::EvalSet test = demo::make_eval_set(base, demo::draw(demo::Split::test, s.eval_prompts, s.base_seed + 303), s, 7002);
  const demo::Metrics base_test = demo::evaluate(base, test);
  std::vector<std::uint64_t> seeds;
  std::vector<SeedData> data;
  for (std::size_t k = 0; k < cli.seeds; ++k) {
    seeds.push_back(k + 1);
    SeedData d{.train = demo::make_train_data(base, train, s, 9000 + k + 1), .ref_pos_logp = {}};
    d.ref_pos_logp.resize(d.train.positives.size());
    base.sequence_logp(d.train.positives.view(), d.ref_pos_logp);
    data.push_back(std::move(d));
  }

  // Every (method, lr, seed); on-policy methods first (the longest), the two cores shared.
  struct Job {
    std::size_t seed_index;
    Obj obj;
    double lr;
  };
  std::vector<Job> jobs;
  for (int pass = 0; pass < 2; ++pass)
    for (Obj o : cli.methods)
      if (on_policy(o) == (pass == 0))
        for (double lr : cli.grid(o))
          for (std::size_t k = 0; k < seeds.size(); ++k) jobs.push_back({k, o, lr});
  std::vector<demo::RunResult> runs(jobs.size());
  const auto nj = static_cast<std::ptrdiff_t>(jobs.size());
  DFTUNE_OMP(parallel for schedule(dynamic, 1))
  for (std::ptrdiff_t j = 0; j < nj; ++j) {
    const Job& job = jobs[static_cast<std::size_t>(j)];
    runs[static_cast<std::size_t>(j)] =
        run(base, job.obj, job.lr, data[job.seed_index], validation, test, cli, seeds[job.seed_index], progress);
  }

  // Cells and the validation-selected lr per method (best mean val accuracy; ties: val log π(pos)).
  std::vector<Row> rows;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.obj == jobs[j].obj && r.lr == jobs[j].lr; });
    if (it == rows.end()) {
      rows.push_back({jobs[j].obj, jobs[j].lr, {}});
      it = rows.end() - 1;
    }
    it->runs.push_back(&runs[j]);
  }
  std::map<Obj, const Row*> chosen;
  for (const Row& r : rows) {
    const Row*& b = chosen[r.obj];
    if (!b || r.val().mean > b->val().mean || (r.val().mean == b->val().mean && r.val_pos().mean > b->val_pos().mean)) b = &r;
  }
  std::vector<double> all_lrs;  // the union of the grids, ascending
  for (const Row& r : rows)
    if (std::find(all_lrs.begin(), all_lrs.end(), r.lr) == all_lrs.end()) all_lrs.push_back(r.lr);
  std::sort(all_lrs.begin(), all_lrs.end());

  std::printf("Every objective from the same base — tiny causal LM, three-digit addition (examples/demo's task)\n");
  std::printf("%zu seeds (mean ± std), %zu steps x %zu prompts, AdamW + cosine (10%% warm-up), lr grid", seeds.size(), s.steps, s.batch);
  for (double lr : cli.lr_grid) std::printf(" %.0e", lr);
  for (const auto& [o, grid] : cli.lr_grid_of) {
    std::printf(", %s", label(o));
    for (double lr : grid) std::printf(" %.0e", lr);
  }
  std::printf(" (picked on validation)\noffline: m = %zu base negatives per prompt (T %.1f, right answers %s); on-policy: k = %zu "
              "samples per prompt per step from the current model, reward = exact match\n",
              s.negatives, s.sampling.temperature, s.keep_right_negatives ? "kept" : "redrawn", cli.k);
  std::ostringstream est;
  est << s.estimator;
  std::printf("options: DFT tau %g gamma %g, DFT2 tau %g gamma %g, estimator %s; DPO beta %g; IPO beta %g; SimPO beta %g gamma %g; "
              "ORPO lambda %g; RWR eta %g; DynFT %s\n",
              s.tau_dft, s.gamma_dft, s.tau_dft2, s.gamma_dft2, est.str().c_str(), cli.dpo.beta, cli.ipo.beta, cli.simpo.beta,
              cli.simpo.gamma, cli.orpo.lambda, cli.rwr.eta, reduction_name(cli.dynft.reduction));
  demo::print_recipe(stdout, s);
  std::printf("base model: test accuracy %.3f, log π(pos) %.3f, log π(neg) %.2f\n\n", base_test.accuracy, base_test.pos_logp,
              base_test.neg_logp);
  std::printf("Each method at its validation-selected lr (neg = the base model's wrong samples on test; ms/step: %s):\n",
              "training step incl. on-policy sampling, runs sharing the cores");
  print_header(stdout);
  for (Obj o : cli.methods) print_row(stdout, *chosen.at(o), true);
  if (rows.size() > cli.methods.size()) {
    std::printf("\nEvery learning rate of the grid (same-lr rows, a diagnostic; * = selected):\n");
    print_header(stdout);
    for (double lr : all_lrs)
      for (const Row& r : rows)
        if (r.lr == lr) print_row(stdout, r, chosen.at(r.obj) == &r);
  }

  // CSV, JSONL, JSON, the accuracy curves (means over seeds at the selected lr) and the plots.
  {
    std::ofstream f(out / "results.csv");
    f << "method,lr,selected,seeds,test_acc_mean,test_acc_std,test_pos_logp_mean,test_pos_logp_std,test_neg_logp_mean,"
         "test_neg_logp_std,val_acc_mean,val_acc_std,ms_per_step_mean,ms_per_step_std\n";
    for (const Row& r : rows)
      f << label(r.obj) << ',' << r.lr << ',' << (chosen.at(r.obj) == &r) << ',' << r.runs.size() << ',' << r.acc().mean << ','
        << r.acc().std << ',' << r.pos().mean << ',' << r.pos().std << ',' << r.neg().mean << ',' << r.neg().std << ','
        << r.val().mean << ',' << r.val().std << ',' << r.ms().mean << ',' << r.ms().std << '\n';
  }
  {
    std::ofstream f(out / "results.jsonl");
    for (const Row& r : rows) f << row_json(r, chosen.at(r.obj) == &r, cli).str() << '\n';
  }
  {
    std::ofstream f(out / "results.json");
    dftune::JsonRecord options;
    options.add("k", cli.k).add("dpo_beta", cli.dpo.beta).add("ipo_beta", cli.ipo.beta).add("simpo_beta", cli.simpo.beta)
        .add("simpo_gamma", cli.simpo.gamma).add("orpo_lambda", cli.orpo.lambda).add("rwr_eta", cli.rwr.eta)
        .add("dynft_reduction", reduction_name(cli.dynft.reduction));
    f << "{\n  \"settings\": " << demo::settings_json(s).str() << ",\n  \"options\": " << options.str() << ",\n  \"lr_grid\": [";
    for (std::size_t i = 0; i < cli.lr_grid.size(); ++i) f << (i ? ", " : "") << cli.lr_grid[i];
    f << "],\n  \"seeds\": " << seeds.size() << ",\n  \"wall_seconds\": " << progress.elapsed() << ",\n  \"base_test\": ";
    demo::write_metrics_json(f, base_test);
    f << ",\n  \"summary\": [\n";
    for (std::size_t i = 0; i < rows.size(); ++i)
      f << "    " << row_json(rows[i], chosen.at(rows[i].obj) == &rows[i], cli).str() << (i + 1 < rows.size() ? "," : "") << "\n";
    f << "  ]\n}\n";
  }
  {
    std::ofstream f(out / "curves.dat");
    f << "# test accuracy (greedy exact match) vs step, mean over seeds at each method's selected lr\nstep";
    for (Obj o : cli.methods) {
      char t[48];
      std::snprintf(t, sizeof t, " %s(%.0e)", label(o), chosen.at(o)->lr);
      f << t;
    }
    f << '\n';
    const std::size_t points = chosen.at(cli.methods.front())->runs.front()->curve.size();
    for (std::size_t p = 0; p < points; ++p) {
      f << chosen.at(cli.methods.front())->runs.front()->curve[p].step;
      for (Obj o : cli.methods) {
        std::vector<double> x;
        for (const auto* r : chosen.at(o)->runs) x.push_back(r->curve[p].test.accuracy);
        f << ' ' << demo::stat(x).mean;
      }
      f << '\n';
    }
  }
  demo::write_jsonl((out / "metrics.jsonl").string(), runs, [&](std::size_t k) { return std::string(label(jobs[k].obj)); });
  std::vector<demo::MetricsBlock> blocks;
  for (Obj o : cli.methods) {
    char t[48];
    std::snprintf(t, sizeof t, "%s (lr %.0e)", label(o), chosen.at(o)->lr);
    blocks.push_back({.title = t, .runs = chosen.at(o)->runs});
  }
  demo::write_metrics_dat((out / "metrics.dat").string(), blocks);
  const std::string plot = "gnuplot -e \"datafile='" + (out / "curves.dat").string() + "'; outfile='" + (out / "accuracy.png").string() +
                           "'\" '" + cli.plot_script + "' 2>/dev/null";
  const bool plotted = std::filesystem::exists(cli.plot_script) && std::system(plot.c_str()) == 0;
  const bool plotted_metrics =
      demo::plot_metrics((std::filesystem::path(cli.plot_script).parent_path() / "plot_metrics.gp").string(), out);
  std::printf("\nwrote %s/{results.csv,results.jsonl,results.json,curves.dat%s,metrics.jsonl,metrics.dat%s} in %.1f s\n",
              cli.out.c_str(), plotted ? ",accuracy.png" : "", plotted_metrics ? ",metrics.png" : "", progress.elapsed());
  if (!plotted) progress.note("no plot: gnuplot or " + cli.plot_script + " not found");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "compare: %s\n", e.what());
  return 1;
}
