#pragma once
// The fused linear + log-prob head with the vocabulary split over the ranks of a Communicator
// (distributed/communicator.hpp; docs/distributed.md, "A vocabulary-parallel head"): rank r holds
// the rows [begin_r, begin_r + size_r) of W (columns, Layout::dim_major) and of b, and their
// gradients; H, the targets, weights, offsets and d_seq are the same on every rank. Per chunk of
// rows (chunked.hpp, the same walker, GEMM tasks and row kernels as linear.hpp's head):
//   forward   each rank's slice gives every row a log-sum-exp lse_r and, on the rank that holds
//             the target, the target logit; one all-gather of those 2 numbers per row, combined
//             on every rank in rank order,
//               lse = M + log Σ_r exp(lse_r − M),  M = max_r lse_r,    z_y = Σ_r z_y,r (one is ≠ 0),
//             gives every rank the same exact log-probs (the entropy, if asked for: one
//             all-reduce more of each slice's Σ p (lse − z));
//   backward  G on the slice as linear.hpp's head has it on the whole row (the same row kernels,
//             the target's entry on its rank only): dW and db of the slice need no traffic, dH
//             = Σ_r G_r W_r is one all-reduce of the chunk's [rows, d].
// At P = 1 every step is linear.hpp's (the combination of one lse is that lse, bit for bit), so
// the results are the single-process head's bits. Bytes per step: docs/distributed.md.
//
//   VocabShard shard = even_vocab_shard(V, comm.rank(), comm.size());   // or any contiguous split
//   in.vocab = V (the targets' range); in.proj, in.bias: this rank's rows only
//   vocab_parallel::workspace_size(comm, shard, in, options)
//   vocab_parallel::forward(comm, shard, in, seq_logp, token_outputs, workspace, options)
//   vocab_parallel::backward(comm, shard, in, d_seq, grads, row_lse or {}, workspace, options)
//   vocab_parallel::forward_backward(comm, shard, in, d_seq, grads, seq_logp, token_outputs, workspace, options)
// grads.proj and grads.bias are the slice's; grads.hidden is all of dH, the same bits on every rank.
//
// Errors: every rank checks its own arguments as linear.hpp's head does, then (one all-gather)
// every rank sees every rank's shard, shapes, requested outputs and a hash of its replicated inputs;
// a local error, slices that are not contiguous in rank order from 0 or do not add up to V, or
// ranks that disagree, are the same dftune::error on every rank before anything is written.
// Logits the reductions refuse are found during the run, on every rank alike, and named as
// logprob::forward names them on the whole row.
#include <dftune/config.hpp>
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/checks.hpp>
#include <dftune/logprob/linear/chunked.hpp>
#include <dftune/logprob/linear/linear.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/linear/plan.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear {

// This rank's rows of W and b: [begin, begin + size) of the vocabulary.
struct VocabShard {
  std::size_t begin = 0;  // the first vocabulary id held here
  std::size_t size = 0;   // how many (at least 1)
};

// The even split of V over P ranks: V / P rows each, one more on the first V mod P ranks.
inline VocabShard even_vocab_shard(std::size_t V, std::size_t rank, std::size_t P) {
  if (P == 0) dftune::detail::fail("P", P, "a world size >= 1");
  if (rank >= P) dftune::detail::fail("rank", rank, "a rank in [0, P = " + std::to_string(P) + ")");
  const std::size_t q = V / P, extra = V % P;
  return {.begin = rank * q + std::min(rank, extra), .size = q + (rank < extra ? 1 : 0)};
}

