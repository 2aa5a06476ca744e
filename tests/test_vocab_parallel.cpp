// The vocabulary-parallel fused head (logprob/linear/vocab_parallel.hpp) on a world of P threads
// (tests/distributed/thread_world.hpp) against the single-process head (logprob/linear/linear.hpp,
// itself tested against the materialised oracle in test_fused_linear.cpp): bit for bit at P = 1,
// within 1e-6 (float; see the tolerances below) or 1e-13 (double) at P = 2, 3, 4 with even and
// uneven slices, both layouts,
// every call, the per-token outputs and the z-loss; replicated outputs the same bits on every rank;
// a workspace ≈ 1/P; bad shards, ranks that disagree and local errors the same named error on
// every rank with nothing written; refused logits named as the single head names them.
#include "distributed/thread_world.hpp"
#include "support/linear_problem.hpp"
#include "support/testing.hpp"

#include <dftune/distributed/single.hpp>
#include <dftune/logprob/linear/vocab_parallel.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace linear_problem;
namespace vp = dftune::logprob::linear::vocab_parallel;
using dftune::logprob::linear::VocabShard;

namespace {

template <class T>
struct Result {
  using C = compute_t<T>;
  std::vector<C> seq, token, lse, ent, dW, db;
  std::vector<T> dH;
};

// The problem's W and b restricted to a slice (W's rows, or columns for dim_major).
template <class T>
std::vector<T> slice_w(const Problem<T>& p, const VocabShard& s) {
  std::vector<T> w;
  if (p.layout == linear::Layout::vocab_major)
    w.assign(p.W.begin() + static_cast<std::ptrdiff_t>(s.begin * p.d), p.W.begin() + static_cast<std::ptrdiff_t>((s.begin + s.size) * p.d));
  else
    for (std::size_t k = 0; k < p.d; ++k)
      for (std::size_t v = s.begin; v < s.begin + s.size; ++v) w.push_back(p.W[k * p.V + v]);
  return w;
}

// dW and db start from a non-zero value (they accumulate): entry i of the whole is 0.25 sin(i).
double start(std::size_t i) { return 0.25 * std::sin(static_cast<double>(i)); }

// One rank's call (or the single head's, with comm == nullptr and the whole vocabulary).
template <class T, class Comm>
Result<T> call(Comm* comm, const Problem<T>& p, const VocabShard& s, Path path, const linear::LinearOptions& opt,
               const std::vector<compute_t<T>>* row_lse = nullptr) {
  using C = compute_t<T>;
  Result<T> r;
  const std::vector<T> W = slice_w(p, s);
  std::vector<T> b;
  if (!p.b.empty()) b.assign(p.b.begin() + static_cast<std::ptrdiff_t>(s.begin), p.b.begin() + static_cast<std::ptrdiff_t>(s.begin + s.size));
  linear::LinearLogits<T> in = p.view();
  in.proj = W;
  in.bias = b;
  r.seq.assign(p.S(), C(9));
  r.token.assign(p.N, C(9));
  r.lse.assign(p.N, C(9));
  if (p.entropy) r.ent.assign(p.N, C(9));
  r.dH.assign(p.N * p.d, T(9.0f));
  for (std::size_t i = 0; i < s.size * p.d; ++i) {  // the slice's entries of the whole dW
    const std::size_t v = p.layout == linear::Layout::vocab_major ? s.begin + i / p.d : s.begin + i % s.size;
    const std::size_t k = p.layout == linear::Layout::vocab_major ? i % p.d : i / s.size;
    r.dW.push_back(static_cast<C>(start(p.layout == linear::Layout::vocab_major ? v * p.d + k : k * p.V + v)));
  }
  if (!p.b.empty())
    for (std::size_t v = s.begin; v < s.begin + s.size; ++v) r.db.push_back(static_cast<C>(start(v)));
  const linear::LinearGrads<T> g{.hidden = r.dH, .proj = r.dW, .bias = r.db, .z_loss = p.zeta};
  const linear::TokenOutputs<T> rows{.token_logp = r.token, .row_lse = r.lse, .entropy = r.ent};
  std::vector<std::byte> ws(comm ? vp::workspace_size(*comm, s, in, opt) : linear::workspace_size(in, opt));
  const std::span<const C> d_seq(p.d_seq);
  const std::span<const C> lse = path != Path::two_phase ? std::span<const C>() : row_lse ? std::span<const C>(*row_lse) : std::span<const C>(r.lse);
  if (comm) {
    if (path == Path::one_pass) {
      vp::forward_backward(*comm, s, in, d_seq, g, std::span<C>(r.seq), rows, std::span<std::byte>(ws), opt);
    } else {
      vp::forward(*comm, s, in, std::span<C>(r.seq), rows, std::span<std::byte>(ws), opt);
      vp::backward(*comm, s, in, d_seq, g, lse, std::span<std::byte>(ws), opt);
    }
  } else {
    if (path == Path::one_pass) {
      linear::forward_backward(in, d_seq, g, std::span<C>(r.seq), rows, std::span<std::byte>(ws), opt);
    } else {
      linear::forward(in, std::span<C>(r.seq), rows, std::span<std::byte>(ws), opt);
      linear::backward(in, d_seq, g, lse, std::span<std::byte>(ws), opt);
    }
  }
  return r;
}

template <class T>
Result<T> single(const Problem<T>& p, Path path, const linear::LinearOptions& opt) {
  return call<T, dftune::distributed::Single>(nullptr, p, {0, p.V}, path, opt);
}

// Every rank's result; dW and db of rank 0's entry assembled from every rank's slice.
template <class T>
std::vector<Result<T>> parallel(const Problem<T>& p, const std::vector<VocabShard>& shards, Path path, const linear::LinearOptions& opt,
                                const std::vector<compute_t<T>>* row_lse = nullptr) {
  const std::size_t P = shards.size();
  std::vector<Result<T>> out(P);
  test::ThreadWorld world(P);
  world.run([&](test::ThreadWorld::Comm& c) { out[c.rank()] = call<T>(&c, p, shards[c.rank()], path, opt, row_lse); });
  return out;
}

template <class T>
Result<T> assemble(const Problem<T>& p, const std::vector<Result<T>>& ranks, const std::vector<VocabShard>& shards) {
  Result<T> whole = ranks[0];
  whole.dW.assign(p.V * p.d, 0);
  whole.db.clear();
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const VocabShard& s = shards[r];
    for (std::size_t i = 0; i < s.size * p.d; ++i) {
      const bool vm = p.layout == linear::Layout::vocab_major;
      const std::size_t v = vm ? s.begin + i / p.d : s.begin + i % s.size, k = vm ? i % p.d : i / s.size;
      whole.dW[vm ? v * p.d + k : k * p.V + v] = ranks[r].dW[i];
    }
    whole.db.insert(whole.db.end(), ranks[r].db.begin(), ranks[r].db.end());
  }
  return whole;
}

