#pragma once
// The fused linear + log-prob head on the CPU: token chunks × the full vocabulary (the scheme of
// Liger-Kernel's fused linear cross-entropy; why not Cut Cross-Entropy's tiles: docs/fused_linear.md).
// The rows that take part — weight ≠ 0 in the forward, d_seq·weight ≠ 0 in the backward (or
// weight ≠ 0 with a z-loss) — are cut
// into chunks of at most chunk_rows, in row order; masked rows never enter a GEMM. Per chunk:
//   1. Hc = the chunk's rows of H, in compute_t<T>
//   2. Z = Hc Wᵀ + b                                        one GEMM task per vocab tile
//   3. per row: lse, the weighted token log-prob and, if asked for, the entropy; backward:
//      G = c·(onehot − softmax) in place of Z, c = d_seq·weight (plus a z-loss's 2ζ·w·lse·softmax). These are cpu/rows.hpp's kernels, dispatched per CPU (generic.hpp's without Eigen), so a
//      row's values are the reduction's on the same logits.
//   4. dW[tile] += G[:, tile]ᵀ Hc and db[tile] += Σ_rows G[:, tile]     one task per vocab tile
//      dHc[:, cols] = Σ_tiles G[:, tile] W[tile, cols]                 one task per dim tile
//   5. dH's rows of the chunk = dHc (rows without gradient get 0)
// The workspace holds one chunk of logits, [chunk_rows, V], and O(chunk_rows · d) more (plan.hpp).
//
// Thread-count independence: every GEMM is single-threaded and has a shape fixed by the plan (the
// chunk, the vocab tile, the dim tile), each output element is written by one task, dW and db add
// the chunks in row order, dH sums the vocab tiles in order, and a row's kernels run in one thread.
// So which thread runs which task, and how many threads there are, changes no bit of any output.
// The order of the sums does depend on the plan (LinearOptions pins it).
//
// Storage types other than compute_t<T> (bf16): H's rows are widened when gathered, W's tiles into
// a per-thread stage before each GEMM, dH narrowed once at the end; all arithmetic is compute_t<T>.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/linear/checks.hpp>
#include <dftune/logprob/linear/gemm.hpp>
#include <dftune/logprob/linear/linear_logits.hpp>
#include <dftune/logprob/linear/plan.hpp>
#include <dftune/logprob/linear/rows.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace logprob::linear::detail {

template <class T>
inline constexpr bool is_bf16 =
#if DFTUNE_LINEAR_HAS_FAST_ROWS
    std::is_same_v<T, cpu::bf16>;
#else
    false;
#endif

template <class T, class C>
void widen(const T* src, C* dst, std::size_t n) {
#if DFTUNE_LINEAR_HAS_FAST_ROWS
  if constexpr (is_bf16<T>) {
    cpu::widen(src, dst, n);
    return;
  }
#endif
  for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<C>(src[i]);
}

template <class C, class T>
void narrow(const C* src, T* dst, std::size_t n) {
#if DFTUNE_LINEAR_HAS_FAST_ROWS
  if constexpr (is_bf16<T>) {
    cpu::narrow(src, dst, n);
    return;
  }
#endif
  for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

inline std::size_t thread_id() {
#if defined(_OPENMP)
  return static_cast<std::size_t>(omp_get_thread_num());
#else
  return 0;
#endif
}

inline std::byte* align(std::byte* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return p + ((workspace_alignment - a % workspace_alignment) % workspace_alignment);
}

}  // namespace logprob::linear::detail

