#pragma once
// Sampling completions from a model, for on-policy negatives (docs/math.md, "The objective": y' ~ π_ref at
// temperature 0.7, top-k, top-p) and greedy decoding for evaluation. The filter is the usual one:
//   p_v ∝ exp(z_v / temperature), then keep the top_k most probable tokens, then the smallest
//   prefix of those (most probable first) whose mass reaches top_p of the kept mass,
//   renormalise and draw. temperature = 0 means greedy (argmax, lowest index on ties).
// Tokens are ranked by logit (the order of the exact probabilities), the lower index first among
// equal logits, so the kept set is deterministic and always holds the argmax.
// Every argument is checked before anything is written: spans of the vocabulary's size, logits
// that are finite or −inf (a masked token) with at least one finite, u in [0, 1).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

// Checks a SamplingOptions (model/concept.hpp): temperature finite and >= 0 (0 is greedy), top_p in
// (0, 1]; otherwise dftune::argument_error naming the field. Every sampling call runs it first.
inline void validate(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    detail::fail("temperature", o.temperature, "a finite number >= 0 (0: greedy)");
  if (!(o.top_p > 0 && o.top_p <= 1)) detail::fail("top_p", o.top_p, "a number in (0, 1]");
}

// Prompts to complete: prompt p is tokens[offsets[p], offsets[p+1]), at least one token each.
struct Prompts {
  std::span<const token_t> tokens = {};  // every prompt's tokens, one after the other
  std::span<const std::int64_t> offsets = {};  // [P + 1], offsets[0] = 0, offsets[P] = tokens.size()

  // The number of prompts P (0 for an empty offsets table).
  std::size_t size() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  // Prompt p's tokens (p < size(); not checked here: validate first).
  std::span<const token_t> prompt(std::size_t p) const {
    return tokens.subspan(static_cast<std::size_t>(offsets[p]), static_cast<std::size_t>(offsets[p + 1] - offsets[p]));
  }
};

// Checks a Prompts against a vocabulary of `vocab` tokens: offsets start at 0, end at tokens.size()
// and increase strictly (no empty prompt), every token in [0, vocab). Throws dftune::argument_error
// naming the entry (`prompts.offsets[2]: got 3, expected > offsets[s] (non-empty prompts)`).
inline void validate(const Prompts& p, std::size_t vocab) {
  if (p.offsets.empty() || p.offsets.front() != 0) detail::fail("prompts.offsets", "a table not starting at 0", "[0, ..., tokens.size()]");
  if (p.offsets.back() != static_cast<std::int64_t>(p.tokens.size()))
    detail::fail_at("prompts.offsets", p.size(), p.offsets.back(), "tokens.size() = " + std::to_string(p.tokens.size()));
  for (std::size_t s = 0; s < p.size(); ++s)
    if (p.offsets[s + 1] <= p.offsets[s]) detail::fail_at("prompts.offsets", s + 1, p.offsets[s + 1], "> offsets[s] (non-empty prompts)");
  for (std::size_t t = 0; t < p.tokens.size(); ++t)
    if (p.tokens[t] < 0 || static_cast<std::size_t>(p.tokens[t]) >= vocab)
      detail::fail_at("prompts.tokens", t, p.tokens[t], "in [0, vocab = " + std::to_string(vocab) + ")");
}

// Optional part of a model (docs/backend.md): complete every prompt with up to max_new tokens
// (fewer if `eos` is sampled; it is kept as the last token). The result holds prompt +
// completion per sequence, the prompt length marking where the completion starts; the same
// seed gives the same tokens.
template <class M>
concept SamplingModel = Model<M> && requires(M& m, const Prompts& p, std::size_t max_new, const SamplingOptions& o,
                                             std::optional<token_t> eos) {
  { m.generate(p, max_new, o, eos) } -> std::same_as<Sequences>;
};

// The checks of sampling_distribution: V = logits.size() in [1, 2^31] (token ids and `order` are
// int32), probs and order of size V, options valid, every logit finite or −inf and one finite
// (NaN or +inf has no distribution; −inf masks a token). A dftune::error names the argument.
template <class T>
void check_sampling_arguments(std::span<const T> logits, const SamplingOptions& o, std::span<const double> probs,
                              std::span<const std::int32_t> order) {
  validate(o);
  const std::size_t V = logits.size();
  constexpr auto max_vocab = static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()) + 1;
  if (V == 0) detail::fail("logits", "size 0", "at least one logit (size V >= 1)");
  if (V > max_vocab) detail::fail("logits", "size " + std::to_string(V), "at most " + std::to_string(max_vocab) + " (token ids are int32)");
  detail::check_size("probs", probs.size(), V);
  detail::check_size("order", order.size(), V);
  bool any_finite = false;
  for (std::size_t v = 0; v < V; ++v) {
    const T z = logits[v];
    if (std::isnan(z) || z == std::numeric_limits<T>::infinity()) detail::fail_at("logits", v, z, "a finite number or -inf");
    any_finite = any_finite || std::isfinite(z);
  }
  if (!any_finite) detail::fail("logits", "every logit -inf", "at least one finite logit");
}