template <class X>
bool same_bits(const std::vector<X>& a, const std::vector<X>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(X)) == 0);
}

// The same bits in the outputs every rank holds whole (and, with slices, in dW and db too).
template <class T>
void check_same_bits(const Result<T>& a, const Result<T>& b, bool slices) {
  CHECK(same_bits(a.seq, b.seq));
  CHECK(same_bits(a.token, b.token));
  CHECK(same_bits(a.lse, b.lse));
  CHECK(same_bits(a.ent, b.ent));
  CHECK(same_bits(a.dH, b.dH));
  if (slices) {
    CHECK(same_bits(a.dW, b.dW));
    CHECK(same_bits(a.db, b.db));
  }
}

// The largest relative error seen of each output, for the log.
using Worst = std::array<double, 7>;
const char* const output_names[] = {"seq_logp", "token_logp", "row_lse", "entropy", "dW", "db", "dH"};

template <class T>
void compare(const Result<T>& a, const Result<T>& b, double tol, double tol_dh, Worst& worst) {
  const Worst e = {rel_error(a.seq, b.seq, true), rel_error(a.token, b.token, true), rel_error(a.lse, b.lse, true),
                   rel_error(a.ent, b.ent, true), rel_error(a.dW, b.dW, false),     rel_error(a.db, b.db, false),
                   rel_error(a.dH, b.dH, false)};
  for (std::size_t i = 0; i < e.size(); ++i) {
    INFO(output_names[i]);
    CHECK(e[i] <= (i == 6 ? tol_dh : tol));
    worst[i] = std::max(worst[i], e[i]);
  }
}