namespace detail {

// FNV-1a over 8-byte words: equal inputs on every rank (a cheap check, O(N·d)).
inline std::uint64_t hash(std::uint64_t h, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return (h ^ bytes) * 0x100000001b3ull;
}

template <class X>
std::uint64_t hash(std::uint64_t h, std::span<X> s) {
  return hash(h, s.data(), s.size_bytes());
}

// What every rank must agree on, and its slice.
struct Record {
  std::uint64_t begin = 0, size = 0, vocab = 0, rows = 0, sequences = 0, dim = 0, chunk_rows = 0;
  std::uint64_t layout = 0, bias = 0, mode = 0, lse_in = 0, outputs = 0, grads = 0;
  double z_loss = 0;
  std::uint64_t inputs = 0;  // hash of H, targets, weights, offsets, d_seq, row_lse
};

// The verdict on every rank's record, the same on every rank (each holds them all).
inline void check_records(const std::vector<Record>& all) {
  const Record& a = all.front();
  struct Field {
    const char* name;
    std::uint64_t Record::*member;
  };
  const Field fields[] = {{"vocab", &Record::vocab},         {"hidden (rows)", &Record::rows},
                          {"offsets (sequences)", &Record::sequences}, {"dim", &Record::dim},
                          {"options.chunk_rows", &Record::chunk_rows}, {"layout", &Record::layout},
                          {"bias (given or not)", &Record::bias},      {"the call (forward, backward, both)", &Record::mode},
                          {"row_lse (given or not)", &Record::lse_in}, {"the outputs asked for", &Record::outputs},
                          {"the gradients asked for", &Record::grads},
                          {"hidden, targets, weights, offsets, d_seq, row_lse (their hash)", &Record::inputs}};
  for (std::size_t r = 1; r < all.size(); ++r) {
    for (const Field& f : fields)
      if (all[r].*f.member != a.*f.member)
        dftune::detail::fail(f.name, "rank " + std::to_string(r) + "'s " + std::to_string(all[r].*f.member) + " and rank 0's " + std::to_string(a.*f.member),
                     "the same on every rank of a vocabulary-parallel head");
    if (std::memcmp(&all[r].z_loss, &a.z_loss, sizeof(double)) != 0)
      dftune::detail::fail("grads.z_loss", "rank " + std::to_string(r) + "'s " + std::to_string(all[r].z_loss) + " and rank 0's " + std::to_string(a.z_loss),
                   "the same on every rank of a vocabulary-parallel head");
  }
  std::uint64_t next = 0;
  std::string slices;
  for (std::size_t r = 0; r < all.size(); ++r)
    slices += (r ? ", " : "") + std::to_string(all[r].begin) + "+" + std::to_string(all[r].size);
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].begin != next || next + all[r].size > a.vocab)
      dftune::detail::fail("shard", "slices (begin+size, in rank order) " + slices + " of vocab = " + std::to_string(a.vocab),
                   "contiguous slices in rank order from 0 whose sizes add up to vocab");
    next += all[r].size;
  }
  if (next != a.vocab)
    dftune::detail::fail("shard", "slices (begin+size, in rank order) " + slices + " of vocab = " + std::to_string(a.vocab) + ", " +
                              std::to_string(next) + " rows in all",
                 "contiguous slices in rank order from 0 whose sizes add up to vocab");
}

// chunked::run's vocabulary policy for a slice (see the top of this file). gather: [2·chunk_rows]
// to send and [P·2·chunk_rows] to receive, in the workspace.
template <class Comm>
struct SlicedVocab {
  static constexpr bool split = true;
  Comm* comm = nullptr;
  std::size_t begin = 0, vocab = 0;  // the slice's first id; V
  double* gather = nullptr;

