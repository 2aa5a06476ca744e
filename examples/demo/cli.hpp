#pragma once
// Command-line helpers shared by the demo and the comparison harness: every bad flag exits with
// status 2 and a message that names the flag, the value and what was expected.
//   - the flags of demo::Settings (task, budget, DFT/DFT2 options, recipe) are parsed here once;
//   - "--config FILE" stands for the flags written in FILE, one per line ("name value",
//     "name = value" or a bare "name" for a switch; names without the leading "--"; '#' starts a
//     comment), so a benchmark variant can live in a file;
//   - "--recipe official|dftune" is applied first wherever it stands, and every other flag
//     overrides it (e.g. "--recipe official --max-grad-norm inf" is the recipe without clipping).
#include "pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace demo {

struct Flags {
  const char* program;

  [[noreturn]] void bad(const std::string& flag, const std::string& why) const {
    std::fprintf(stderr, "%s: %s: %s (see --help)\n", program, flag.c_str(), why.c_str());
    std::exit(2);
  }
  std::size_t count(const std::string& flag, const std::string& v) const {
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || x < 1) bad(flag, "got '" + v + "', expected an integer >= 1");
    return static_cast<std::size_t>(x);
  }
  double real(const std::string& flag, const std::string& v) const {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !std::isfinite(x)) bad(flag, "got '" + v + "', expected a number");
    return x;
  }
  // A comma-separated list of learning rates, each > 0.
  std::vector<double> rates(const std::string& flag, const std::string& v) const {
    std::vector<double> out;
    for (const std::string& x : split(v)) {
      const double lr = real(flag, x);
      if (!(lr > 0)) bad(flag, "got '" + x + "', expected a rate > 0");
      out.push_back(lr);
    }
    return out;
  }
  static std::vector<std::string> split(const std::string& v) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= v.size()) {
      const std::size_t comma = std::min(v.find(',', start), v.size());
      out.push_back(v.substr(start, comma - start));
      start = comma + 1;
    }
    return out;
  }

  // argv[1..] with every "--config FILE" replaced by the flags FILE holds (see the top of this file).
  std::vector<std::string> expand(int argc, char** argv) const {
    std::vector<std::string> out;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a != "--config") {
        out.push_back(a);
        continue;
      }
      if (i + 1 >= argc) bad(a, "missing value (a file of flags)");
      const std::string path = argv[++i];
      std::ifstream f(path);
      if (!f) bad(a, "cannot read '" + path + "'");
      std::string line;
      const char* blank = " \t\r";
      auto trim = [&](const std::string& x) {
        const std::size_t b = x.find_first_not_of(blank);
        return b == std::string::npos ? std::string() : x.substr(b, x.find_last_not_of(blank) - b + 1);
      };
      for (std::size_t n = 1; std::getline(f, line); ++n) {
        line = trim(line.substr(0, line.find('#')));
        if (line.empty()) continue;
        // name, then an optional '=', then the value (which may itself hold '=': "lr-grid DFT=1e-4")
        const std::size_t end = std::min(line.find_first_of(blank), line.find('='));
        std::string name = line.substr(0, end), value = trim(end == std::string::npos ? "" : line.substr(end));
        if (value.starts_with("=")) value = trim(value.substr(1));
        if (name.starts_with("--")) name = name.substr(2);
        if (name.empty()) bad(a, path + ":" + std::to_string(n) + ": expected 'name value', got no name");
        if (value.find_first_of(blank) != std::string::npos)
          bad(a, path + ":" + std::to_string(n) + ": expected 'name value', got more words");
        out.push_back("--" + name);
        if (!value.empty()) out.push_back(value);
      }
    }
    return out;
  }
};