std::string describe(const Worst& w) {
  std::string s;
  for (std::size_t i = 0; i < w.size(); ++i) {
    char b[48];
    std::snprintf(b, sizeof b, "%s%s %.2g", i ? ", " : "", output_names[i], w[i]);
    s += b;
  }
  return s;
}

template <class T>
void against_single(std::uint64_t seed, double tol, double tol_dh, double own_lse_tol) {
  std::mt19937_64 rng(seed);
  Worst worst{}, own{};
  const Shape shapes[] = {{37, 5, 6, {}}, {301, 19, 12, {.chunk_rows = 8, .vocab_tile = 64, .dim_tile = 8}}};
  for_each_case<T>(rng, shapes, [&](const Problem<T>& p, const Shape& sh, linear::Layout layout, bool extras, Path path) {
    const auto one = single(p, path, sh.opt);
    // The two-phase backward given the same row_lse (the single head's forward's): it is a
    // function of that input, which is float in a float head (see the tolerances below).
    const auto* lse = path == Path::two_phase ? &one.lse : nullptr;
    for (std::size_t P : {1u, 2u, 3u, 4u}) {
      std::vector<VocabShard> shards;
      for (std::size_t r = 0; r < P; ++r) shards.push_back(linear::even_vocab_shard(sh.V, r, P));
      if (P == 3) shards = {{0, 1}, {1, sh.V - 11}, {sh.V - 10, 10}};  // uneven, one of a single row
      INFO("V ", sh.V, " d ", sh.d, " layout ", static_cast<int>(layout), " extras ", extras, " path ", static_cast<int>(path), " P ", P);
      const auto ranks = parallel(p, shards, path, sh.opt, lse);
      for (std::size_t r = 1; r < P; ++r) check_same_bits(ranks[r], ranks[0], false);
      const auto all = assemble(p, ranks, shards);
      if (P == 1) {
        check_same_bits(all, one, true);
      } else {
        compare(all, one, tol, tol_dh, worst);
        if (lse)  // each head's backward on its own forward's row_lse
          compare(assemble(p, parallel(p, shards, path, sh.opt), shards), one, own_lse_tol, std::max(tol_dh, own_lse_tol), own);
      }
    }
  });
  MESSAGE("largest differences from the single head, P = 2..4: ", describe(worst), "; two-phase on each head's own row_lse: ",
          describe(own));
}
}  // namespace

// The tolerances, relative to the largest element of each of dH, dW, db (their sums over the
// vocabulary have terms of both signs) and per element for the rest. The slices sum the
// vocabulary in another order than the single head (each slice's log-sum-exp, entropy and dH in
// the row kernels' lanes, then across ranks): in float that moves each output by its terms'
// rounding, measured ≤ 5e-7 (≤ 1.6e-7 for seq_logp, token_logp and row_lse) at P = 2–4.
// A two-phase call's backward reads row_lse as the forward stored it, rounded to the compute type:
// half an ulp of lse (up to 4.8e-7 at lse ≈ 8) moves every softmax entry of the row by as much,
// so the single head's own two phases differ from its one pass by up to 9e-7, and the two heads'
// roundings, which fall apart where their doubles straddle a float, by up to 1.8e-6 (4e-6 held).
// bf16 storage rounds dH to 8 bits once, where one rounding that falls the other way is 2^-8 of the element.
TEST_CASE("vocabulary-parallel head: float against the single-process head, P = 1..4") { against_single<float>(21, 1e-6, 1e-6, 4e-6); }
TEST_CASE("vocabulary-parallel head: double against the single-process head, P = 1..4") {
  against_single<double>(22, 1e-13, 1e-13, 1e-13);
}
TEST_CASE("vocabulary-parallel head: bf16 storage against the single-process head, P = 1..4") {
  against_single<dftune::logprob::cpu::bf16>(23, 1e-6, 1.0 / 128, 4e-6);
}

TEST_CASE("vocabulary-parallel head: a world of one (distributed::Single) is the single head, bit for bit") {
  std::mt19937_64 rng(24);
  auto p = random_problem<float>(rng, 500, 24, 9, linear::Layout::vocab_major, true);
  p.entropy = true;
  p.zeta = 0.01;
  for (auto path : {Path::two_phase, Path::one_pass}) {
    dftune::distributed::Single comm;
    const auto a = call<float>(&comm, p, linear::even_vocab_shard(p.V, 0, 1), path, {});
    check_same_bits(a, single(p, path, {}), true);
  }
}