  // lse[u] ← log Σ over every rank's lse_r[u] (rank order), zy[u] ← the target logit (its owner's).
  void combine(double* lse, double* zy, std::size_t k) {
    const std::size_t P = comm->size();
    double* send = gather;
    double* recv = gather + 2 * k;
    std::copy(lse, lse + k, send);
    std::copy(zy, zy + k, send + k);
    comm->all_gather(std::as_bytes(std::span<const double>(send, 2 * k)), std::as_writable_bytes(std::span<double>(recv, P * 2 * k)));
    for (std::size_t u = 0; u < k; ++u) {
      double m = -std::numeric_limits<double>::infinity(), y = 0;
      bool nan = false;
      for (std::size_t r = 0; r < P; ++r) {
        const double l = recv[r * 2 * k + u];
        nan = nan || std::isnan(l);
        m = std::max(m, l);
        y = r == 0 ? recv[k + u] : y + recv[r * 2 * k + k + u];
      }
      zy[u] = y;
      if (nan) {
        lse[u] = std::numeric_limits<double>::quiet_NaN();
      } else if (!std::isfinite(m)) {
        lse[u] = m;  // every slice −inf (then −inf), or one +inf: refused either way
      } else {
        double s = 0;
        for (std::size_t r = 0; r < P; ++r) s += std::exp(recv[r * 2 * k + u] - m);
        lse[u] = m + std::log(s);  // P = 1: m + log 1 = m, the single head's lse bit for bit
      }
    }
  }
  void sum_rows(double* x, std::size_t k) { comm->all_reduce_sum(std::span<double>(x, k)); }
  template <class C>
  void sum(std::span<C> x) {
    comm->all_reduce_sum(x);
  }
  // The error logprob::forward throws on the whole row r (generic::fail_logits_row's words): the
  // first NaN or +inf logit over every rank's slice, else the target's −inf logit, else the
  // log-prob. Collective: every rank gets here for the same row.
  template <class C>
  [[noreturn]] void fail_row(const C* z, std::size_t n, std::size_t y, double w, std::size_t r, double lse, double zy) {
    struct First {
      std::uint64_t v = std::numeric_limits<std::uint64_t>::max();
      double x = 0;
    };
    First mine;
    for (std::size_t v = 0; v < n; ++v) {
      const double x = static_cast<double>(z[v]);
      if (std::isnan(x) || x == std::numeric_limits<double>::infinity()) {
        mine = {begin + v, x};
        break;
      }
    }
    First first;
    for (const First& f : distributed::all_gather_values(*comm, mine))
      if (f.v < first.v) first = f;
    const std::string row = " on a weighted row (row " + std::to_string(r) + ")";
    if (first.v != std::numeric_limits<std::uint64_t>::max())
      dftune::detail::fail_at("logits", r * vocab + first.v, first.x, "a finite number or −inf" + row);
    if (!std::isfinite(zy))
      dftune::detail::fail_at("logits", r * vocab + y, zy,
                      "a finite logit for the target y = " + std::to_string(y) + row + " (its log-prob would be −inf)");
    dftune::detail::fail_at("token_logp", r, w * (zy - lse),
                    "a weighted log-prob w·(z[y] − lse) that compute_t<T> can hold (logits or weights[" + std::to_string(r) +
                        "] too extreme for this precision)");
  }
};

// The plan of a slice: chunk_rows from the even slice ⌈V/P⌉ (the same on every rank, since every
// collective is per chunk), the tiles from this rank's own; then room for the gather after it.
template <class T>
Plan plan_of(const LinearLogits<T>& local, std::size_t V, std::size_t P, const LinearOptions& opt, std::size_t& gather_at) {
  LinearOptions o = opt;
  if (o.chunk_rows == 0) {
    LinearLogits<T> even = local;
    even.vocab = (V + P - 1) / P;
    o.chunk_rows = make_plan(even, opt).chunk_rows;
  }
  Plan p = make_plan(local, o);
  gather_at = p.bytes == 0 ? 0 : p.bytes - workspace_alignment;  // the placed regions end there (plan.hpp)
  const std::size_t g = dftune::detail::checked_product("workspace (ranks·chunk_rows)", dftune::detail::checked_add("workspace", P, 1), p.chunk_rows,
                                                2 * sizeof(double));
  if (p.bytes != 0) p.bytes = dftune::detail::checked_add("workspace", p.bytes, detail::round_up(g, workspace_alignment));
  return p;
}

template <class T>
LinearLogits<T> local_view(const LinearLogits<T>& in, const VocabShard& shard) {
  LinearLogits<T> local = in;
  local.vocab = shard.size;
  return local;
}

}  // namespace detail

