#pragma once
// The argument checks of the fused linear head: shapes, offsets, targets and weights as
// logprob::forward / backward check them (the same names and messages), d_seq and row_lse as
// logprob::backward checks them, the gradients' sizes, the workspace, and that no output overlaps
// an input or another output. All run before anything is written: a throwing call writes nothing.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/linear/plan.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear::detail {

enum class Mode { forward, backward, forward_backward };

// Everything a call reads and writes besides the LinearLogits.
template <class T>
struct Call {
  using C = compute_t<T>;
  Mode mode = Mode::forward;
  std::span<C> seq_logp = {}, token_logp = {}, row_lse = {};  // written by forward, forward_backward
  std::span<C> entropy = {};                                   // forward, forward_backward (optional)
  std::span<const C> d_seq = {};                               // backward, forward_backward
  std::span<const C> lse_in = {};                              // backward: row_lse from forward (optional)
  LinearGrads<T> grads = {};                                   // backward, forward_backward
  bool forward() const { return mode != Mode::backward; }
  bool backward() const { return mode != Mode::forward; }
};

struct Region {
  std::string_view name;
  const std::byte* begin = nullptr;
  const std::byte* end = nullptr;
};

template <class X>
Region region(std::string_view name, std::span<X> s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  return {name, b, b + s.size_bytes()};
}

// The head reads its inputs chunk after chunk while it writes its outputs, so an output that
// overlaps an input or another output would make the results depend on the order of the work.
inline void check_disjoint(std::span<const Region> outputs, std::span<const Region> inputs) {
  const std::less<const std::byte*> lt;
  auto overlap = [&](const Region& a, const Region& b) {
    return a.begin != a.end && b.begin != b.end && lt(a.begin, b.end) && lt(b.begin, a.end);
  };
  const std::string_view expected = "a buffer disjoint from every input and every other output";
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    for (const Region& in : inputs)
      if (overlap(outputs[i], in)) dftune::detail::fail(outputs[i].name, "a buffer overlapping " + std::string(in.name), expected);
    for (std::size_t j = 0; j < i; ++j)
      if (overlap(outputs[i], outputs[j]))
        dftune::detail::fail(outputs[i].name, "a buffer overlapping " + std::string(outputs[j].name), expected);
  }
}

// target_vocab: the range of the targets, when `in` holds a slice of the vocabulary (vocab_parallel.hpp);
// 0: in.vocab.
template <class T>
void check_call(const LinearLogits<T>& in, const Call<T>& call, const Plan& plan, std::span<std::byte> workspace,
                std::size_t target_vocab = 0) {
  validate_shapes(in);
  validate_rows(in.rows(), target_vocab == 0 ? in.vocab : target_vocab, in.targets, in.weights, in.offsets);
  const std::size_t N = in.rows(), S = in.sequences();
  if (call.forward()) {
    dftune::detail::check_size("seq_logp", call.seq_logp.size(), S);
    if (!call.token_logp.empty()) dftune::detail::check_size("token_logp", call.token_logp.size(), N);
    if (!call.row_lse.empty()) dftune::detail::check_size("row_lse", call.row_lse.size(), N);
    if (!call.entropy.empty()) dftune::detail::check_size("entropy", call.entropy.size(), N);
  }
  if (call.backward()) {
    dftune::detail::check_size("d_seq", call.d_seq.size(), S);
    for (std::size_t s = 0; s < S; ++s)
      if (!std::isfinite(call.d_seq[s])) dftune::detail::fail_at("d_seq", s, call.d_seq[s], "a finite number");
    const auto& g = call.grads;
    if (!std::isfinite(g.z_loss)) dftune::detail::fail("grads.z_loss", g.z_loss, "a finite coefficient");
    if (!g.hidden.empty()) dftune::detail::check_size_product("grads.hidden", g.hidden.size(), N, in.dim, "grads.hidden (N·dim)");
    if (!g.proj.empty()) dftune::detail::check_size_product("grads.proj", g.proj.size(), in.vocab, in.dim, "grads.proj (vocab·dim)");
    if (!g.bias.empty()) dftune::detail::check_size("grads.bias", g.bias.size(), in.vocab);
  }
  if (!call.lse_in.empty()) {
    dftune::detail::check_size("row_lse", call.lse_in.size(), N);
    // Masked rows carry NaN from forward() and are never read.
    for (std::size_t r = 0; r < N; ++r)
      if (in.weight(r) != 0 && !std::isfinite(call.lse_in[r]))
        dftune::detail::fail_at("row_lse", r, call.lse_in[r], "a finite number on a weighted row");
  }
  if (workspace.size() < plan.bytes)
    dftune::detail::fail("workspace", "size " + std::to_string(workspace.size()),
                 "at least workspace_size(in, options) = " + std::to_string(plan.bytes) + " bytes");
  const Region inputs[] = {region("hidden", in.hidden),   region("proj", in.proj),
                           region("bias", in.bias),       region("targets", in.targets),
                           region("weights", in.weights), region("offsets", in.offsets),
                           region("d_seq", call.d_seq),   region("row_lse", call.lse_in)};
  const Region outputs[] = {region("seq_logp", call.seq_logp),       region("token_logp", call.token_logp),
                            region("row_lse", call.row_lse),         region("entropy", call.entropy),
                            region("grads.hidden", call.grads.hidden),
                            region("grads.proj", call.grads.proj),   region("grads.bias", call.grads.bias),
                            region("workspace", workspace.first(plan.bytes))};
  check_disjoint(outputs, inputs);
}

}  // namespace logprob::linear::detail

DFTUNE_NAMESPACE_END
