// SFT vs DFT vs DFT2 on a task with verifiable answers, end to end (docs/math.md, "Fair comparisons"):
// pre-train a tiny causal LM on three-digit additions where part of the corpus drops the carry,
// sample negatives from it, fine-tune with each method from the same base under the same budget,
// pick each method's learning rate on a validation split, and report held-out test results over
// seeds as a table, CSV, JSON and a learning-curve PNG, with TRL-named metrics at every step
// (metrics.jsonl, metrics.dat, metrics.png). `--recipe official` runs the reference trainer's
// recipe. Run with --help for the flags.
// Built with MPI (target dftune::mpi), `mpirun -np P demo …` runs every fine-tuning step
// data-parallel over P ranks (docs/distributed.md); rank 0 prints and writes the results.
#include "demo/cli.hpp"
#include "demo/metrics_out.hpp"
#include "demo/pipeline.hpp"
#include "demo/report.hpp"

#if defined(DFTUNE_DEMO_MPI)
#include <dftune/distributed/mpi.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace {

// Under MPI, main runs demo_main inside distributed::run_main (MPI_Init … MPI_Finalize, and an
// error on one rank ends every rank with its message instead of leaving the others waiting).
#if defined(DFTUNE_DEMO_MPI)
struct World {
  dftune::distributed::MpiCommunicator comm;
};
#else
struct World {
  dftune::distributed::Single comm;
};
#endif

struct Cli {
  demo::Settings settings;
  std::size_t seeds = 3;
  std::vector<double> lr_grid{1e-4, 3e-4, 1e-3, 3e-3};
  std::string out = "demo_out";
  std::string base;  // load the base model from here instead of pre-training it
  std::string plot_script = (std::filesystem::path(__FILE__).parent_path().parent_path() / "scripts" / "plot_demo.gp").string();
};

void usage(std::FILE* f) {
  const Cli d;
  std::fprintf(f,
               "usage: demo [flags]\n"
               "SFT vs DFT vs DFT2 fine-tuning of a tiny causal LM on three-digit addition.\n"
               "  --seeds N            fine-tuning seeds (negatives, batch order)      [%zu]\n"
               "  --lr-grid A,B,...    learning rates; each method's is picked on validation [1e-4,3e-4,1e-3,3e-3]\n",
               d.seeds);
  demo::settings_usage(f, d.settings);
  std::fprintf(f,
               "  --base FILE          load the base model (saved by a previous run as DIR/base.bin)\n"
               "  --out DIR            output directory                                [demo_out]\n"
               "  --plot-script PATH   gnuplot script for the learning curves          [scripts/plot_demo.gp]\n"
               "  --quick              smoke test: tiny budget, a few seconds\n"
               "  --help               this text\n"
               "Writes DIR/{results.csv,results.json,curves.csv,curves.dat,learning_curves.png} and the per-step\n"
               "metrics DIR/{metrics.jsonl,metrics.dat,metrics.png} (scripts/plot_metrics.gp).\n");
}

constexpr demo::Flags flags{"demo"};

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
      s.pretrain_steps = 200;
      s.steps = 20;
      s.train_prompts = 128;
      s.eval_prompts = 100;
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
    else if (a == "--out") c.out = v;
    else if (a == "--base") c.base = v;
    else if (a == "--plot-script") c.plot_script = v;
    else if (a == "--lr-grid") c.lr_grid = flags.rates(a, v);
    else flags.bad(a, "unknown flag");
  }
  demo::check_settings(flags, s);
  return c;
}

}  // namespace

