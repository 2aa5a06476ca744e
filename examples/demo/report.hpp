#pragma once
// Aggregation and output of the demo: mean ± std over seeds, learning-rate selection on the
// validation split, the printed table, CSV, JSON and the learning-curve data for gnuplot.
#include "pipeline.hpp"

#include <dftune/metrics/jsonl.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace demo {

struct Stat {
  double mean = 0, std = 0;  // std: sample standard deviation over seeds (0 for one seed)
};

inline Stat stat(const std::vector<double>& x) {
  Stat s;
  if (x.empty()) return s;
  for (double v : x) s.mean += v / static_cast<double>(x.size());
  if (x.size() > 1) {
    for (double v : x) s.std += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(s.std / static_cast<double>(x.size() - 1));
  }
  return s;
}

// All seeds of one (method, lr) cell.
struct Cell {
  Method method = Method::sft;
  double lr = 0;
  std::vector<const RunResult*> runs;
  template <class F>
  Stat over_seeds(F metric) const {
    std::vector<double> x;
    for (const RunResult* r : runs) x.push_back(metric(*r));
    return stat(x);
  }
  Stat test_acc() const { return over_seeds([](const RunResult& r) { return r.test.accuracy; }); }
  Stat test_pos() const { return over_seeds([](const RunResult& r) { return r.test.pos_logp; }); }
  Stat test_neg() const { return over_seeds([](const RunResult& r) { return r.test.neg_logp; }); }
  Stat val_acc() const { return over_seeds([](const RunResult& r) { return r.validation.accuracy; }); }
  Stat val_pos() const { return over_seeds([](const RunResult& r) { return r.validation.pos_logp; }); }
};

inline std::vector<Cell> cells(const std::vector<RunResult>& runs) {
  std::vector<Cell> out;
  for (const RunResult& r : runs) {
    auto it = std::find_if(out.begin(), out.end(), [&](const Cell& c) { return c.method == r.method && c.lr == r.lr; });
    if (it == out.end()) {
      out.push_back({.method = r.method, .lr = r.lr, .runs = {}});
      it = out.end() - 1;
    }
    it->runs.push_back(&r);
  }
  return out;
}

// Per method, the learning rate with the best mean validation accuracy (ties: best mean
// validation log-likelihood of the positives). The test split plays no part.
inline std::map<Method, const Cell*> select(const std::vector<Cell>& all) {
  std::map<Method, const Cell*> best;
  for (const Cell& c : all) {
    auto& b = best[c.method];
    if (!b || c.val_acc().mean > b->val_acc().mean ||
        (c.val_acc().mean == b->val_acc().mean && c.val_pos().mean > b->val_pos().mean))
      b = &c;
  }
  return best;
}

// One line naming what differs from dftune's defaults in the recipe's options (nothing when none
// does, so the default output stays as it was); the estimator is on the settings line already.
inline void print_recipe(std::FILE* f, const Settings& s) {
  const Settings d;
  std::string parts;
  auto part = [&](const std::string& p) { parts += (parts.empty() ? "" : ", ") + p; };
  char buf[96];
  if (s.log_u0 != d.log_u0) {
    std::snprintf(buf, sizeof buf, "log u0 = %g", s.log_u0);
    part(buf);
  }
  if (s.eps_dft2 != d.eps_dft2) {
    std::snprintf(buf, sizeof buf, "DFT2 eps = %g", s.eps_dft2);
    part(buf);
  }
  if (s.fresh_negatives) part("fresh negatives from the base model every epoch");
  if (s.max_grad_norm != d.max_grad_norm) {
    std::snprintf(buf, sizeof buf, "gradients clipped to global norm %g", s.max_grad_norm);
    part(buf);
  }
  if (!parts.empty()) std::fprintf(f, "recipe: %s\n", parts.c_str());
}

inline std::string pm(Stat s, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f ± %.*f", digits, s.mean, digits, s.std);
  return buf;
}

inline void print_row(std::FILE* f, const Cell& c, bool selected) {
  std::fprintf(f, "%-5s %8.0e%s  %-17s %-17s %-17s %-17s\n", name(c.method), c.lr, selected ? "*" : " ", pm(c.test_acc(), 3).c_str(),
               pm(c.test_pos(), 3).c_str(), pm(c.test_neg(), 2).c_str(), pm(c.val_acc(), 3).c_str());
}

inline void print_header(std::FILE* f) {
  std::fprintf(f, "%-5s %9s  %-16s %-16s %-16s %-16s\n", "", "lr", "test accuracy", "test log π(pos)", "test log π(neg)", "val accuracy");
}

inline void write_csv(const std::string& path, const std::vector<Cell>& all, const std::map<Method, const Cell*>& chosen) {
  std::ofstream f(path);
  f << "method,lr,selected,seeds,test_acc_mean,test_acc_std,test_pos_logp_mean,test_pos_logp_std,test_neg_logp_mean,"
       "test_neg_logp_std,val_acc_mean,val_acc_std\n";
  for (const Cell& c : all)
    f << name(c.method) << ',' << c.lr << ',' << (chosen.at(c.method) == &c ? 1 : 0) << ',' << c.runs.size() << ','
      << c.test_acc().mean << ',' << c.test_acc().std << ',' << c.test_pos().mean << ',' << c.test_pos().std << ','
      << c.test_neg().mean << ',' << c.test_neg().std << ',' << c.val_acc().mean << ',' << c.val_acc().std << '\n';
}

