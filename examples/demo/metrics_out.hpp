#pragma once
// The per-step metrics of the fine-tuning runs (StepLog, pipeline.hpp) on disk:
//   metrics.jsonl  one JSON object per step of every run: method, lr (the grid's), seed, then the
//                  step's values under TRL's names where TRL has one (docs/math.md, "Metrics");
//   metrics.dat    per method at its selected lr, the mean over seeds of each value at each step,
//                  one gnuplot block per method (NaN where a method has no such value), drawn by
//                  scripts/plot_metrics.gp into metrics.png.
#include "pipeline.hpp"

#include <dftune/metrics/jsonl.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace demo {

// The columns of metrics.dat after the step, in the order scripts/plot_metrics.gp reads them.
inline const std::vector<std::string>& metric_columns() {
  static const std::vector<std::string> c{"loss",           "grad_norm",       "logps/chosen",   "logps/rejected",
                                          "dft/log_u_mean", "dft/log_u_min",   "dft/log_u_max",  "dft/ess",
                                          "dft/max_weight", "dft/weight_sum",  "rewards/chosen", "rewards/rejected",
                                          "rewards/margins", "rewards/accuracies", "reward",     "dynft/token_prob"};
  return c;
}

// label(k): the method name of runs[k].
inline void write_jsonl(const std::string& path, const std::vector<RunResult>& runs,
                        const std::function<std::string(std::size_t)>& label) {
  std::ofstream f(path);
  for (std::size_t k = 0; k < runs.size(); ++k)
    for (const StepLog& log : runs[k].log) {
      dftune::JsonRecord rec;
      rec.add("method", label(k)).add("lr", runs[k].lr).add("seed", runs[k].seed);
      for (const auto& [name, v] : log.values) {
        if (name == "step") rec.add(name, static_cast<std::size_t>(v));
        else rec.add(name, v);
      }
      f << rec.str() << '\n';
    }
}

struct MetricsBlock {
  std::string title;                     // legend entry, e.g. "DFT (lr 1e-04)"
  std::vector<const RunResult*> runs;    // the seeds of one (method, lr)
};

inline void write_metrics_dat(const std::string& path, const std::vector<MetricsBlock>& blocks) {
  std::ofstream f(path);
  f << "# per-step metrics, mean over seeds at each method's selected lr; one block per method "
       "(scripts/plot_metrics.gp)\n";
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    if (b) f << "\n\n";
    f << '"' << blocks[b].title << "\" ";
    for (const std::string& c : metric_columns()) f << c << ' ';
    f << '\n';
    const std::size_t steps = blocks[b].runs.front()->log.size();
    for (std::size_t t = 0; t < steps; ++t) {
      f << t + 1;
      for (const std::string& c : metric_columns()) {
        double sum = 0;
        for (const RunResult* r : blocks[b].runs) sum += r->log[t].get(c);
        const double mean = sum / static_cast<double>(blocks[b].runs.size());
        if (std::isfinite(mean)) f << ' ' << mean;
        else f << " NaN";
      }
      f << '\n';
    }
  }
}

// gnuplot `script` on out/metrics.dat into out/metrics.png; false if it could not run.
inline bool plot_metrics(const std::string& script, const std::filesystem::path& out) {
  if (!std::filesystem::exists(script)) return false;
  const std::string cmd = "gnuplot -e \"datafile='" + (out / "metrics.dat").string() + "'; outfile='" +
                          (out / "metrics.png").string() + "'\" '" + script + "' 2>/dev/null";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace demo