namespace logprob::linear::chunked {

// Where the vocabulary is: a policy of run(). WholeVocab, all of it in this process (the head of
// linear.hpp); vocab_parallel.hpp's slice of it, on each rank of a communicator, has the same
// members plus the collectives that make a slice's row statistics the whole vocabulary's.
struct WholeVocab {
  static constexpr bool split = false;  // the row statistics of this process are the whole row's
  static constexpr std::size_t begin = 0;  // the first vocabulary row (of W) held here
  // The error logprob::forward throws on the materialised row r (z: its logits, all V of them).
  template <class C>
  [[noreturn]] void fail_row(const C* z, std::size_t V, std::size_t y, double w, std::size_t r, double /*lse*/,
                             double /*target logit*/) const {
    generic::fail_logits_row(z, V, y, w, r);
  }
};

// Runs a checked call (see execute()) on the vocabulary rows [vs.begin, vs.begin + in.vocab) of W;
// targets are ids of the whole vocabulary.
template <class Gemm, class Rows, class T, class Vocab = WholeVocab>
void run(const LinearLogits<T>& in, const detail::Call<T>& call, const Plan& p, std::byte* base, Vocab&& vs) {
  using C = compute_t<T>;
  constexpr bool staged = !std::is_same_v<T, C>;
  const std::size_t N = in.rows(), V = in.vocab, d = in.dim, S = in.sequences();
  const std::size_t R = p.chunk_rows, Vt = p.vocab_tile, Dt = p.dim_tile;
  const bool vocab_major = in.layout == Layout::vocab_major;
  const T* H = in.hidden.data();
  const T* W = in.proj.data();
  std::byte* ws = detail::align(base);
  C* const Z = reinterpret_cast<C*>(ws + p.logits_at);
  C* const Hc = reinterpret_cast<C*>(ws + p.hidden_at);
  C* const dHc = reinterpret_cast<C*>(ws + p.dhidden_at);
  std::size_t* const idx = reinterpret_cast<std::size_t*>(ws + p.rows_at);
  double* const coef = reinterpret_cast<double*>(ws + p.coef_at);
  C* const tok = reinterpret_cast<C*>(ws + p.token_at);
  double* const seq = reinterpret_cast<double*>(ws + p.seq_at);
  C* const stage_base = reinterpret_cast<C*>(ws + p.stage_at);
  double* const row_lse = reinterpret_cast<double*>(ws + p.stats_at);  // [R] each, see plan.hpp
  double* const row_zy = row_lse + R;
  double* const row_ent = row_zy + R;

  const auto& g = call.grads;
  const bool want_dh = call.backward() && !g.hidden.empty();
  const bool want_dw = call.backward() && !g.proj.empty();
  const bool want_db = call.backward() && !g.bias.empty();
  const bool any_grad = want_dh || want_dw || want_db;
  // The z-loss ζ Σ w lse² (linear_logits.hpp): a weighted row carries its gradient even where
  // d_seq·w = 0. ζ = 0 leaves every step below as it is without it.
  const double zeta = call.backward() && any_grad ? g.z_loss : 0.0;
  auto carries_grad = [&](double c, double w) { return c != 0 || (zeta != 0 && w != 0); };
  const bool need_lse = call.forward() || call.lse_in.empty();
  const bool want_entropy = call.forward() && !call.entropy.empty();
  constexpr bool whole = !std::remove_cvref_t<Vocab>::split;
  // The target's column in this process's rows of W; V or more where another process holds it.
  auto target_here = [&](std::size_t r) { return static_cast<std::size_t>(in.targets[r]) - vs.begin; };
  const std::size_t vocab_tiles = Vt == 0 ? 0 : (V + Vt - 1) / Vt;  // Vt = 0: no rows, no plan
  const std::size_t dim_tiles = want_dh && Dt != 0 ? (d + Dt - 1) / Dt : 0;
  const std::size_t dw_tiles = (want_dw || want_db) ? vocab_tiles : 0;

  if (N == 0) {  // only empty sequences (and no plan, no workspace)
    if (call.forward()) std::fill(call.seq_logp.begin(), call.seq_logp.end(), C(0));
    return;
  }

  // The chunk walker, touched by one thread at a time (omp single).
  std::size_t cursor = 0, count = 0, seq_sel = 0, seq_acc = 0;
  double acc = 0;
  bool done = false;
  auto flush_to = [&](std::size_t row) {  // sequences that end at or before `row` are complete
    while (seq_acc < S && static_cast<std::size_t>(in.offsets[seq_acc + 1]) <= row) {
      seq[seq_acc++] = acc;
      acc = 0;
    }
  };
  // The smallest weighted row whose logits the reductions refuse (generic.hpp, "Non-finite logits"):
  // rows are judged in step 3 from the values it computes anyway, and the call stops after the chunk
  // that holds one, its logits still in the workspace for the error.
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t bad = none;

  DFTUNE_OMP(parallel num_threads(static_cast<int>(p.threads)))
  {
#if defined(_OPENMP)
    // Every GEMM is one task's (see above): a library that threads by itself (OpenBLAS) must not,
    // even when this region runs on one thread and so is not "in parallel" to it. This sets the
    // thread count of this region's tasks only, not the caller's.
    omp_set_num_threads(1);
#endif
    C* const stage = staged ? stage_base + detail::thread_id() * p.stage_elems : nullptr;
    for (;;) {
      DFTUNE_OMP(single)
      {
        // The last chunk's weighted log-probs into their sequences, in row order (double, as the
        // reduction sums them).
        if (call.forward())
          for (std::size_t i = 0; i < count; ++i) {
            flush_to(idx[i]);
            acc += static_cast<double>(tok[i]);
          }
        count = 0;
        while (cursor < N && count < R) {
          const std::size_t r = cursor++;
          while (static_cast<std::size_t>(in.offsets[seq_sel + 1]) <= r) ++seq_sel;
          const double w = in.weight(r);
          const double c = call.backward() ? static_cast<double>(call.d_seq[seq_sel]) * w : 0.0;
          if (call.forward() ? w != 0 : carries_grad(c, w)) {
            idx[count] = r;
            coef[count++] = c;
            continue;
          }
          if (!call.token_logp.empty()) call.token_logp[r] = 0;
          if (!call.row_lse.empty()) call.row_lse[r] = std::numeric_limits<C>::quiet_NaN();
          if (!call.entropy.empty()) call.entropy[r] = std::numeric_limits<C>::quiet_NaN();
          if (want_dh) std::fill(g.hidden.begin() + static_cast<std::ptrdiff_t>(r * d),
                                 g.hidden.begin() + static_cast<std::ptrdiff_t>((r + 1) * d), T(0.0f));
        }
        if (count == 0) {
          if (call.forward()) flush_to(N);
          done = true;
        }
      }
      if (done) break;
      const std::size_t k = count;

      // 1. The chunk's rows of H.
      DFTUNE_OMP(for schedule(static))
      for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(k); ++i) {
        const auto u = static_cast<std::size_t>(i);
        detail::widen(H + idx[u] * d, Hc + u * d, d);
      }

      // 2. Z[:, tile] = Hc W[tile]ᵀ + b[tile].
      DFTUNE_OMP(for schedule(dynamic, 1))
      for (std::ptrdiff_t t = 0; t < static_cast<std::ptrdiff_t>(vocab_tiles); ++t) {
        const std::size_t v0 = static_cast<std::size_t>(t) * Vt, n = std::min(Vt, V - v0);
        if (vocab_major) {  // W[v0 : v0+n, :] is Bᵀ: column-major [d, n], leading dimension d
          const C* b = nullptr;
          if constexpr (staged) {
            detail::widen(W + v0 * d, stage, n * d);
            b = stage;
          } else {
            b = W + v0 * d;
          }
          Gemm::template run<true, false>(k, n, d, Hc, d, b, d, Z + v0, V, false);
        } else {  // W[:, v0 : v0+n]: row-major [d, n], leading dimension V
          const C* b = nullptr;
          std::size_t ldb = V;
          if constexpr (staged) {
            for (std::size_t j = 0; j < d; ++j) detail::widen(W + j * V + v0, stage + j * n, n);
            b = stage;
            ldb = n;
          } else {
            b = W + v0;
          }
          Gemm::template run<true, true>(k, n, d, Hc, d, b, ldb, Z + v0, V, false);
        }
        if (!in.bias.empty())
          for (std::size_t i = 0; i < k; ++i) {
            C* z = Z + i * V + v0;
            for (std::size_t v = 0; v < n; ++v) z[v] += static_cast<C>(in.bias[v0 + v]);
          }
      }

      // 3. Per row: (a) its statistics, log-sum-exp and target logit; (b) the weighted token
      //    log-prob, the entropy and the gradient in place. With the whole vocabulary here, (a) and
      //    (b) run in one pass per row (the row stays in L2 between them); a vocabulary slice first
      //    makes every row's statistics the whole vocabulary's (vs.combine, collective). A refused
      //    row is left as the GEMM wrote it.
      auto row_stats = [&](std::size_t u) {
        const std::size_t r = idx[u], y = target_here(r);
        const C* z = Z + u * V;
        row_lse[u] = need_lse ? Rows::lse(z, V) : static_cast<double>(call.lse_in[r]);
        row_zy[u] = y < V ? static_cast<double>(z[y]) : 0.0;
      };
      auto row_finish = [&](std::size_t u) {  // false: refused
        const std::size_t r = idx[u], y = target_here(r);
        C* z = Z + u * V;
        const double lse = row_lse[u];
        if (call.forward()) {
          const double lp = static_cast<double>(in.weight(r)) * (row_zy[u] - lse);
          if (!logprob::detail::row_ok<C>(lse, lp)) return false;
          tok[u] = static_cast<C>(lp);
          if (!call.token_logp.empty()) call.token_logp[r] = tok[u];
          if (!call.row_lse.empty()) call.row_lse[r] = static_cast<C>(lse);
          if (want_entropy) row_ent[u] = Rows::entropy(z, V, lse);
        } else if (need_lse && !(std::isfinite(lse) && std::isfinite(row_zy[u]))) {
          return false;  // a given row_lse is forward()'s, which only returns valid rows
        }
        if (!any_grad) return true;
        const double c = coef[u];
        // G = c·onehot(y) − a·softmax with a = c − 2ζ w lse (the z-loss's ∂/∂z = 2ζ w lse·softmax):
        // the kernel writes a·(onehot(t) − softmax), then the entry t it put the onehot on gets
        // its value, c − a·p_y at the target, −a·p_t where the target is another process's.
        const double a = zeta == 0 ? c : c - 2 * zeta * static_cast<double>(in.weight(r)) * lse;
        const bool here = y < V;
        if (c == 0 && a == 0) {
          std::fill(z, z + V, C(0));
        } else if (a == c && here) {
          Rows::grad(z, V, y, lse, c);
        } else {
          const std::size_t t = here ? y : 0;
          const double pt = std::exp(static_cast<double>(z[t]) - lse);
          Rows::grad(z, V, t, lse, a);
          z[t] = static_cast<C>((here ? c : 0.0) - a * pt);
        }
        return true;
      };
      DFTUNE_OMP(for schedule(dynamic, 1) reduction(min : bad))
      for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(k); ++i) {
        const auto u = static_cast<std::size_t>(i);
        row_stats(u);
        if constexpr (whole)
          if (!row_finish(u)) bad = std::min(bad, idx[u]);
      }
      if constexpr (!whole) {
        if (need_lse) {
          DFTUNE_OMP(single)
          vs.combine(row_lse, row_zy, k);
        }
        DFTUNE_OMP(for schedule(dynamic, 1) reduction(min : bad))
        for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(k); ++i)
          if (!row_finish(static_cast<std::size_t>(i))) bad = std::min(bad, idx[static_cast<std::size_t>(i)]);
      }
      if (bad != none) break;  // every thread: the loop's barrier published the reduction
      if (want_entropy) {
        DFTUNE_OMP(single)
        {
          if constexpr (!whole) vs.sum_rows(row_ent, k);
          for (std::size_t u = 0; u < k; ++u) call.entropy[idx[u]] = static_cast<C>(row_ent[u]);
        }
      }
      if (!any_grad) continue;