// The shared flags' help, with the defaults of `s`.
inline void settings_usage(std::FILE* f, const Settings& s) {
  std::fprintf(f,
               "  --recipe R           dftune (default) or official: constant init log u = 0, DFT2 eps 0, fresh\n"
               "                       negatives every epoch, gradient clipping to norm 1 (applied first;\n"
               "                       other flags override it)\n"
               "  --m N                negatives per training prompt                   [%zu]\n"
               "  --tau-dft X          DFT temperature τ                               [%g]\n"
               "  --gamma-dft X        DFT moving-average rate γ                       [%g]\n"
               "  --tau-dft2 X         DFT2 temperature τ                              [%g]\n"
               "  --gamma-dft2 X       DFT2 moving-average rate γ                      [%g]\n"
               "  --dft2-eps X         ε of DFT2's |y| + ε                             [%g]\n"
               "  --estimator E        DFT/DFT2 estimator: first_visit, constant or fixed [first_visit]\n"
               "  --log-u0 X           log u of an unseen example (constant) or always (fixed) [%g]\n"
               "  --fresh-negatives    new negatives from the base model every epoch (default: sampled once)\n"
               "  --max-grad-norm X    clip gradients to this global L2 norm (inf: no clipping) [inf]\n"
               "  --keep-right-negatives  keep sampled negatives equal to the positive (default: redraw them)\n"
               "  --balanced-sampler   under mpirun: each rank draws batch/P of its own prompts per step (balanced,\n"
               "                       but the batches then depend on P; default: the same batches at every P)\n"
               "  --steps N            fine-tuning steps (every method)                [%zu]\n"
               "  --batch N            prompts per fine-tuning step                    [%zu]\n"
               "  --pretrain-steps N   pre-training steps of the base model            [%zu]\n"
               "  --drop-carry P       share of the pre-training corpus without carries [%g]\n"
               "  --train-prompts N    fine-tuning prompts                             [%zu]\n"
               "  --eval-prompts N     validation and test prompts (each)              [%zu]\n"
               "  --config FILE        more flags, one 'name value' per line ('#' comments)\n",
               s.negatives, s.tau_dft, s.gamma_dft, s.tau_dft2, s.gamma_dft2, s.eps_dft2, s.log_u0, s.steps, s.batch,
               s.pretrain_steps, s.drop_carry, s.train_prompts, s.eval_prompts);
}

// Applies the --recipe of args, if any (the last one wins), to s.
inline void apply_recipe(const Flags& flags, const std::vector<std::string>& args, Settings& s) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] != "--recipe") continue;
    if (i + 1 >= args.size()) flags.bad(args[i], "missing value (official or dftune)");
    const std::string& v = args[i + 1];
    if (v == "official") apply(Recipe::official, s);
    else if (v == "dftune") apply(Recipe::dftune, s);
    else flags.bad("--recipe", "got '" + v + "', expected official or dftune");
  }
}

// Switches (flags without a value) among the shared ones.
inline bool settings_switch(const std::string& a, Settings& s) {
  if (a == "--keep-right-negatives") s.keep_right_negatives = true;
  else if (a == "--balanced-sampler") s.balanced_sampler = true;
  else if (a == "--fresh-negatives") s.fresh_negatives = true;
  else return false;
  return true;
}

// One shared flag with its value; false if `a` is not one of them (--recipe is consumed here and
// applied by apply_recipe).
inline bool settings_flag(const Flags& flags, const std::string& a, const std::string& v, Settings& s) {
  if (a == "--recipe") return true;
  if (a == "--m") s.negatives = flags.count(a, v);
  else if (a == "--tau-dft") s.tau_dft = flags.real(a, v);
  else if (a == "--gamma-dft") s.gamma_dft = flags.real(a, v);
  else if (a == "--tau-dft2") s.tau_dft2 = flags.real(a, v);
  else if (a == "--gamma-dft2") s.gamma_dft2 = flags.real(a, v);
  else if (a == "--dft2-eps") s.eps_dft2 = flags.real(a, v);
  else if (a == "--log-u0") s.log_u0 = flags.real(a, v);
  else if (a == "--steps") s.steps = flags.count(a, v);
  else if (a == "--batch") s.batch = flags.count(a, v);
  else if (a == "--pretrain-steps") s.pretrain_steps = flags.count(a, v);
  else if (a == "--drop-carry") s.drop_carry = flags.real(a, v);
  else if (a == "--train-prompts") s.train_prompts = flags.count(a, v);
  else if (a == "--eval-prompts") s.eval_prompts = flags.count(a, v);
  else if (a == "--max-grad-norm") {
    s.max_grad_norm = v == "inf" ? std::numeric_limits<double>::infinity() : flags.real(a, v);
    if (!(s.max_grad_norm > 0)) flags.bad(a, "got '" + v + "', expected a norm > 0 or inf");
  } else if (a == "--estimator") {
    if (v == "first_visit") s.estimator = dftune::EstimatorInit::first_visit;
    else if (v == "constant") s.estimator = dftune::EstimatorInit::constant;
    else if (v == "fixed") s.estimator = dftune::EstimatorInit::fixed;
    else flags.bad(a, "got '" + v + "', expected first_visit, constant or fixed");
  } else return false;
  return true;
}

// The checks of a complete Settings (after every flag); dftune's own validation names the option.
inline void check_settings(const Flags& flags, const Settings& s) {
  if (!(s.drop_carry >= 0 && s.drop_carry <= 1)) flags.bad("--drop-carry", "expected a share in [0, 1]");
  try {
    dftune::validate(dft_options(s, false));
    dftune::validate(dft_options(s, true));
  } catch (const dftune::error& e) {
    flags.bad("DFT/DFT2 options", e.what());
  }
}

}  // namespace demo
