#pragma once
// Cached, batched generation (docs/generation.md): every prompt is fed through the decoder once
// (prefill), which fills a key/value cache per layer; then each new token costs one row per
// sequence (step), and only that row's logits are computed, through the fused head's tiles
// (logprob::linear::logits), never [N, V] logits for every position:
//   prefill   decoder.extend(cache, all slots, the prompts)          → last-row hidden states [P, d]
//   step      z = h W + b for the active rows; y ~ sample(z) per row  (sampling.hpp, as uncached)
//             decoder.extend(cache, active slots, the sampled tokens) → their hidden states
// Prompt p draws its uniforms from its own stream SplitMix64(seed, p), one per generated token, so
// a prompt's tokens depend neither on the thread count nor on the other prompts of the batch (its
// logits do not depend on the thread count, bit for bit; batched GEMMs may round them differently
// for another batch composition, which changes a token only when a uniform falls within that
// rounding of a boundary of the sampling CDF).
// Every size is checked before anything is allocated: the lengths against the decoder's context,
// the cache against Limits::max_cache_bytes; the token loop allocates nothing.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/threads.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/model/concept.hpp>
#include <dftune/model/generation/kv_cache.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/model/sequence_batch.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace generation {

// The model side of cached generation, the same for every decoder family:
//   context_length()   the longest sequence (prompt + completion) it has positions for
//   cache_shape()      layers and key/value width per position (kv_cache.hpp)
//   head()             the output head as the fused head sees it (proj, bias, dim, vocab, layout;
//                      hidden, targets, weights and offsets left empty)
//   reserve(rows)      sizes its scratch for extend() calls of up to `rows` new rows in all
//   extend(cache, slots, tokens, offsets, hidden)
//                      sequence a (cache slot slots[a]) gets the new tokens tokens[offsets[a],
//                      offsets[a+1]) at its next positions: their keys and values go into the cache
//                      of every layer, the cache advances, and hidden[a·d, (a+1)·d) receives the
//                      final hidden state (what the head reads) of the last new row.
// Prefill is extend() with the prompts, a step extend() with one token per active sequence.
// Two optional members, used when present:
//   pack_for(sequences, max_new, limits) called once before prefill: the decoder may pack its
//                                        weights for the call's GEMMs (decoder/kv_decoder.hpp)
//   step_logits(hidden, rows, logits)    logits[rows, V] of hidden[rows, d] instead of the fused
//                                        head's logprob::linear::logits(head(), ...)
template <class D>
concept CachedDecoder = requires(D& d, const D& cd, KvCache<typename D::scalar_type>& cache, std::span<const std::size_t> slots,
                                 std::span<const token_t> tokens, std::span<const std::int64_t> offsets,
                                 std::span<typename D::scalar_type> hidden, std::size_t rows) {
  typename D::scalar_type;
  { cd.context_length() } -> std::convertible_to<std::size_t>;
  { cd.cache_shape() } -> std::same_as<CacheShape>;
  { cd.head() } -> std::same_as<logprob::linear::LinearLogits<typename D::scalar_type>>;
  d.reserve(rows);
  d.extend(cache, slots, tokens, offsets, hidden);
};

// Logits per step below which the rows are sampled on one thread (a parallel region costs more).
inline constexpr std::size_t kParallelSamplingLogits = std::size_t{1} << 14;

// This thread's number in the current OpenMP team (0 outside one, or without OpenMP): its row of
// the sampling scratch.
inline std::size_t thread_id() {
#if defined(_OPENMP)
  return static_cast<std::size_t>(omp_get_thread_num());
#else
  return 0;
#endif
}

// The length checks of generation: every prompt's length + max_new within the context (written so
// that no sum can wrap: max_new may be SIZE_MAX), and the tokens of every prompt with its
// completion, Σ_p len_p + P·max_new, overflow-checked.
inline std::size_t checked_total_length(const Prompts& prompts, std::size_t max_new, std::size_t context) {
  const std::size_t P = prompts.size();
  for (std::size_t p = 0; p < P; ++p)
    if (const std::size_t len = prompts.prompt(p).size(); len > context || max_new > context - len)
      detail::fail_at("prompts", p, "length " + std::to_string(len) + " + max_new " + std::to_string(max_new),
                      "at most max_len = " + std::to_string(context));
  return detail::checked_add("generate: prompt tokens + prompts·max_new", prompts.tokens.size(),
                             detail::checked_mul("generate: prompts·max_new", P, max_new));
}