      // 4. dH tasks first (each is a 1/dim_tiles share of a GEMM), then the vocab tiles of dW, db.
      DFTUNE_OMP(for schedule(dynamic, 1))
      for (std::ptrdiff_t t = 0; t < static_cast<std::ptrdiff_t>(dim_tiles + dw_tiles); ++t) {
        const auto task = static_cast<std::size_t>(t);
        if (task < dim_tiles) {  // dHc[:, c0 : c0+m] = Σ_tiles G[:, tile] W[tile, c0 : c0+m]
          const std::size_t c0 = task * Dt, m = std::min(Dt, d - c0);
          for (std::size_t vt = 0; vt < vocab_tiles; ++vt) {
            const std::size_t v0 = vt * Vt, n = std::min(Vt, V - v0);
            if (vocab_major) {  // row-major [n, m], leading dimension d
              const C* b = nullptr;
              std::size_t ldb = d;
              if constexpr (staged) {
                for (std::size_t v = 0; v < n; ++v) detail::widen(W + (v0 + v) * d + c0, stage + v * m, m);
                b = stage;
                ldb = m;
              } else {
                b = W + v0 * d + c0;
              }
              Gemm::template run<true, true>(k, m, n, Z + v0, V, b, ldb, dHc + c0, d, vt > 0);
            } else {  // W[c0 : c0+m, v0 : v0+n] is Bᵀ: column-major [n, m], leading dimension V
              const C* b = nullptr;
              std::size_t ldb = V;
              if constexpr (staged) {
                for (std::size_t j = 0; j < m; ++j) detail::widen(W + (c0 + j) * V + v0, stage + j * n, n);
                b = stage;
                ldb = n;
              } else {
                b = W + c0 * V + v0;
              }
              Gemm::template run<true, false>(k, m, n, Z + v0, V, b, ldb, dHc + c0, d, vt > 0);
            }
          }
        } else {  // dW and db of one vocab tile
          const std::size_t v0 = (task - dim_tiles) * Vt, n = std::min(Vt, V - v0);
          if (want_dw) {
            C* dw = g.proj.data();
            if (vocab_major)  // dW[v0 : v0+n, :] += G[:, tile]ᵀ Hc (Gᵀ: column-major, leading dimension V)
              Gemm::template run<false, true>(n, d, k, Z + v0, V, Hc, d, dw + v0 * d, d, true);
            else  // dW[:, v0 : v0+n] += Hcᵀ G[:, tile]
              Gemm::template run<false, true>(d, n, k, Hc, d, Z + v0, V, dw + v0, V, true);
          }
          if (want_db) {
            C* db = g.bias.data() + v0;
            for (std::size_t i = 0; i < k; ++i) {
              const C* gi = Z + i * V + v0;
              for (std::size_t v = 0; v < n; ++v) db[v] += gi[v];
            }
          }
        }
      }

