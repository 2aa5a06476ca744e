// The didactic bandit of Tajwar et al. (arXiv 2404.14367, §4): does an objective with on-policy
// samples or a negative gradient move probability mass faster than maximum likelihood?
//
// 100 actions; π_ref is a histogram (100 equal bins on [−1, 1]) of tanh(x), x ~ Cauchy(−0.7, 0.4);
// R1(a) = exp(−((a−70)/10)²) peaks where π_ref has little mass, R2(a) = exp(−((a−20)/10)²) near its
// mode. Each step every context draws N = 10 actions — from π_ref once and for all (offline) or from
// the current policy (on-policy) — and each method turns them into d loss / d log π(a):
//   Best-of-N SFT, RWR, DPO, IPO, REINFORCE (batch-mean baseline), RLOO, and DFT with the best
//   sample as the positive and the other N−1 as negatives.
// Reported: the exact expected reward E_π[R] per step (mean ± std over seeds), the steps to reach
// 90 % of the optimum, a CSV and a PNG (gnuplot). No tuning on anything but this table itself.
#include <dftune/dftune.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace dftune;

namespace {

constexpr std::size_t kActions = 100, kSamples = 10;

struct Config {
  std::size_t contexts = 4, steps = 1000, seeds = 5;
  double lr = 0.05;
  std::string out = "out/bandit";
  bool plot = true;
};

std::vector<double> reference_log_probs() {
  std::mt19937_64 rng(2404'14367);
  std::cauchy_distribution<double> cauchy(-0.7, 0.4);
  // +1 pseudo-count per bin: log π_ref stays finite in empty tail bins (1 % of the mass in all).
  std::vector<double> count(kActions, 1.0);
  for (int k = 0; k < 10000; ++k) {
    const double y = std::tanh(cauchy(rng));
    count[std::min(kActions - 1, static_cast<std::size_t>((y + 1.0) / 2.0 * kActions))] += 1;
  }
  double total = 0;
  for (double c : count) total += c;
  for (double& c : count) c = std::log(c / total);
  return count;
}

std::vector<double> reward_table(double centre) {
  std::vector<double> r(kActions);
  for (std::size_t a = 0; a < kActions; ++a) r[a] = std::exp(-std::pow((double(a) - centre) / 10.0, 2));
  return r;
}

// One step's samples, scores and rewards: B = contexts groups of N actions, row-major.
struct Group {
  Sequences seqs;
  std::vector<double> logp, ref_logp, proposal_logp, reward;
};

// d loss / d log π per sample of a group, for one method.
using Method = std::function<std::vector<double>(const Group&, Estimator<double>&, std::size_t contexts)>;

// Reorders each context's samples as [best, others...]: the DFT/preference layout.
struct Split {
  std::vector<std::size_t> pos, neg;
};
Split best_vs_rest(const Group& g, std::size_t contexts) {
  Split s;
  for (std::size_t c = 0; c < contexts; ++c) {
    std::size_t best = c * kSamples;
    for (std::size_t j = 1; j < kSamples; ++j)
      if (g.reward[c * kSamples + j] > g.reward[best]) best = c * kSamples + j;
    s.pos.push_back(best);
    for (std::size_t j = 0; j < kSamples; ++j)
      if (c * kSamples + j != best) s.neg.push_back(c * kSamples + j);
  }
  return s;
}
std::vector<double> pick(const std::vector<double>& x, const std::vector<std::size_t>& idx) {
  std::vector<double> out;
  for (std::size_t i : idx) out.push_back(x[i]);
  return out;
}
template <class R>
std::vector<double> scatter(const R& r, const Split& s) {
  std::vector<double> g(s.pos.size() + s.neg.size(), 0.0);
  for (std::size_t i = 0; i < s.pos.size(); ++i) g[s.pos[i]] = r.grad_pos[i];
  for (std::size_t k = 0; k < s.neg.size(); ++k) g[s.neg[k]] = r.grad_neg[k];
  return g;
}

std::vector<std::pair<std::string, Method>> methods() {
  auto samples = [](const Group& g) {
    return SampleScores<double>{.logp = g.logp, .reward = g.reward, .group_size = kSamples};
  };
  std::vector<std::pair<std::string, Method>> m;
  m.emplace_back("best-of-N SFT", [=](const Group& g, Estimator<double>&, std::size_t) {
    return best_of_n_loss(samples(g)).grad;
  });
  m.emplace_back("RWR", [=](const Group& g, Estimator<double>&, std::size_t) {
    return rwr_loss(samples(g), {.eta = 0.1, .normalization = RwrNormalization::group}).grad;
  });
  m.emplace_back("REINFORCE", [=](const Group& g, Estimator<double>&, std::size_t) {
    return reinforce_loss(samples(g)).grad;
  });
  m.emplace_back("RLOO", [=](const Group& g, Estimator<double>&, std::size_t) { return rloo_loss(samples(g)).grad; });
  auto pairwise = [](auto loss) {
    return [=](const Group& g, Estimator<double>&, std::size_t contexts) {
      const Split s = best_vs_rest(g, contexts);
      const auto pos = pick(g.logp, s.pos), neg = pick(g.logp, s.neg);
      const auto rpos = pick(g.ref_logp, s.pos), rneg = pick(g.ref_logp, s.neg);
      return scatter(loss(PreferenceScores<double>{.pos_logp = pos, .neg_logp = neg,
                                                   .ref_pos_logp = rpos, .ref_neg_logp = rneg, .num_negatives = kSamples - 1}),
                     s);
    };
  };
  m.emplace_back("DPO", pairwise([](const PreferenceScores<double>& p) { return dpo_loss(p, {.beta = 0.1}); }));
  m.emplace_back("IPO", pairwise([](const PreferenceScores<double>& p) { return ipo_loss(p, {.beta = 0.1}); }));
  m.emplace_back("DFT", [](const Group& g, Estimator<double>& est, std::size_t contexts) {
    const Split s = best_vs_rest(g, contexts);
    const auto pos = pick(g.logp, s.pos), neg = pick(g.logp, s.neg), rneg = pick(g.proposal_logp, s.neg);
    std::vector<std::int64_t> ids(contexts);
    for (std::size_t c = 0; c < contexts; ++c) ids[c] = static_cast<std::int64_t>(c);
    const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
    return scatter(dft_step<double>({.ids = ids, .pos_logp = pos, .neg_logp = neg,
                                     .ref_neg_logp = rneg, .num_negatives = kSamples - 1},
                                    est, opt),
                   s);
  });
  return m;
}

double expected_reward(CategoricalPolicy<double>& p, std::size_t contexts, const std::vector<double>& r) {
  double total = 0;
  for (std::size_t c = 0; c < contexts; ++c) {
    const auto row = p.logits(c);
    const double hi = *std::max_element(row.begin(), row.end());
    double z = 0, e = 0;
    for (std::size_t a = 0; a < kActions; ++a) {
      const double w = std::exp(row[a] - hi);
      z += w;
      e += w * r[a];
    }
    total += e / z;
  }
  return total / double(contexts);
}

// One run: a method, a reward, on- or off-policy, one seed → E_π[R] after each step (step 0 = π_ref).
std::vector<double> run(const Method& method, const std::vector<double>& reward, bool on_policy, std::uint64_t seed,
                        const Config& cfg, const std::vector<double>& log_ref) {
  std::mt19937_64 rng(seed);
  CategoricalPolicy<double> ref(cfg.contexts, kActions), policy(cfg.contexts, kActions);
  for (std::size_t c = 0; c < cfg.contexts; ++c) {
    std::copy(log_ref.begin(), log_ref.end(), ref.logits(c).begin());
    std::copy(log_ref.begin(), log_ref.end(), policy.logits(c).begin());
  }
  Estimator<double> est(cfg.contexts);
  AdamW<double> adam({.weight_decay = 0.0});
  std::vector<double> curve{expected_reward(policy, cfg.contexts, reward)};
  Group g;
  for (std::size_t t = 0; t < cfg.steps; ++t) {
    CategoricalPolicy<double>& sampler = on_policy ? policy : ref;
    g.seqs = Sequences{};
    for (std::size_t c = 0; c < cfg.contexts; ++c) {
      const std::array<token_t, 1> prompt{token_t(c)};
      for (token_t a : sampler.sample(c, kSamples, rng)) g.seqs.push(prompt, std::array<token_t, 1>{a});
    }
    g.logp.resize(g.seqs.size());
    g.ref_logp.resize(g.seqs.size());
    g.reward.resize(g.seqs.size());
    policy.sequence_logp(g.seqs.view(), g.logp);
    ref.sequence_logp(g.seqs.view(), g.ref_logp);
    // DPO/IPO's reference is π_ref; DFT's importance weights need the distribution that drew the
    // negatives: π_ref offline, the current policy on-policy.
    g.proposal_logp = on_policy ? g.logp : g.ref_logp;
    for (std::size_t n = 0; n < g.seqs.size(); ++n) g.reward[n] = reward[std::size_t(g.seqs.tokens[2 * n + 1])];
    const std::vector<double> d = method(g, est, cfg.contexts);
    policy.zero_gradients();
    policy.accumulate_gradients(g.seqs.view(), d);
    adam.step(policy.parameters(), policy.gradients(), cfg.lr);
    curve.push_back(expected_reward(policy, cfg.contexts, reward));
  }
  return curve;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return std::string(i + 1 < argc ? argv[++i] : ""); };
    if (a == "--quick") cfg.steps = 40, cfg.seeds = 2, cfg.plot = false;
    else if (a == "--steps") cfg.steps = std::stoul(next());
    else if (a == "--seeds") cfg.seeds = std::stoul(next());
    else if (a == "--lr") cfg.lr = std::stod(next());
    else if (a == "--out") cfg.out = next();
    else if (a == "--no-plot") cfg.plot = false;
    else {
      std::printf("usage: bandit_study [--quick] [--steps N=1000] [--seeds S=5] [--lr LR=0.05] [--out DIR=out/bandit] [--no-plot]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  const std::vector<double> log_ref = reference_log_probs();
  const std::vector<std::pair<std::string, std::vector<double>>> rewards{{"R1", reward_table(70)},
                                                                          {"R2", reward_table(20)}};
  const auto all = methods();
  std::filesystem::create_directories(cfg.out);
  std::ofstream csv(cfg.out + "/bandit.csv");
  csv << "reward,regime,method,step,mean,std\n";
  std::printf("Bandit study (Tajwar et al. 2024, §4): %zu contexts x N = %zu samples/step, %zu steps, %zu seeds, "
              "AdamW lr %g\n\n", cfg.contexts, kSamples, cfg.steps, cfg.seeds, cfg.lr);
  std::printf("| reward | samples | method | E[R] at pi_ref | E[R] final (mean ± std) | steps to 90 %% of optimum |\n");
  std::printf("|---|---|---|---|---|---|\n");
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& [rname, reward] : rewards) {
    const double optimum = *std::max_element(reward.begin(), reward.end());
    for (bool on_policy : {false, true}) {
      const char* regime = on_policy ? "on-policy" : "offline";
      for (const auto& [mname, method] : all) {
        std::vector<std::vector<double>> curves;
        std::vector<double> reach;
        for (std::size_t s = 0; s < cfg.seeds; ++s) {
          curves.push_back(run(method, reward, on_policy, 1000 + s, cfg, log_ref));
          const auto& c = curves.back();
          const auto hit = std::find_if(c.begin(), c.end(), [&](double v) { return v >= 0.9 * optimum; });
          if (hit != c.end()) reach.push_back(double(hit - c.begin()));
        }
        auto stats = [](const std::vector<double>& x) {
          double m = 0, v = 0;
          for (double e : x) m += e;
          m /= double(x.size());
          for (double e : x) v += (e - m) * (e - m);
          return std::pair{m, x.size() > 1 ? std::sqrt(v / double(x.size() - 1)) : 0.0};
        };
        for (std::size_t t = 0; t <= cfg.steps; ++t) {
          std::vector<double> col;
          for (const auto& c : curves) col.push_back(c[t]);
          const auto [m, sd] = stats(col);
          csv << rname << ',' << regime << ',' << mname << ',' << t << ',' << m << ',' << sd << '\n';
        }
        std::vector<double> last;
        for (const auto& c : curves) last.push_back(c.back());
        const auto [lm, ls] = stats(last);
        char steps[64];
        if (reach.empty()) std::snprintf(steps, sizeof steps, "not within %zu", cfg.steps);
        else {
          const auto [rm, rs] = stats(reach);
          std::snprintf(steps, sizeof steps, "%.0f ± %.0f (%zu/%zu seeds)", rm, rs, reach.size(), cfg.seeds);
        }
        std::printf("| %s | %s | %s | %.3f | %.3f ± %.3f | %s |\n", rname.c_str(), regime, mname.c_str(),
                    curves[0][0], lm, ls, steps);
        std::fflush(stdout);
      }
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "bandit_study: %.1f s; wrote %s/bandit.csv\n", secs, cfg.out.c_str());
  if (cfg.plot && std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    std::ofstream gp(cfg.out + "/bandit.gp");
    gp << "set datafile separator ','\nset terminal pngcairo size 1400,900 font ',10'\n"
       << "set output '" << cfg.out << "/bandit.png'\nset multiplot layout 2,2\n"
       << "set key top left\nset xlabel 'step'\nset ylabel 'expected reward'\nset yrange [0:1.05]\n";
    for (const auto& [rname, reward] : rewards)
      for (const char* regime : {"offline", "on-policy"}) {
        gp << "set title '" << rname << ", " << regime << " samples'\nplot ";
        for (std::size_t k = 0; k < all.size(); ++k)
          gp << (k ? ", " : "") << "'" << cfg.out << "/bandit.csv' using (strcol(1) eq '" << rname << "' && strcol(2) eq '"
             << regime << "' && strcol(3) eq '" << all[k].first << "' ? $4 : 1/0):5 with lines lw 2 title '"
             << all[k].first << "'";
        gp << "\n";
      }
    gp << "unset multiplot\n";
    gp.close();
    if (std::system(("gnuplot " + cfg.out + "/bandit.gp").c_str()) == 0)
      std::fprintf(stderr, "bandit_study: wrote %s/bandit.png\n", cfg.out.c_str());
  }
  return 0;
}
