// The vocabulary-parallel fused head (logprob/linear/vocab_parallel.hpp) under MPI, run by ctest as
// `mpirun -np 2 test_mpi_vocab_parallel`: each rank holds half of W and b; every call (forward then
// backward given row_lse, backward alone, forward_backward), with the per-token outputs and a
// z-loss, float and double, against the single-process head that each rank also runs on the whole
// W: within the thread-world test's tolerances (tests/test_vocab_parallel.cpp: 1e-6 in float), the replicated
// outputs the same bits on both ranks; then slices that do not add up to V: the same named error on
// both ranks, nothing written, no hang.
#include "support/linear_problem.hpp"

#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/mpi.hpp>
#include <dftune/logprob/linear/vocab_parallel.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace linear_problem;
namespace vp = dftune::logprob::linear::vocab_parallel;
using dftune::logprob::linear::VocabShard;

namespace {

int failures = 0;

#define EXPECT(cond)                                                            \
  do {                                                                          \
    if (!(cond)) {                                                              \
      ++failures;                                                               \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                           \
  } while (0)

// FNV-1a of an output's bytes: equal on both ranks where the bits are.
template <class X>
std::uint64_t bits(const std::vector<X>& x) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = reinterpret_cast<const unsigned char*>(x.data());
  for (std::size_t i = 0; i < x.size() * sizeof(X); ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

template <class T>
struct Out {
  using C = compute_t<T>;
  std::vector<C> seq, token, lse, ent, dW, db;
  std::vector<T> dH;
};

// mode 0: forward then backward given row_lse (row_lse_in, or this call's forward's); 1: backward
// recomputing it; 2: forward_backward.
template <class T, class Comm>
Out<T> run(Comm* comm, const Problem<T>& p, const VocabShard& s, int mode, const std::vector<compute_t<T>>* row_lse_in = nullptr) {
  using C = compute_t<T>;
  Out<T> o;
  std::vector<T> W(p.W.begin() + static_cast<std::ptrdiff_t>(s.begin * p.d), p.W.begin() + static_cast<std::ptrdiff_t>((s.begin + s.size) * p.d));
  std::vector<T> b(p.b.begin() + static_cast<std::ptrdiff_t>(s.begin), p.b.begin() + static_cast<std::ptrdiff_t>(s.begin + s.size));
  linear::LinearLogits<T> in = p.view();
  in.proj = W;
  in.bias = b;
  o.seq.assign(p.S(), 0);
  o.token.assign(p.N, 0);
  o.lse.assign(p.N, 0);
  o.ent.assign(p.N, 0);
  o.dH.assign(p.N * p.d, T(0.0f));
  o.dW.assign(s.size * p.d, 0);
  o.db.assign(s.size, 0);
  const linear::LinearGrads<T> g{.hidden = o.dH, .proj = o.dW, .bias = o.db, .z_loss = p.zeta};
  const linear::TokenOutputs<T> rows{.token_logp = o.token, .row_lse = o.lse, .entropy = o.ent};
  std::vector<std::byte> ws(comm ? vp::workspace_size(*comm, s, in) : linear::workspace_size(in));
  const std::span<const C> d_seq(p.d_seq);
  const std::span<const C> lse = mode != 0 ? std::span<const C>() : std::span<const C>(row_lse_in ? *row_lse_in : o.lse);
  if (comm && mode == 2) vp::forward_backward(*comm, s, in, d_seq, g, std::span<C>(o.seq), rows, std::span<std::byte>(ws));
  if (comm && mode != 2) {
    vp::forward(*comm, s, in, std::span<C>(o.seq), rows, std::span<std::byte>(ws));
    vp::backward(*comm, s, in, d_seq, g, lse, std::span<std::byte>(ws));
  }
  if (!comm && mode == 2) linear::forward_backward(in, d_seq, g, std::span<C>(o.seq), rows, std::span<std::byte>(ws));
  if (!comm && mode != 2) {
    linear::forward(in, std::span<C>(o.seq), rows, std::span<std::byte>(ws));
    linear::backward(in, d_seq, g, lse, std::span<std::byte>(ws));
  }
  return o;
}

template <class T>
void equality(dftune::distributed::MpiCommunicator& comm, double tol) {
  std::mt19937_64 rng(31);  // the same problem on both ranks
  for (int mode : {0, 1, 2}) {
    auto p = random_problem<T>(rng, 1001, 24, 16, linear::Layout::vocab_major, true);
    p.entropy = true;
    p.zeta = 1e-2;
    const VocabShard mine = linear::even_vocab_shard(p.V, comm.rank(), comm.size());
    // Mode 0's backward reads the single head's row_lse: rounded to the compute type, the two
    // forwards' lse may fall on either side of a float (tests/test_vocab_parallel.cpp, the tolerances).
    const Out<T> one = run<T, dftune::distributed::MpiCommunicator>(nullptr, p, {0, p.V}, mode);
    const Out<T> par = run<T>(&comm, p, mine, mode, &one.lse);
    for (std::uint64_t h : {bits(par.seq), bits(par.token), bits(par.lse), bits(par.ent), bits(par.dH)}) {
      const auto all = dftune::distributed::all_gather_values(comm, h);
      EXPECT(all[0] == all[1]);
    }
    // This rank's slice of the single head's dW and db.
    const std::vector<compute_t<T>> dW(one.dW.begin() + static_cast<std::ptrdiff_t>(mine.begin * p.d),
                                       one.dW.begin() + static_cast<std::ptrdiff_t>((mine.begin + mine.size) * p.d));
    const std::vector<compute_t<T>> db(one.db.begin() + static_cast<std::ptrdiff_t>(mine.begin),
                                       one.db.begin() + static_cast<std::ptrdiff_t>(mine.begin + mine.size));
    const double e[] = {rel_error(par.seq, one.seq, true), rel_error(par.token, one.token, true), rel_error(par.lse, one.lse, true),
                        rel_error(par.ent, one.ent, true),  rel_error(par.dH, one.dH, false),     rel_error(par.dW, dW, false),
                        rel_error(par.db, db, false)};
    for (double x : e) EXPECT(x <= tol);
    if (comm.rank() == 0)
      std::printf("vocab_parallel %s mode %d: relative differences seq %.2g token %.2g lse %.2g entropy %.2g dH %.2g dW %.2g db %.2g\n",
                  sizeof(compute_t<T>) == 4 ? "float" : "double", mode, e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
  }
}

void bad_shards(dftune::distributed::MpiCommunicator& comm) {
  std::mt19937_64 rng(32);
  const auto p = random_problem<float>(rng, 30, 4, 5, linear::Layout::vocab_major, true);
  const VocabShard s = comm.rank() == 0 ? VocabShard{0, 10} : VocabShard{10, 15};
  std::vector<float> W(p.W.begin() + static_cast<std::ptrdiff_t>(s.begin * p.d), p.W.begin() + static_cast<std::ptrdiff_t>((s.begin + s.size) * p.d));
  std::vector<float> b(p.b.begin() + static_cast<std::ptrdiff_t>(s.begin), p.b.begin() + static_cast<std::ptrdiff_t>(s.begin + s.size));
  linear::LinearLogits<float> in = p.view();
  in.proj = W;
  in.bias = b;
  std::vector<float> seq(p.S(), 7.0f), dH(p.N * p.d, 7.0f), dW(s.size * p.d, 7.0f);
  std::vector<std::byte> ws(vp::workspace_size(comm, s, in));
  std::string message = "no error";
  try {
    vp::forward_backward(comm, s, in, std::span<const float>(p.d_seq), {.hidden = dH, .proj = dW}, std::span<float>(seq), {},
                         std::span<std::byte>(ws));
  } catch (const dftune::error& e) {
    message = e.what();
  }
  EXPECT(message.rfind("shard: got slices (begin+size, in rank order) 0+10, 10+15 of vocab = 30", 0) == 0);
  const std::string first = dftune::distributed::broadcast_string(comm, message, 0);
  EXPECT(first == message);
  auto all7 = [](const std::vector<float>& v) { return std::all_of(v.begin(), v.end(), [](float x) { return x == 7.0f; }); };
  EXPECT(all7(seq) && all7(dH) && all7(dW));
  if (comm.rank() == 0) std::printf("vocab_parallel bad shards, on both ranks: %s\n", message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  dftune::distributed::MpiSession session(argc, argv);
  dftune::distributed::MpiCommunicator world;
  if (world.size() != 2) {
    std::fprintf(stderr, "test_mpi_vocab_parallel: run me as mpirun -np 2 (got %zu ranks)\n", world.size());
    return 2;
  }
  equality<float>(world, 1e-6);
  equality<double>(world, 1e-13);
  bad_shards(world);
  const auto all = dftune::distributed::all_gather_values(world, failures);
  const int total = all[0] + all[1];
  if (world.rank() == 0) std::printf("test_mpi_vocab_parallel: %s (%d failed checks)\n", total == 0 ? "PASS" : "FAIL", total);
  return total == 0 ? 0 : 1;
}