      // 5. The chunk's rows of dH (a vocabulary slice's: the sum over every process's slice).
      if constexpr (!whole) {
        if (want_dh) {
          DFTUNE_OMP(single)
          vs.sum(std::span<C>(dHc, k * d));
        }
      }
      if (want_dh) {
        DFTUNE_OMP(for schedule(static))
        for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(k); ++i) {
          const auto u = static_cast<std::size_t>(i);
          T* out = g.hidden.data() + idx[u] * d;
          if (!carries_grad(coef[u], static_cast<double>(in.weight(idx[u]))))
            std::fill(out, out + d, T(0.0f));
          else
            detail::narrow(dHc + u * d, out, d);
        }
      }
    }
  }
  if (bad != none) {  // named from the chunk's logits, as the reductions name it from theirs
    const std::size_t u = static_cast<std::size_t>(std::find(idx, idx + count, bad) - idx);
    vs.fail_row(Z + u * V, V, static_cast<std::size_t>(in.targets[bad]), static_cast<double>(in.weight(bad)), bad, row_lse[u], row_zy[u]);
  }
  if (call.forward()) generic::store_sequences<T>(call.seq_logp, [&](std::size_t s) { return seq[s]; });
}

// What the row kernels and the GEMM library refuse before anything runs: a bad DFTUNE_ISA (thrown
// here, not in a parallel region) and shapes beyond the library's limits.
template <class Gemm, class Rows, class T>
void check_backend(const LinearLogits<T>& in) {
#if DFTUNE_LINEAR_HAS_FAST_ROWS
  if constexpr (std::is_same_v<Rows, FastRows>) (void)dftune::cpu::active_isa();
#endif
  if constexpr (requires { Gemm::max_dim; }) {
    if (in.vocab > Gemm::max_dim) dftune::detail::fail("vocab", in.vocab, std::string("at most ") + Gemm::name + "'s limit " + std::to_string(Gemm::max_dim));
    if (in.dim > Gemm::max_dim) dftune::detail::fail("dim", in.dim, std::string("at most ") + Gemm::name + "'s limit " + std::to_string(Gemm::max_dim));
  }
}

// Plans, checks (nothing is written when a check fails) and runs one call with the given GEMM
// and row kernels; linear.hpp picks them. Logits the reductions refuse are found during the run
// (linear_logits.hpp says what is left written then). An empty workspace: the call allocates the
// plan's bytes itself, once the shapes (which the plan's size is computed from) are known valid.
template <class Gemm, class Rows, class T>
void execute(const LinearLogits<T>& in, const detail::Call<T>& call, std::span<std::byte> workspace, const LinearOptions& opt) {
  check_backend<Gemm, Rows>(in);
  const Plan plan = make_plan(in, opt);
  std::unique_ptr<std::byte[]> own;
  if (workspace.empty() && plan.bytes != 0) {
    validate_shapes(in);
    own = std::make_unique_for_overwrite<std::byte[]>(plan.bytes);
    workspace = {own.get(), plan.bytes};
  }
  detail::check_call(in, call, plan, workspace);
  run<Gemm, Rows>(in, call, plan, workspace.data(), WholeVocab{});
}

}  // namespace logprob::linear::chunked

DFTUNE_NAMESPACE_END