// Completes every prompt with up to max_new tokens (fewer once `eos` is drawn; it is kept), as
// SamplingModel::generate does (sampling.hpp), with a key/value cache.
template <CachedDecoder D>
Sequences generate(D& decoder, const Prompts& prompts, std::size_t max_new, const SamplingOptions& opt,
                   std::optional<token_t> eos = std::nullopt, const Limits& limits = {}) {
  using T = typename D::scalar_type;
  logprob::linear::LinearLogits<T> head = decoder.head();
  const std::size_t V = head.vocab, dim = head.dim, P = prompts.size();
  validate(prompts, V);
  validate(opt);
  const std::size_t total = checked_total_length(prompts, max_new, decoder.context_length());
  // Nothing is allocated before every size is known to fit.
  const CacheShape shape = decoder.cache_shape();
  cache_bytes<T>(shape, total, limits);
  const std::size_t threads = max_threads();
  detail::checked_product("generate: last-row logits prompts·vocab", P, V, sizeof(double));
  detail::checked_product("generate: sampling scratch threads·vocab", threads, V, sizeof(double));
  detail::checked_product("generate: last-row hidden states prompts·dim", P, dim, sizeof(T));

  std::vector<std::size_t> capacity(P), slot(P), start(P), len(P);
  for (std::size_t p = 0; p < P; ++p) {
    len[p] = prompts.prompt(p).size();
    capacity[p] = len[p] + max_new;
    start[p] = p == 0 ? 0 : start[p - 1] + capacity[p - 1];
  }
  std::vector<token_t> out(total);
  for (std::size_t p = 0; p < P; ++p) std::copy_n(prompts.prompt(p).begin(), len[p], out.begin() + static_cast<std::ptrdiff_t>(start[p]));
  Sequences res;
  if (max_new == 0 || P == 0) {
    for (std::size_t p = 0; p < P; ++p) res.push(prompts.prompt(p), {});
    return res;
  }
  KvCache<T> cache(shape, capacity);
  decoder.reserve(std::max(prompts.tokens.size(), P));
  if constexpr (requires { decoder.pack_for(P, max_new, limits); }) decoder.pack_for(P, max_new, limits);
  std::vector<T> hidden(P * dim), logits(P * V);
  std::vector<double> probs(threads * V);
  std::vector<std::int32_t> order(threads * V);
  std::vector<token_t> next(P);
  std::vector<std::int64_t> unit(P + 1);
  std::iota(unit.begin(), unit.end(), std::int64_t{0});
  std::vector<SplitMix64> rng;
  rng.reserve(P);
  for (std::size_t p = 0; p < P; ++p) rng.emplace_back(opt.seed, p);
  std::vector<std::exception_ptr> failure(P);

  std::iota(slot.begin(), slot.end(), std::size_t{0});
  decoder.extend(cache, std::span<const std::size_t>(slot), prompts.tokens, prompts.offsets, std::span<T>(hidden));
  std::size_t n_active = P;
  for (std::size_t step = 0; step < max_new && n_active > 0; ++step) {
    if constexpr (requires { decoder.step_logits(std::span<const T>(hidden), n_active, std::span<T>(logits)); }) {
      decoder.step_logits(std::span<const T>(hidden), n_active, std::span<T>(logits));
    } else {
      head.hidden = std::span<const T>(hidden.data(), n_active * dim);
      logprob::linear::logits(head, std::span<T>(logits.data(), n_active * V));
    }
    // Rows are independent and each prompt's stream is its own: sampled in parallel. An error
    // (a NaN logit) cannot leave an OpenMP region: the first row's is rethrown after it.
    [[maybe_unused]] const bool parallel = n_active > 1 && n_active * V >= kParallelSamplingLogits;
    DFTUNE_OMP(parallel for schedule(dynamic, 1) num_threads(static_cast<int>(parallel ? std::min(threads, n_active) : 1)))
    for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(n_active); ++i) {
      const auto a = static_cast<std::size_t>(i), id = thread_id();
      try {
        next[a] = sample_token(std::span<const T>(logits.data() + a * V, V), opt, rng[slot[a]].uniform(),
                               std::span<double>(probs.data() + id * V, V), std::span<std::int32_t>(order.data() + id * V, V));
      } catch (...) {
        failure[a] = std::current_exception();
      }
    }
    for (std::size_t a = 0; a < n_active; ++a)
      if (failure[a]) std::rethrow_exception(failure[a]);
    std::size_t still = 0;
    for (std::size_t a = 0; a < n_active; ++a) {
      const std::size_t p = slot[a];
      out[start[p] + len[p]++] = next[a];
      if (!(eos && next[a] == *eos)) {
        slot[still] = p;
        next[still++] = next[a];
      }
    }
    n_active = still;
    if (n_active == 0 || step + 1 == max_new) break;  // the last token needs no forward
    decoder.extend(cache, std::span<const std::size_t>(slot.data(), n_active), std::span<const token_t>(next.data(), n_active),
                   std::span<const std::int64_t>(unit.data(), n_active + 1), std::span<T>(hidden.data(), n_active * dim));
  }
  res.tokens.reserve(total);
  for (std::size_t p = 0; p < P; ++p) {
    const auto* b = out.data() + start[p];
    const std::size_t pl = prompts.prompt(p).size();
    res.push(std::span<const token_t>(b, pl), std::span<const token_t>(b + pl, len[p] - pl));
  }
  return res;
}

}  // namespace generation

DFTUNE_NAMESPACE_END
