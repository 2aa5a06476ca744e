// libFuzzer target: the input validation of the DFT / DFT2 objective and of the token log-prob
// reductions. The input describes a call — sizes, ids, options, log-probs or logits, targets,
// weights, offsets — with wrong sizes, bad ids, duplicates, NaN/±inf, huge values and broken
// offsets all reachable. Properties:
//   - no crash, no sanitizer report, no exception other than dftune::error;
//   - dft_step that throws leaves the estimator bit-identical; one that returns stores finite
//     log u and returns finite gradients, and dft_loss (which never writes) agrees with it;
//   - every baseline objective (DPO, IPO, SimPO, ORPO, SFT, RWR, REINFORCE with each baseline,
//     RLOO, Best-of-N), in float and double, returns finite results or throws dftune::error:
//     finite inputs give a finite loss and gradient or a named error, never inf or NaN;
//   - the fast CPU reduction accepts and rejects exactly the calls the generic oracle does, with an
//     error naming the same argument, and a throwing forward leaves seq_logp untouched; logits
//     include NaN, ±inf and ±max, and a forward or backward that returns has finite results
//     (exactly 0 and NaN on masked rows).
#include <dftune/dftune.hpp>
#include <dftune/logprob/generic.hpp>

#include "fuzz_input.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

using namespace dftune;