TEST_CASE("vocabulary-parallel head: memory per rank is about 1/P") {
  std::mt19937_64 rng(25);
  auto p = random_problem<float>(rng, 8000, 16, 20, linear::Layout::vocab_major, true);
  const linear::LinearLogits<float> in = p.view();
  dftune::distributed::Single one;
  const std::size_t w1 = vp::workspace_size(one, linear::even_vocab_shard(p.V, 0, 1), in);
  for (std::size_t P : {2u, 4u, 8u}) {
    test::ThreadWorld world(P);
    std::size_t wp = 0;
    world.run([&](test::ThreadWorld::Comm& c) {
      const auto s = linear::even_vocab_shard(p.V, c.rank(), P);
      CHECK(s.size <= (p.V + P - 1) / P);  // W, b, dW and db: this many rows of V
      if (c.rank() == 0) wp = vp::workspace_size(c, s, in);
    });
    INFO("P ", P, " workspace ", wp, " of ", w1);
    // One chunk of the slice's logits plus the all-gather's 2 (P + 1) doubles per row.
    CHECK(static_cast<double>(wp) <= 1.1 * static_cast<double>(w1) / static_cast<double>(P) + 2.0 * (P + 1) * 8 * p.N + 4096);
  }
  CHECK(linear::even_vocab_shard(10, 0, 3).size == 4);
  CHECK(linear::even_vocab_shard(10, 2, 3).begin == 7);
  CHECK(test::error_of([] { (void)linear::even_vocab_shard(10, 3, 3); }).rfind("rank: got 3", 0) == 0);
}

namespace {

// Every rank's error message (or "" where the call returned), and whether its outputs kept their
// sentinels.
struct Outcome {
  std::vector<std::string> messages;
  bool untouched = true;
};

template <class Setup>
Outcome outcome(const Problem<float>& p, std::size_t P, const Setup& setup) {
  Outcome o;
  o.messages.resize(P);
  std::vector<char> clean(P, 1);
  test::ThreadWorld world(P);
  world.run([&](test::ThreadWorld::Comm& c) {
    Problem<float> q = p;
    VocabShard s = linear::even_vocab_shard(p.V, c.rank(), P);
    std::size_t dw_rows = 0;  // > 0: a wrong size of grads.proj on this rank
    setup(c.rank(), q, s, dw_rows);
    const std::vector<float> W = slice_w(q, s);
    std::vector<float> b(q.b.begin() + static_cast<std::ptrdiff_t>(s.begin), q.b.begin() + static_cast<std::ptrdiff_t>(s.begin + s.size));
    linear::LinearLogits<float> in = q.view();
    in.proj = W;
    in.bias = b;
    std::vector<float> seq(q.S(), 7), token(q.N, 7), dH(q.N * q.d, 7), dW((dw_rows ? dw_rows : s.size) * q.d, 7), db(s.size, 7);
    std::vector<std::byte> ws(vp::workspace_size(c, s, in) + 64);
    o.messages[c.rank()] = test::error_of([&] {
      vp::forward_backward(c, s, in, std::span<const float>(q.d_seq), {.hidden = dH, .proj = dW, .bias = db}, std::span<float>(seq),
                           {.token_logp = token}, std::span<std::byte>(ws));
    });
    auto all7 = [](const std::vector<float>& v) { return std::all_of(v.begin(), v.end(), [](float x) { return x == 7.0f; }); };
    clean[c.rank()] = all7(seq) && all7(token) && all7(dH) && all7(dW) && all7(db);
  });
  o.untouched = std::all_of(clean.begin(), clean.end(), [](char x) { return x != 0; });
  return o;
}

void expect_same_error(const Outcome& o, const std::string& start) {
  INFO(o.messages[0]);
  CHECK(o.messages[0].rfind(start, 0) == 0);
  for (const auto& m : o.messages) CHECK(m == o.messages[0]);
  CHECK(o.untouched);
}

}  // namespace