static int demo_main(int argc, char** argv) {
  World world;
  const bool root = world.comm.rank() == 0;
  const Cli cli = parse(argc, argv);
  const demo::Settings& s = cli.settings;
  demo::Progress progress;
  progress.quiet = !root;
  if (root) std::filesystem::create_directories(cli.out);

  // 1–2. The base model, also π_ref (made on rank 0 and sent to every rank); data splits shared by every seed.
  demo::Model base = !root ? demo::Model(s.model) : cli.base.empty() ? demo::pretrain(s, progress) : dftune::load_weights<float>(cli.base);
  if (!(base.config() == s.model)) flags.bad("--base", "the file's model configuration differs from the demo's");
  dftune::distributed::broadcast_values(world.comm, base.parameters(), 0);
  if (root) dftune::save_weights((std::filesystem::path(cli.out) / "base.bin").string(), base);
  const auto train = demo::draw(demo::Split::finetune, s.train_prompts, s.base_seed + 101);
  demo::EvalSet validation = demo::make_eval_set(base, demo::draw(demo::Split::validation, s.eval_prompts, s.base_seed + 202), s, 7001);
  demo::EvalSet test = demo::make_eval_set(base, demo::draw(demo::Split::test, s.eval_prompts, s.base_seed + 303), s, 7002);
  const demo::Metrics base_test = demo::evaluate(base, test), base_val = demo::evaluate(base, validation);
  progress.note("base model: test accuracy " + std::to_string(base_test.accuracy) + ", validation accuracy " +
                std::to_string(base_val.accuracy));

  // 3. Negatives per seed, from the base, with log π_ref computed once.
  std::vector<std::uint64_t> seeds;
  std::vector<demo::TrainData> data;
  double negatives_correct = 0, shared_tokens = 0;
  for (std::size_t k = 0; k < cli.seeds; ++k) {
    seeds.push_back(k + 1);
    data.push_back(demo::make_train_data(base, train, s, 9000 + k + 1));
    negatives_correct += data.back().epochs.front().correct / static_cast<double>(cli.seeds);
    shared_tokens += data.back().epochs.front().shared_tokens / static_cast<double>(cli.seeds);
    progress.note("negatives for seed " + std::to_string(k + 1) + ": " + std::to_string(data.back().epochs.front().negatives.size()) +
                  " samples" + (s.fresh_negatives ? " per epoch, " + std::to_string(data.back().epochs.size()) + " epochs" : ""));
  }

  // 4. Every (seed, method, lr) from the same base; independent runs share the two cores, or, under
  //    mpirun, run one after the other, each data-parallel over the ranks.
  struct Job {
    std::size_t seed_index;
    demo::Method method;
    double lr;
  };
  std::vector<Job> jobs;
  for (demo::Method m : {demo::Method::dft, demo::Method::dft2, demo::Method::sft})  // longest first
    for (double lr : cli.lr_grid)
      for (std::size_t k = 0; k < seeds.size(); ++k) jobs.push_back({k, m, lr});
  std::vector<demo::RunResult> runs(jobs.size());
  const auto nj = static_cast<std::ptrdiff_t>(jobs.size());
  DFTUNE_OMP(parallel for schedule(dynamic, 1) if(world.comm.size() == 1))
  for (std::ptrdiff_t j = 0; j < nj; ++j) {
    const Job& job = jobs[static_cast<std::size_t>(j)];
    runs[static_cast<std::size_t>(j)] = demo::finetune(base, job.method, job.lr, data[job.seed_index], validation, test, s,
                                                       seeds[job.seed_index], progress, world.comm, &base_test);
  }
  if (!root) return 0;  // every rank holds the same results; rank 0 reports them

  // 5–6. Learning rate per method on validation; the table, CSV, JSON and curves.
  const auto all = demo::cells(runs);
  const auto chosen = demo::select(all);
  std::printf("SFT vs DFT vs DFT2 — tiny causal LM, three-digit addition, %zu%% of pre-training answers drop the carry\n",
              static_cast<std::size_t>(std::lround(100 * s.drop_carry)));
  std::ostringstream est;
  est << s.estimator;
  std::printf("%zu seeds (mean ± std), %zu steps x %zu prompts, AdamW + cosine, m = %zu negatives (T = %.1f, top-k %zu, top-p %.1f%s), "
              "DFT tau %.2g gamma %.2g, DFT2 tau %.2g gamma %.2g, estimator %s\n",
              seeds.size(), s.steps, s.batch, s.negatives, s.sampling.temperature, s.sampling.top_k, s.sampling.top_p,
              s.keep_right_negatives ? "" : ", right answers redrawn", s.tau_dft, s.gamma_dft, s.tau_dft2, s.gamma_dft2, est.str().c_str());
  demo::print_recipe(stdout, s);
  std::printf("base model: test accuracy %.3f, log π(pos) %.3f, log π(neg) %.2f\n", base_test.accuracy, base_test.pos_logp,
              base_test.neg_logp);
  const std::string why = s.keep_right_negatives ? "kept as sampled" : "no wrong one in " + std::to_string(s.redraws + 1) + " draws";
  std::printf("training negatives%s: %.0f%% are right answers (%s), %.0f%% of their tokens equal the positive's\n\n",
              s.fresh_negatives ? " (epoch 0)" : "", 100 * negatives_correct, why.c_str(), 100 * shared_tokens);
  std::printf("Each method at its learning rate chosen on validation (* = selected; neg = the base model's wrong samples):\n");
  demo::print_header(stdout);
  for (demo::Method m : {demo::Method::sft, demo::Method::dft, demo::Method::dft2}) demo::print_row(stdout, *chosen.at(m), true);
  // The verdict, computed rather than written: held-out accuracy against SFT, and where the
  // likelihood of the base model's wrong samples went.
  const demo::Cell& sft = *chosen.at(demo::Method::sft);
  std::printf("\nverdict (test, selected lr):");
  for (demo::Method m : {demo::Method::dft, demo::Method::dft2}) {
    const demo::Cell& c = *chosen.at(m);
    const double gap = c.test_acc().mean - sft.test_acc().mean;
    const double noise = std::hypot(c.test_acc().std, sft.test_acc().std);
    std::printf(" %s %s SFT by %+.3f accuracy (std of the difference ~%.3f);", demo::name(m),
                std::abs(gap) <= noise ? "ties" : gap > 0 ? "beats" : "trails", gap, noise);
  }
  std::printf("\n  log π(base's wrong samples): base %.2f -> SFT %.2f, DFT %.2f, DFT2 %.2f\n", base_test.neg_logp, sft.test_neg().mean,
              chosen.at(demo::Method::dft)->test_neg().mean, chosen.at(demo::Method::dft2)->test_neg().mean);
  if (cli.lr_grid.size() > 1) {
    std::printf("\nEvery learning rate of the grid (same-lr rows, a diagnostic):\n");
    demo::print_header(stdout);
    for (double lr : cli.lr_grid)
      for (const demo::Cell& c : all)
        if (c.lr == lr) demo::print_row(stdout, c, chosen.at(c.method) == &c);
  }
  const std::filesystem::path out(cli.out);
  demo::write_csv((out / "results.csv").string(), all, chosen);
  demo::write_json((out / "results.json").string(), s, seeds, cli.lr_grid, base_test, runs, all, chosen, progress.elapsed());
  demo::write_curves_csv((out / "curves.csv").string(), runs);
  demo::write_curves_dat((out / "curves.dat").string(), chosen);
  auto title = [&](demo::Method m) {
    char t[64];
    std::snprintf(t, sizeof t, "%s (lr %.0e)", demo::name(m), chosen.at(m)->lr);
    return std::string(t);
  };
  const std::string plot = "gnuplot -e \"datafile='" + (out / "curves.dat").string() + "'; outfile='" +
                           (out / "learning_curves.png").string() + "'; t_sft='" + title(demo::Method::sft) + "'; t_dft='" +
                           title(demo::Method::dft) + "'; t_dft2='" + title(demo::Method::dft2) + "'\" '" + cli.plot_script + "'";
  const bool plotted = std::filesystem::exists(cli.plot_script) && std::system(plot.c_str()) == 0;
  // Per-step metrics: every run (JSONL) and the means over seeds at each selected lr (gnuplot).
  demo::write_jsonl((out / "metrics.jsonl").string(), runs, [&](std::size_t k) { return std::string(demo::name(runs[k].method)); });
  std::vector<demo::MetricsBlock> blocks;
  for (demo::Method m : {demo::Method::sft, demo::Method::dft, demo::Method::dft2})
    blocks.push_back({.title = title(m), .runs = chosen.at(m)->runs});
  demo::write_metrics_dat((out / "metrics.dat").string(), blocks);
  const std::string metrics_script = (std::filesystem::path(cli.plot_script).parent_path() / "plot_metrics.gp").string();
  const bool plotted_metrics = demo::plot_metrics(metrics_script, out);
  std::printf("\nwrote %s/{results.csv,results.json,curves.csv,curves.dat%s,metrics.jsonl,metrics.dat%s} in %.1f s\n", cli.out.c_str(),
              plotted ? ",learning_curves.png" : "", plotted_metrics ? ",metrics.png" : "", progress.elapsed());
  if (!plotted) progress.note("no plot: gnuplot or " + cli.plot_script + " not found");
  return 0;
}

int main(int argc, char** argv) {
#if defined(DFTUNE_DEMO_MPI)
  return dftune::distributed::run_main(argc, argv, demo_main);
#else
  try {
    return demo_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());
    return 1;
  }
#endif
}