namespace {

// "argument[index]" of a dftune::error message ("argument[index]: got ..."); "" for no error.
std::string argument_of(const std::string& what) { return what.substr(0, what.find(": got ")); }

// f() returns a ScoreResult or PreferenceResult: every number in it finite — or f throws
// dftune::error. Every input an objective reads is checked to be finite, so a normal return means
// finite inputs, and must give finite outputs.
template <class F>
void finite_or_error(F&& f) {
  try {
    const auto r = f();
    FUZZ_CHECK(std::isfinite(static_cast<double>(r.loss)));
    if constexpr (requires { r.grad; }) {
      for (auto g : r.grad) FUZZ_CHECK(std::isfinite(static_cast<double>(g)));
    } else {
      for (auto g : r.grad_pos) FUZZ_CHECK(std::isfinite(static_cast<double>(g)));
      for (auto g : r.grad_neg) FUZZ_CHECK(std::isfinite(static_cast<double>(g)));
    }
  } catch (const dftune::error&) {
  }
}

template <class T>
void objective(fuzz::Input& in) {
  const std::size_t n_examples = in.count(1, 8);
  const std::uint8_t flags = in.byte();
  DftOptions opt;
  opt.variant = (flags & 1) ? Variant::dft2 : Variant::dft;
  opt.init = static_cast<EstimatorInit>((flags >> 1) % 3);
  opt.tau = (flags & 8) ? in.number<double>(2.0) : (flags & 16 ? 0.3 : 1.0);
  opt.gamma = (flags & 32) ? in.number<double>(1.0) : 0.85;
  opt.log_u0 = (flags & 64) ? in.number<double>(50.0) : 0.0;
  opt.eps = (flags & 128) ? in.number<double>(1.0) : 1e-8;
  std::optional<Estimator<T>> est;
  try {
    est.emplace(n_examples, opt);
  } catch (const dftune::error&) {
    return;
  }
  // Some prior state.
  for (std::size_t k = 0, n = in.count(0, 3); k < n; ++k) {
    try {
      est->set(std::vector<std::int64_t>{in.id(static_cast<std::int64_t>(n_examples))}, std::vector<T>{in.number<T>()});
    } catch (const dftune::error&) {
    }
  }
  const std::size_t B = in.count(0, 4), m = in.count(0, 4);
  auto sized = [&](std::size_t n) { return (in.byte() % 16 == 0) ? n + 1 : n; };  // now and then one too many
  std::vector<std::int64_t> ids(sized(B)), pos_len(sized(B)), neg_len(sized(B * m));
  for (auto& i : ids) i = in.id(static_cast<std::int64_t>(n_examples));
  std::vector<T> pos(sized(B)), neg(sized(B * m)), ref(sized(B * m));
  for (auto& x : pos) x = in.number<T>(20.0);
  for (auto& x : neg) x = in.number<T>(20.0);
  for (auto& x : ref) x = in.number<T>(20.0);
  for (auto& l : pos_len) l = static_cast<std::int64_t>(in.count(0, 5)) - (in.byte() == 7 ? 10 : 0);
  for (auto& l : neg_len) l = static_cast<std::int64_t>(in.count(0, 5));
  const std::uint8_t drop = in.byte();
  SequenceScores<T> s{.ids = ids, .pos_logp = pos, .neg_logp = neg,
                      .ref_neg_logp = (drop & 1) ? std::span<const T>() : std::span<const T>(ref),
                      .pos_len = (drop & 2) ? std::span<const std::int64_t>() : std::span<const std::int64_t>(pos_len),
                      .neg_len = (drop & 4) ? std::span<const std::int64_t>() : std::span<const std::int64_t>(neg_len), .num_negatives = m};

  const std::vector<T> u0(est->raw_log_u().begin(), est->raw_log_u().end());
  const std::vector<unsigned char> seen0(est->raw_seen().begin(), est->raw_seen().end());
  std::optional<DftResult<T>> eval;
  try {
    eval = dft_loss(s, *est, opt);
  } catch (const dftune::error&) {
  }
  FUZZ_CHECK(fuzz::bit_equal<T>(est->raw_log_u(), u0));  // evaluation never writes
  try {
    const DftResult<T> r = dft_step(s, *est, opt);
    FUZZ_CHECK(eval.has_value());
    FUZZ_CHECK(fuzz::bit_equal<T>(r.grad_neg, eval->grad_neg) && fuzz::bit_equal<T>(r.log_u, eval->log_u));
    for (T g : r.grad_pos) FUZZ_CHECK(std::isfinite(g));
    for (T g : r.grad_neg) FUZZ_CHECK(std::isfinite(g));
    for (T u : r.log_u) FUZZ_CHECK(std::isfinite(u));
  } catch (const dftune::error&) {
    FUZZ_CHECK(!eval.has_value());
    FUZZ_CHECK(fuzz::bit_equal<T>(est->raw_log_u(), u0));
    FUZZ_CHECK(std::equal(seen0.begin(), seen0.end(), est->raw_seen().begin()));
  }
}

template <class T>
void reduction(fuzz::Input& in) {
  using C = logprob::compute_t<T>;
  // Now and then rows across the fast path's 2048-logit blocks, filled with one value plus a few
  // placed values or runs (a NaN in a block of −inf before the finite logits, +inf in the second
  // block, ...), which a byte per logit could not reach.
  const std::uint8_t shape = in.byte();
  const bool wide = shape % 4 == 3;
  const std::size_t vocab = wide ? 2040 + in.count(0, 16) + ((shape & 4) ? 2048 : 0) : in.count(0, 9);
  const std::size_t rows = wide ? in.count(0, 3) : in.count(0, 6);
  std::vector<T> logits(rows * vocab + (in.byte() % 8 == 0 ? 1 : 0));
  if (wide) {
    std::fill(logits.begin(), logits.end(), in.number<T>(30.0));
    for (std::size_t k = 0, n = in.count(0, 8); k < n && !logits.empty(); ++k) {
      const std::size_t at = (in.byte() | std::size_t{in.byte()} << 8 | std::size_t{in.byte()} << 16) % logits.size();
      const T v = in.number<T>(30.0);
      const std::size_t run = in.byte() % 2 == 0 ? 1 : 2048;
      std::fill(logits.begin() + static_cast<std::ptrdiff_t>(at),
                logits.begin() + static_cast<std::ptrdiff_t>(std::min(logits.size(), at + run)), v);
    }
  } else {
    for (auto& z : logits) z = in.number<T>(30.0);
  }
  std::vector<token_t> targets(rows + (in.byte() % 8 == 0 ? 1 : 0));
  for (auto& t : targets)
    t = wide ? static_cast<token_t>(static_cast<int>((in.byte() | in.byte() << 8) % (vocab + 2)) - 1)
             : static_cast<token_t>(static_cast<int>(in.byte() % 12) - 1);
  std::vector<C> weights;
  if (in.byte() & 1) {
    weights.resize(rows);
    for (auto& w : weights) w = in.byte() % 3 == 0 ? C(0) : in.number<C>(2.0);
  }
  std::vector<std::int64_t> offsets(in.count(0, 4));
  for (std::size_t k = 0; k < offsets.size(); ++k)
    offsets[k] = k == 0 ? (in.byte() == 1 ? 1 : 0)
                        : (k + 1 == offsets.size() && in.byte() % 4 ? static_cast<std::int64_t>(rows)
                                                                     : static_cast<std::int64_t>(in.byte() % 8));
  const logprob::TokenLogits<T> x{.logits = logits, .vocab = vocab, .targets = targets, .weights = weights, .offsets = offsets};
  const std::size_t S = offsets.empty() ? 0 : offsets.size() - 1;
  const std::size_t want_seq = in.byte() % 16 == 0 ? S + 1 : S;

  const C sentinel = C(-12345);
  std::vector<C> seq_fast(want_seq, sentinel), seq_gen(want_seq, sentinel);
  std::vector<C> tok_fast(rows, sentinel), tok_gen(rows, sentinel), lse(rows, sentinel);
  bool fast_ok = true, gen_ok = true;
  std::string fast_what, gen_what;
  try {
    logprob::forward(x, std::span<C>(seq_fast), std::span<C>(tok_fast), std::span<C>(lse));
  } catch (const dftune::error& e) {
    fast_ok = false;
    fast_what = e.what();
  }
  try {
    logprob::generic::forward(x, std::span<C>(seq_gen), std::span<C>(tok_gen));
  } catch (const dftune::error& e) {
    gen_ok = false;
    gen_what = e.what();
  }
  FUZZ_CHECK(fast_ok == gen_ok);
  FUZZ_CHECK(argument_of(fast_what) == argument_of(gen_what));  // the same argument (and index)
  if (!fast_ok)
    for (C v : seq_fast) FUZZ_CHECK(v == sentinel);
  if (fast_ok) {  // finite results; masked rows 0 (log-prob) and NaN (lse)
    for (C v : seq_fast) FUZZ_CHECK(std::isfinite(v));
    for (C v : seq_gen) FUZZ_CHECK(std::isfinite(v));
    for (std::size_t r = 0; r < rows; ++r) {
      const bool masked = !weights.empty() && weights[r] == 0;
      FUZZ_CHECK(masked ? tok_fast[r] == 0 && std::isnan(lse[r]) : std::isfinite(tok_fast[r]) && std::isfinite(lse[r]));
      FUZZ_CHECK(masked ? tok_gen[r] == 0 : std::isfinite(tok_gen[r]));
    }
  }

  std::vector<C> d(want_seq);
  for (auto& v : d) v = in.number<C>(3.0);
  const bool in_place = in.byte() & 1, use_lse = fast_ok && (in.byte() & 1);
  std::vector<T> g_fast(logits.size() + (in.byte() % 16 == 0 ? 1 : 0), T(7));
  std::vector<T> g_gen(in_place ? logits.size() : g_fast.size(), T(7));
  std::vector<T> z_fast = logits;
  fast_ok = gen_ok = true;
  fast_what.clear();
  gen_what.clear();
  try {
    logprob::backward(x, std::span<const C>(d), in_place ? std::span<T>(logits) : std::span<T>(g_fast),
                      use_lse ? std::span<const C>(lse) : std::span<const C>());
  } catch (const dftune::error& e) {
    fast_ok = false;
    fast_what = e.what();
    // Argument checks write nothing; a bad logit is found during the pass (grad unspecified).
    if (argument_of(fast_what).rfind("logits[", 0) != 0) {
      FUZZ_CHECK(fuzz::bit_equal<T>(logits, z_fast));
      for (T v : g_fast) FUZZ_CHECK(v == T(7));
    }
  }
  const std::vector<T> g_out = in_place ? logits : g_fast;
  if (in_place) logits = z_fast;  // the oracle reads the original logits
  try {
    logprob::generic::backward(x, std::span<const C>(d), std::span<T>(g_gen),
                               use_lse ? std::span<const C>(lse) : std::span<const C>());
  } catch (const dftune::error& e) {
    gen_ok = false;
    gen_what = e.what();
  }
  FUZZ_CHECK(fast_ok == gen_ok);
  FUZZ_CHECK(argument_of(fast_what) == argument_of(gen_what));
  if (fast_ok)
    for (std::size_t k = 0; k < rows * vocab; ++k) FUZZ_CHECK(std::isfinite(static_cast<double>(static_cast<C>(g_out[k]))));
}

// The baselines (objective/*.hpp): DPO, IPO, SimPO, ORPO on preference pairs; SFT, RWR,
// REINFORCE, RLOO, Best-of-N on scored samples. Property: a result or a dftune::error, nothing else.
template <class T>
void baselines(fuzz::Input& in) {
  const std::size_t B = in.count(0, 4), m = in.count(0, 3);
  auto sized = [&](std::size_t n) { return (in.byte() % 16 == 0) ? n + 1 : n; };
  std::vector<T> pos(B), neg(sized(B * m)), rpos(sized(B)), rneg(sized(B * m));
  std::vector<std::int64_t> pl(sized(B)), nl(sized(B * m));
  for (auto* v : {&pos, &neg, &rpos, &rneg})
    for (auto& x : *v) x = in.number<T>(30.0);
  for (auto* v : {&pl, &nl})
    for (auto& l : *v) l = static_cast<std::int64_t>(in.count(0, 6)) - (in.byte() == 3 ? 7 : 0);
  const std::uint8_t drop = in.byte();
  PreferenceScores<T> p{.pos_logp = pos, .neg_logp = neg,
                        .ref_pos_logp = (drop & 1) ? std::span<const T>() : std::span<const T>(rpos),
                        .ref_neg_logp = (drop & 2) ? std::span<const T>() : std::span<const T>(rneg),
                        .pos_len = (drop & 4) ? std::span<const std::int64_t>() : std::span<const std::int64_t>(pl),
                        .neg_len = (drop & 8) ? std::span<const std::int64_t>() : std::span<const std::int64_t>(nl), .num_negatives = m};
  const double a = in.number<double>(5.0), b = in.number<double>(2.0);
  const auto reduction = static_cast<NllReduction>(in.byte() % 4);
  finite_or_error([&] { return dpo_loss(p, DpoOptions{.beta = a}); });
  finite_or_error([&] { return ipo_loss(p, IpoOptions{.beta = a}); });
  finite_or_error([&] { return simpo_loss(p, SimpoOptions{.beta = a, .gamma = b}); });
  finite_or_error([&] { return orpo_loss(p, OrpoOptions{.lambda = b, .sft_reduction = reduction}); });

  const std::size_t k = in.count(0, 4);
  std::vector<T> logp(sized(B * k)), reward(sized(B * k)), values(sized(B * k));
  std::vector<std::int64_t> len(sized(B * k));
  for (auto& x : logp) x = in.number<T>(30.0);
  for (auto& x : reward) x = in.number<T>(3.0);
  for (auto& x : values) x = in.number<T>(3.0);
  for (auto& l : len) l = static_cast<std::int64_t>(in.count(0, 6));
  const SampleScores<T> smp{.logp = logp, .reward = reward,
                            .len = (drop & 16) ? std::span<const std::int64_t>() : std::span<const std::int64_t>(len), .group_size = k};
  finite_or_error([&] { return sft_loss(std::span<const T>(logp), smp.len, SftOptions{.reduction = reduction}); });
  finite_or_error([&] { return rwr_loss(smp, RwrOptions{.eta = a, .normalization = static_cast<RwrNormalization>(in.byte() % 3)}); });
  finite_or_error([&] { return reinforce_loss(smp); });
  finite_or_error([&] { return reinforce_loss(smp, ConstantBaseline{.value = b}); });
  finite_or_error([&] { return reinforce_loss(smp, SampleBaseline<T>{.values = values}); });
  finite_or_error([&] { return rloo_loss(smp); });
  finite_or_error([&] { return best_of_n_loss(smp, BestOfNOptions{.reduction = reduction}); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  switch (in.byte() % 6) {
    case 0: objective<double>(in); break;
    case 1: objective<float>(in); break;
    case 2: reduction<double>(in); break;
    case 3: reduction<float>(in); break;
    case 4: baselines<double>(in); break;
    default: baselines<float>(in); break;
  }
  return 0;
}