// Every setting of a run as one JSON object (max_grad_norm: null = no clipping).
inline dftune::JsonRecord settings_json(const Settings& s) {
  std::ostringstream est;
  est << s.estimator;
  dftune::JsonRecord r;
  r.add("drop_carry", s.drop_carry).add("pretrain_steps", s.pretrain_steps).add("steps", s.steps).add("batch", s.batch)
      .add("negatives", s.negatives).add("train_prompts", s.train_prompts).add("eval_prompts", s.eval_prompts)
      .add("tau_dft", s.tau_dft).add("gamma_dft", s.gamma_dft).add("tau_dft2", s.tau_dft2).add("gamma_dft2", s.gamma_dft2)
      .add("temperature", s.sampling.temperature).add("top_k", s.sampling.top_k).add("top_p", s.sampling.top_p)
      .add("d_model", s.model.d_model).add("n_layers", s.model.n_layers).add("estimator", est.str()).add("log_u0", s.log_u0)
      .add("eps_dft2", s.eps_dft2).add("fresh_negatives", s.fresh_negatives).add("max_grad_norm", s.max_grad_norm)
      .add("keep_right_negatives", s.keep_right_negatives).add("redraws", s.redraws);
  return r;
}

inline void write_metrics_json(std::ostream& f, const Metrics& m) {
  f << "{\"accuracy\": " << m.accuracy << ", \"pos_logp\": " << m.pos_logp << ", \"neg_logp\": " << m.neg_logp << "}";
}

inline void write_json(const std::string& path, const Settings& s, const std::vector<std::uint64_t>& seeds,
                       const std::vector<double>& grid, const Metrics& base_test, const std::vector<RunResult>& runs,
                       const std::vector<Cell>& all, const std::map<Method, const Cell*>& chosen, double seconds) {
  std::ofstream f(path);
  f.precision(6);
  f << "{\n  \"settings\": " << settings_json(s).str() << ",\n";
  f << "  \"seeds\": [";
  for (std::size_t i = 0; i < seeds.size(); ++i) f << (i ? ", " : "") << seeds[i];
  f << "],\n  \"lr_grid\": [";
  for (std::size_t i = 0; i < grid.size(); ++i) f << (i ? ", " : "") << grid[i];
  f << "],\n  \"wall_seconds\": " << seconds << ",\n  \"base_test\": ";
  write_metrics_json(f, base_test);
  f << ",\n  \"summary\": [\n";
  for (std::size_t i = 0; i < all.size(); ++i) {
    const Cell& c = all[i];
    f << "    {\"method\": \"" << name(c.method) << "\", \"lr\": " << c.lr << ", \"selected\": "
      << (chosen.at(c.method) == &c ? "true" : "false") << ", \"test_acc\": [" << c.test_acc().mean << ", " << c.test_acc().std
      << "], \"test_pos_logp\": [" << c.test_pos().mean << ", " << c.test_pos().std << "], \"test_neg_logp\": ["
      << c.test_neg().mean << ", " << c.test_neg().std << "], \"val_acc\": [" << c.val_acc().mean << ", " << c.val_acc().std
      << "]}" << (i + 1 < all.size() ? "," : "") << "\n";
  }
  f << "  ],\n  \"runs\": [\n";
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunResult& r = runs[i];
    f << "    {\"method\": \"" << name(r.method) << "\", \"lr\": " << r.lr << ", \"seed\": " << r.seed << ", \"first_loss\": "
      << r.first_loss << ", \"last_loss\": " << r.last_loss << ", \"ms_per_step\": " << r.ms_per_step << ", \"validation\": ";
    write_metrics_json(f, r.validation);
    f << ", \"test\": ";
    write_metrics_json(f, r.test);
    f << "}" << (i + 1 < runs.size() ? "," : "") << "\n";
  }
  f << "  ]\n}\n";
}

// Every curve point of every run, one line each.
inline void write_curves_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ofstream f(path);
  f << "method,lr,seed,step,train_loss,test_acc,test_pos_logp,test_neg_logp\n";
  for (const RunResult& r : runs)
    for (const CurvePoint& p : r.curve)
      f << name(r.method) << ',' << r.lr << ',' << r.seed << ',' << p.step << ',' << p.loss << ',' << p.test.accuracy << ','
        << p.test.pos_logp << ',' << p.test.neg_logp << '\n';
}

// Mean over seeds of the selected runs, for scripts/plot_demo.gp:
//   step  acc_SFT acc_DFT acc_DFT2  nll_SFT nll_DFT nll_DFT2   (nll = −log π of the base's wrong samples)
inline void write_curves_dat(const std::string& path, const std::map<Method, const Cell*>& chosen) {
  std::ofstream f(path);
  f << "# step acc_SFT acc_DFT acc_DFT2 negnll_SFT negnll_DFT negnll_DFT2 (means over seeds, selected lr)\n";
  const Cell* c[3] = {chosen.at(Method::sft), chosen.at(Method::dft), chosen.at(Method::dft2)};
  const std::size_t points = c[0]->runs.front()->curve.size();
  for (std::size_t k = 0; k < points; ++k) {
    f << c[0]->runs.front()->curve[k].step;
    for (int which = 0; which < 2; ++which)
      for (const Cell* cell : c) {
        std::vector<double> x;
        for (const RunResult* r : cell->runs) x.push_back(which == 0 ? r->curve[k].test.accuracy : -r->curve[k].test.neg_logp);
        f << ' ' << stat(x).mean;
      }
    f << '\n';
  }
}

}  // namespace demo