// The distribution a token is drawn from, written to probs[V]; order[V] is scratch.
template <class T>
void sampling_distribution(std::span<const T> logits, const SamplingOptions& o, std::span<double> probs,
                           std::span<std::int32_t> order) {
  check_sampling_arguments<T>(logits, o, probs, order);
  const std::size_t V = logits.size();
  const auto argmax = static_cast<std::size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (o.temperature == 0) {
    std::fill(probs.begin(), probs.end(), 0.0);
    probs[argmax] = 1.0;
    return;
  }
  const double hi = static_cast<double>(logits[argmax]);
  const auto weight = [&](std::size_t v) { return std::exp((static_cast<double>(logits[v]) - hi) / o.temperature); };
  std::size_t keep = o.top_k > 0 && o.top_k < V ? o.top_k : V;
  if (keep == V && o.top_p >= 1) {
    for (std::size_t v = 0; v < V; ++v) probs[v] = weight(v);
    const double sum = std::accumulate(probs.begin(), probs.end(), 0.0);
    for (double& p : probs) p /= sum;
    return;
  }
  // Most probable first, ranked by the logits themselves: the same order as the probabilities,
  // without the ties exp() rounds distinct logits into (at a huge temperature every weight is 1).
  // The ranking is a strict total order, so any selection gives the same first `keep` places.
  const auto before = [&](std::int32_t a, std::int32_t b) {
    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)] ||
           (logits[static_cast<std::size_t>(a)] == logits[static_cast<std::size_t>(b)] && a < b);
  };
  const auto first = order.begin(), kept_end = order.begin() + static_cast<std::ptrdiff_t>(keep);
  std::iota(first, keep < V ? kept_end : order.end(), 0);
  if (keep < V) {
    // Top-k: a heap of the best k seen so far, its worst on top. Token v enters only with a
    // logit above the worst's (at an equal logit its larger id ranks it after), so most of a large
    // vocabulary is passed over at one comparison.
    std::make_heap(first, kept_end, before);
    for (std::size_t v = keep; v < V; ++v) {
      if (!(logits[v] > logits[static_cast<std::size_t>(order[0])])) continue;
      std::pop_heap(first, kept_end, before);
      order[keep - 1] = static_cast<std::int32_t>(v);
      std::push_heap(first, kept_end, before);
    }
    std::sort_heap(first, kept_end, before);
  } else {
    std::sort(first, order.end(), before);
  }
  // Only the kept tokens' weights are computed: a top-k of 50 out of 50k takes 50 exponentials, not
  // 50k (at batch 32 the whole vocabulary's were ≈ 6 % of a generate call, docs/generation.md).
  std::fill(probs.begin(), probs.end(), 0.0);
  for (std::size_t i = 0; i < keep; ++i) probs[static_cast<std::size_t>(order[i])] = weight(static_cast<std::size_t>(order[i]));
  if (o.top_p < 1) {
    double kept = 0;
    for (std::size_t i = 0; i < keep; ++i) kept += probs[static_cast<std::size_t>(order[i])];
    double cum = 0;
    for (std::size_t i = 0; i < keep; ++i) {
      cum += probs[static_cast<std::size_t>(order[i])];
      if (cum >= o.top_p * kept) {
        for (std::size_t r = i + 1; r < keep; ++r) probs[static_cast<std::size_t>(order[r])] = 0;
        keep = i + 1;
        break;
      }
    }
  }
  double sum = 0;
  for (std::size_t i = 0; i < keep; ++i) sum += probs[static_cast<std::size_t>(order[i])];
  for (std::size_t i = 0; i < keep; ++i) probs[static_cast<std::size_t>(order[i])] /= sum;
}

// One token from sampling_distribution, by inverse CDF at u in [0, 1).
template <class T>
token_t sample_token(std::span<const T> logits, const SamplingOptions& o, double u, std::span<double> probs,
                     std::span<std::int32_t> order) {
  if (!(u >= 0 && u < 1)) detail::fail("u", u, "a number in [0, 1)");
  sampling_distribution(logits, o, probs, order);
  double cum = 0;
  std::size_t last = 0;
  for (std::size_t v = 0; v < probs.size(); ++v) {
    if (probs[v] == 0) continue;
    last = v;
    cum += probs[v];
    if (u < cum) return static_cast<token_t>(v);
  }
  return static_cast<token_t>(last);  // u within rounding of 1
}

// A small counter-based generator: stream s of seed gives the same numbers whatever the thread
// or batch layout, which is what makes batched sampling reproducible.
struct SplitMix64 {
  std::uint64_t state;  // the counter: advanced by a constant per draw
  // Stream `stream` of `seed` (e.g. the sequence's index): distinct streams give unrelated numbers.
  explicit SplitMix64(std::uint64_t seed, std::uint64_t stream = 0)
      : state(seed ^ (stream * 0xD1342543DE82EF95ull + 0x9E3779B97F4A7C15ull)) {}
  // The next 64 random bits (SplitMix64's finaliser of the advanced counter).
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // A double uniform in [0, 1) from the top 53 bits of next().
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

DFTUNE_NAMESPACE_END
