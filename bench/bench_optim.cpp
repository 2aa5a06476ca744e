// The cost of all-or-nothing rule steps (optim/rule.hpp, update_all_or_nothing): SGD, SGD with
// Nesterov momentum, Adam and AdamW, float and double, on 1 M and 10 M parameters, each against the
// single-pass loop the rules had before (copied below verbatim: same input checks, no check of the
// results, no protection against a step that overflows). One process, interleaved repetitions,
// median of each.
//   cmake --build build --target bench_optim && build/bench/bench_optim [repetitions]
#include <dftune/optim/adam.hpp>
#include <dftune/optim/sgd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace dftune;

namespace before {

// Sgd<T>::step and AdamUpdate<T, D>::step as they were (state sized on the first step).
template <class T>
struct Sgd {
  SgdOptions opt{};
  std::vector<T> buf{};
  std::size_t n = 0, steps = 0;
  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_rule_step(std::span<const T>(params), grads, lr, n);
    const std::size_t count = params.size();
    const bool first = steps == 0;
    const T lambda = static_cast<T>(opt.weight_decay);
    const T mu = static_cast<T>(opt.momentum);
    const T keep = static_cast<T>(1.0 - opt.dampening);
    if (opt.momentum != 0 && first) buf.assign(count, T(0));
    for (std::size_t k = 0; k < count; ++k) {
      T g = opt.weight_decay != 0 ? CoupledWeightDecay::gradient(grads[k], params[k], lambda) : grads[k];
      if (opt.momentum != 0) {
        buf[k] = first ? g : mu * buf[k] + keep * g;
        g = opt.nesterov ? g + mu * buf[k] : buf[k];
      }
      params[k] -= lr * g;
    }
    n = count;
    ++steps;
  }
};

template <class T, class WeightDecay>
struct Adam {
  AdamOptions opt{};
  std::vector<T> m_{}, v_{};
  std::size_t n = 0, steps = 0;
  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_rule_step(std::span<const T>(params), grads, lr, n);
    const std::size_t count = params.size();
    if (steps == 0) {
      m_.assign(count, T(0));
      v_.assign(count, T(0));
    }
    const double t = static_cast<double>(steps + 1);
    const double bias1 = 1.0 - std::pow(opt.beta1, t);
    const double bias2 = 1.0 - std::pow(opt.beta2, t);
    const T step_size = static_cast<T>(static_cast<double>(lr) / bias1);
    const T bias2_sqrt = static_cast<T>(std::sqrt(bias2));
    const T shrink = static_cast<T>(WeightDecay::shrink(static_cast<double>(lr), opt.weight_decay));
    const T lambda = static_cast<T>(opt.weight_decay);
    const T one_m_beta1 = static_cast<T>(1.0 - opt.beta1);
    const T beta2 = static_cast<T>(opt.beta2);
    const T one_m_beta2 = static_cast<T>(1.0 - opt.beta2);
    const T eps = static_cast<T>(opt.eps);
    for (std::size_t k = 0; k < count; ++k) {
      const T g = WeightDecay::gradient(grads[k], params[k], lambda);
      m_[k] += one_m_beta1 * (g - m_[k]);
      v_[k] = beta2 * v_[k] + one_m_beta2 * g * g;
      const T denom = std::sqrt(v_[k]) / bias2_sqrt + eps;
      params[k] = params[k] * shrink - step_size * (m_[k] / denom);
    }
    n = count;
    ++steps;
  }
};

}  // namespace before

namespace {

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// Times step() of the old and the new rule, interleaved, `reps` times each after one warm-up step
// (which sizes the state); returns the medians in ms.
template <class T, class Old, class New>
void compare(const char* name, std::size_t n, int reps, Old old_rule, New new_rule) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> nd(0, 1);
  std::vector<T> theta_old(n), theta_new(n), g(n);
  for (std::size_t k = 0; k < n; ++k) {
    theta_old[k] = theta_new[k] = static_cast<T>(nd(rng));
    g[k] = static_cast<T>(1e-2 * nd(rng));
  }
  const T lr = static_cast<T>(1e-4);
  old_rule.step(theta_old, g, lr);
  new_rule.step(theta_new, g, lr);
  std::vector<double> t_old, t_new;
  using clock = std::chrono::steady_clock;
  for (int r = 0; r < reps; ++r) {
    auto t0 = clock::now();
    old_rule.step(theta_old, g, lr);
    auto t1 = clock::now();
    new_rule.step(theta_new, g, lr);
    auto t2 = clock::now();
    t_old.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    t_new.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  // Same arithmetic, same bits: the check must not change the values.
  const bool same = std::equal(theta_old.begin(), theta_old.end(), theta_new.begin());
  const double a = median(t_old), b = median(t_new);
  std::printf("%-14s %-6s %6.0fM  %9.3f  %9.3f  %6.2fx  %s\n", name, sizeof(T) == 4 ? "float" : "double",
              static_cast<double>(n) / 1e6, a, b, b / a, same ? "bit-identical" : "VALUES DIFFER");
}

template <class T>
void run_all(std::size_t n, int reps) {
  const SgdOptions plain{}, nesterov{.momentum = 0.9, .weight_decay = 0.01, .nesterov = true};
  const AdamOptions adam{.weight_decay = 0.01};
  compare<T>("SGD", n, reps, before::Sgd<T>{.opt = plain}, Sgd<T>(plain));
  compare<T>("SGD+Nesterov", n, reps, before::Sgd<T>{.opt = nesterov}, Sgd<T>(nesterov));
  compare<T>("Adam", n, reps, before::Adam<T, CoupledWeightDecay>{.opt = adam}, Adam<T>(adam));
  compare<T>("AdamW", n, reps, before::Adam<T, DecoupledWeightDecay>{.opt = adam}, AdamW<T>(adam));
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 21;
  std::printf("rule           type     size  before ms   after ms   ratio  values\n");
  for (std::size_t n : {std::size_t{1'000'000}, std::size_t{10'000'000}}) {
    run_all<float>(n, reps);
    run_all<double>(n, reps);
  }
}
