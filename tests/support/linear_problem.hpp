#pragma once
// A random problem for the fused linear head (logprob/linear/): H, W (either layout), b, targets,
// weights with masked rows, sequences (one empty) and d_seq with zeros; shared by
// tests/test_fused_linear.cpp (against the materialised oracle) and tests/test_vocab_parallel.cpp
// (against the single-process head), with the loop over their cases and the relative error they
// compare outputs by (also tests/mpi/test_mpi_vocab_parallel.cpp).
#include <dftune/logprob/cpu/bf16.hpp>
#include <dftune/logprob/linear/linear.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <random>
#include <vector>

namespace linear_problem {

using dftune::token_t;
using dftune::logprob::compute_t;
namespace linear = dftune::logprob::linear;

template <class T>
double as_double(const T& x) {
  return static_cast<double>(static_cast<compute_t<T>>(x));
}

template <class T>
struct Problem {
  using C = compute_t<T>;
  std::size_t N = 0, V = 0, d = 0;
  linear::Layout layout = linear::Layout::vocab_major;
  std::vector<T> H, W, b;
  std::vector<token_t> targets;
  std::vector<C> weights;
  std::vector<std::int64_t> offsets;
  std::vector<C> d_seq;
  double zeta = 0;       // grads.z_loss of every backward run() makes
  bool entropy = false;  // whether run() asks for the entropy

  std::size_t S() const { return offsets.size() - 1; }
  linear::LinearLogits<T> view() const {
    return {.hidden = H, .proj = W, .bias = b, .dim = d, .vocab = V, .layout = layout, .targets = targets,
            .weights = weights, .offsets = offsets};
  }
  double w_at(std::size_t v, std::size_t k) const {  // W(v, k) whatever the layout
    return as_double(layout == linear::Layout::vocab_major ? W[v * d + k] : W[k * V + v]);
  }
  std::size_t seq_of(std::size_t n) const {
    std::size_t s = 0;
    while (static_cast<std::size_t>(offsets[s + 1]) <= n) ++s;
    return s;
  }
  double coef(std::size_t n) const { return static_cast<double>(d_seq[seq_of(n)]) * static_cast<double>(weights[n]); }
  bool carries_grad(std::size_t n) const { return coef(n) != 0 || (zeta != 0 && weights[n] != 0); }
};

// Sequences of 0..max_len rows (the second one empty), every fourth row masked with a bad target,
// a few d_seq of 0. Logits have a spread of about `scale`.
template <class T>
Problem<T> random_problem(std::mt19937_64& rng, std::size_t V, std::size_t d, std::size_t S, linear::Layout layout,
                          bool bias, double scale = 3.0, int max_len = 9) {
  Problem<T> p;
  p.V = V;
  p.d = d;
  p.layout = layout;
  p.offsets = {0};
  std::uniform_int_distribution<int> len(0, max_len);
  for (std::size_t s = 0; s < S; ++s) p.offsets.push_back(p.offsets.back() + (s == 1 ? 0 : len(rng)));
  p.N = static_cast<std::size_t>(p.offsets.back());
  std::normal_distribution<double> g(0.0, 1.0);
  const double ws = scale / std::sqrt(static_cast<double>(d));
  for (std::size_t i = 0; i < p.N * d; ++i) p.H.push_back(static_cast<T>(g(rng)));
  for (std::size_t i = 0; i < V * d; ++i) p.W.push_back(static_cast<T>(ws * g(rng)));
  if (bias)
    for (std::size_t v = 0; v < V; ++v) p.b.push_back(static_cast<T>(g(rng)));
  std::uniform_int_distribution<token_t> y(0, static_cast<token_t>(V - 1));
  std::uniform_real_distribution<double> w(0.25, 2.0), dd(-2.0, 2.0);
  for (std::size_t n = 0; n < p.N; ++n) {
    const bool masked = n % 4 == 1;
    p.targets.push_back(masked ? -7 : y(rng));
    p.weights.push_back(static_cast<compute_t<T>>(masked ? 0.0 : w(rng)));
  }
  for (std::size_t s = 0; s < S; ++s) p.d_seq.push_back(static_cast<compute_t<T>>(s % 5 == 3 ? 0.0 : dd(rng)));
  return p;
}

// How a test calls the head: forward then backward given row_lse, backward recomputing it, or
// forward_backward.
enum class Path { two_phase, two_phase_no_lse, one_pass };

struct Shape {
  std::size_t V, d, S;
  linear::LinearOptions opt;
};

// Every shape × layout × (bias, entropy and a z-loss of 0.3: without, with) × path, each a fresh
// random_problem from rng in that order: f(problem, shape, layout, extras, path).
template <class T, class F>
void for_each_case(std::mt19937_64& rng, std::span<const Shape> shapes, F&& f) {
  for (const Shape& sh : shapes)
    for (auto layout : {linear::Layout::vocab_major, linear::Layout::dim_major})
      for (bool extras : {false, true})
        for (auto path : {Path::two_phase, Path::two_phase_no_lse, Path::one_pass}) {
          auto p = random_problem<T>(rng, sh.V, sh.d, sh.S, layout, extras);
          p.entropy = extras;
          p.zeta = extras ? 0.3 : 0.0;
          f(p, sh, layout, extras, path);
        }
}

// max |a − b| over max(|b|, floor) (per_element: over max(|b_i|, 1)): the relative error of an
// output as a whole (dH, dW and db sum terms of both signs, so an element can be far smaller than
// the terms that round it); NaN where the other is NaN (masked rows) is equal.
template <class X>
double rel_error(const std::vector<X>& a, const std::vector<X>& b, bool per_element) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double scale = 0, worst = 0;
  for (const X& x : b)
    if (!std::isnan(static_cast<double>(x))) scale = std::max(scale, std::abs(static_cast<double>(x)));
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    if (std::isnan(x) && std::isnan(y)) continue;
    const double e = std::abs(x - y) / std::max(per_element ? std::max(std::abs(y), 1.0) : scale, 1e-30);
    worst = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(worst, e);
  }
  return worst;
}

}  // namespace linear_problem