TEST_CASE("vocabulary-parallel head: bad shards, disagreeing ranks and local errors, the same error on every rank") {
  std::mt19937_64 rng(26);
  const auto p = random_problem<float>(rng, 30, 4, 5, linear::Layout::vocab_major, true);
  // Slices that do not add up to V, overlap, or leave a gap.
  expect_same_error(outcome(p, 2, [](std::size_t r, Problem<float>&, VocabShard& s, std::size_t&) { s = r == 0 ? VocabShard{0, 10} : VocabShard{10, 15}; }),
                    "shard: got slices (begin+size, in rank order) 0+10, 10+15 of vocab = 30, 25 rows in all");
  expect_same_error(outcome(p, 2, [](std::size_t r, Problem<float>&, VocabShard& s, std::size_t&) { s = r == 0 ? VocabShard{0, 20} : VocabShard{10, 20}; }),
                    "shard: got slices (begin+size, in rank order) 0+20, 10+20 of vocab = 30");
  expect_same_error(outcome(p, 3, [](std::size_t r, Problem<float>&, VocabShard& s, std::size_t&) {
                      if (r == 1) s.begin += 1;
                    }),
                    "shard: got slices");
  // Ranks that disagree: on V, on d_seq (the inputs' hash), on the z-loss.
  expect_same_error(outcome(p, 2, [](std::size_t r, Problem<float>& q, VocabShard& s, std::size_t&) {
                      if (r == 1) {
                        q.V = 31;
                        q.W.resize(31 * q.d, 0.5f);
                        q.b.push_back(0.0f);
                        s.size += 1;
                      }
                    }),
                    "vocab: got rank 1's 31 and rank 0's 30");
  expect_same_error(outcome(p, 2, [](std::size_t r, Problem<float>& q, VocabShard&, std::size_t&) {
                      if (r == 1) q.d_seq[0] += 1;
                    }),
                    "hidden, targets, weights, offsets, d_seq, row_lse (their hash): got rank 1's");
  // A local error on one rank: every rank throws it, prefixed with that rank.
  expect_same_error(outcome(p, 2, [](std::size_t r, Problem<float>&, VocabShard&, std::size_t& dw_rows) {
                      if (r == 1) dw_rows = 3;
                    }),
                    "rank 1 of 2: grads.proj: got size 12");
  expect_same_error(outcome(p, 2, [](std::size_t, Problem<float>& q, VocabShard&, std::size_t&) { q.weights[3] = std::nanf(""); }),
                    "rank 0 of 2 (and 1 more): weights[3]: got nan");
  expect_same_error(outcome(p, 2, [](std::size_t, Problem<float>&, VocabShard& s, std::size_t&) { s.size = 0; }),
                    "rank 0 of 2 (and 1 more): shard.size: got 0");
}

TEST_CASE("vocabulary-parallel head: refused logits are named as the single head names them, on every rank") {
  std::mt19937_64 rng(27);
  auto p = random_problem<float>(rng, 30, 4, 5, linear::Layout::vocab_major, true);
  std::size_t row = 0;
  while (p.weights[row] == 0) ++row;
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    auto q = p;
    q.b[22] = bad;  // in rank 1's slice [15, 30)
    const std::string expected = test::error_of([&] { (void)single(q, Path::one_pass, {}); });
    INFO(expected);
    CHECK(expected.rfind("logits[" + std::to_string(row * 30 + 22) + "]", 0) == 0);
    const Outcome o = outcome(p, 2, [&](std::size_t, Problem<float>& x, VocabShard&, std::size_t&) { x.b[22] = bad; });
    for (const auto& m : o.messages) CHECK(m == expected);
  }
  // A −inf target logit, on rank 0's slice.
  auto q = p;
  const auto y = static_cast<std::size_t>(q.targets[row]);
  q.b[y] = -std::numeric_limits<float>::infinity();
  const std::string expected = test::error_of([&] { (void)single(q, Path::one_pass, {}); });
  const Outcome o = outcome(p, 2, [&](std::size_t, Problem<float>& x, VocabShard&, std::size_t&) { x.b[y] = -std::numeric_limits<float>::infinity(); });
  INFO(expected);
  CHECK(expected.rfind("logits[" + std::to_string(row * 30 + y) + "]", 0) == 0);
  for (const auto& m : o.messages) CHECK(m == expected);
}