inline namespace DFTUNE_LINEAR_DISPATCH {

namespace vocab_parallel {

namespace detail {

template <distributed::Communicator Comm, class T>
void execute(Comm& comm, const VocabShard& shard, const LinearLogits<T>& in, const linear::detail::Call<T>& call,
             std::span<std::byte> workspace, const LinearOptions& opt) {
  const LinearLogits<T> local = linear::detail::local_view(in, shard);
  const std::size_t P = comm.size();
  Plan plan;
  std::size_t gather_at = 0;
  const auto records = distributed::agree<linear::detail::Record>(comm, [&] {
    if (shard.size == 0) dftune::detail::fail("shard.size", shard.size, "at least 1 vocabulary row per rank (vocab >= ranks)");
    chunked::check_backend<DefaultGemm, DefaultRows>(local);
    plan = linear::detail::plan_of(local, in.vocab, P, opt, gather_at);
    linear::detail::check_call(local, call, plan, workspace, in.vocab);
    std::uint64_t h = linear::detail::hash(0xcbf29ce484222325ull, in.hidden);
    h = linear::detail::hash(h, in.targets);
    h = linear::detail::hash(h, in.weights);
    h = linear::detail::hash(h, in.offsets);
    h = linear::detail::hash(h, call.d_seq);
    h = linear::detail::hash(h, call.lse_in);
    const auto& g = call.grads;
    return linear::detail::Record{
        .begin = shard.begin, .size = shard.size, .vocab = in.vocab, .rows = in.rows(), .sequences = in.sequences(), .dim = in.dim,
        .chunk_rows = plan.chunk_rows, .layout = static_cast<std::uint64_t>(in.layout), .bias = !in.bias.empty(),
        .mode = static_cast<std::uint64_t>(call.mode), .lse_in = !call.lse_in.empty(),
        .outputs = (call.token_logp.empty() ? 0u : 1u) | (call.row_lse.empty() ? 0u : 2u) | (call.entropy.empty() ? 0u : 4u),
        .grads = (g.hidden.empty() ? 0u : 1u) | (g.proj.empty() ? 0u : 2u) | (g.bias.empty() ? 0u : 4u), .z_loss = g.z_loss, .inputs = h};
  });
  linear::detail::check_records(records);
  std::byte* ws = linear::detail::align(workspace.data());
  chunked::run<DefaultGemm, DefaultRows>(
      local, call, plan, workspace.data(),
      linear::detail::SlicedVocab<Comm>{.comm = &comm, .begin = shard.begin, .vocab = in.vocab,
                                   .gather = reinterpret_cast<double*>(ws + gather_at)});
}

}  // namespace detail

// Bytes of workspace each call on this rank needs: one chunk of its slice's logits (chunk_rows
// from ⌈V/P⌉), as linear.hpp's head, and 2·(P + 1)·chunk_rows doubles for the all-gather.
template <distributed::Communicator Comm, class T>
std::size_t workspace_size(const Comm& comm, const VocabShard& shard, const LinearLogits<T>& in, const LinearOptions& options = {}) {
  std::size_t gather_at = 0;
  return linear::detail::plan_of(linear::detail::local_view(in, shard), in.vocab, comm.size(), options, gather_at).bytes;
}

// linear::forward on every rank's slice (collective): seq_logp and the TokenOutputs asked for are
// the whole vocabulary's, the same bits on every rank.
template <distributed::Communicator Comm, class T>
void forward(Comm& comm, const VocabShard& shard, const LinearLogits<T>& in, std::span<compute_t<T>> seq_logp,
             const TokenOutputs<T>& rows, std::span<std::byte> workspace, const LinearOptions& options = {}) {
  const linear::detail::Call<T> call{.mode = linear::detail::Mode::forward, .seq_logp = seq_logp, .token_logp = rows.token_logp,
                               .row_lse = rows.row_lse, .entropy = rows.entropy};
  detail::execute(comm, shard, in, call, workspace, options);
}

// linear::backward on every rank's slice (collective): grads.proj and grads.bias are this slice's
// (accumulated), grads.hidden all of dH (written, the same bits on every rank).
template <distributed::Communicator Comm, class T>
void backward(Comm& comm, const VocabShard& shard, const LinearLogits<T>& in, std::span<const compute_t<T>> d_seq,
              const LinearGrads<T>& grads, std::span<const compute_t<T>> row_lse, std::span<std::byte> workspace,
              const LinearOptions& options = {}) {
  const linear::detail::Call<T> call{.mode = linear::detail::Mode::backward, .d_seq = d_seq, .lse_in = row_lse, .grads = grads};
  detail::execute(comm, shard, in, call, workspace, options);
}

// linear::forward_backward on every rank's slice (collective).
template <distributed::Communicator Comm, class T>
void forward_backward(Comm& comm, const VocabShard& shard, const LinearLogits<T>& in, std::span<const compute_t<T>> d_seq,
                      const LinearGrads<T>& grads, std::span<compute_t<T>> seq_logp, const TokenOutputs<T>& rows,
                      std::span<std::byte> workspace, const LinearOptions& options = {}) {
  const linear::detail::Call<T> call{.mode = linear::detail::Mode::forward_backward, .seq_logp = seq_logp, .token_logp = rows.token_logp,
                               .row_lse = rows.row_lse, .entropy = rows.entropy, .d_seq = d_seq, .grads = grads};
  detail::execute(comm, shard, in, call, workspace, options);
}

}  // namespace vocab_parallel

}  // inline namespace DFTUNE_LINEAR_DISPATCH

}  // namespace logprob::linear

DFTUNE_NAMESPACE_END
