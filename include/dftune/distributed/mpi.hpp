#pragma once
// A Communicator over MPI (docs/distributed.md). Include it explicitly — the umbrella header never
// does — and link the CMake target dftune::mpi (dftune + MPI::MPI_CXX), defined when MPI is found.
//
//   int train(int argc, char** argv) {
//     dftune::distributed::MpiCommunicator comm;            // MPI_COMM_WORLD
//     dftune::Estimator<double> est(N, opt, dftune::distributed::shard_of(comm));
//     dftune::DftOptimizer dft(model, est, opt, dftune::AdamW<double>{}, schedule, {}, comm);
//     …
//   }
//   int main(int argc, char** argv) { return dftune::distributed::run_main(argc, argv, train); }
//
// all_reduce_sum, by default (MpiReduction::rank_ordered), sums every element in rank order,
//   x ← ((x_0 + x_1) + x_2) + … + x_{P−1},
// whatever algorithm Open MPI would have picked: an all-to-all hands chunk c of every rank's vector
// to rank c, rank c adds the P copies in rank order, and an all-gather returns the chunks. That is
// a reduce-scatter followed by an all-gather, so each rank sends and receives 2·(P−1)/P of the
// vector, as a ring all-reduce does; the bits are the same on every rank and depend only on the
// inputs and P. MpiReduction::native calls MPI_Allreduce instead (its order is Open MPI's; it is
// the same for the same P and message size, which is all the bitwise-at-fixed-P guarantee needs).
//
// Errors: MPI's default handler (MPI_ERRORS_ARE_FATAL) ends the whole job when a call fails — a
// dead peer ends the job instead of hanging it; if a caller installed MPI_ERRORS_RETURN, a failed
// call throws dftune::device_error with MPI's message. Calls are made from one thread at a time
// (MPI_THREAD_FUNNELED is enough; OpenMP threads inside a rank never call MPI).
#include <dftune/config.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>

// Only MPI's C API is used: keep the deprecated C++ bindings (which do not compile warning-free
// under -Wextra) out of the translation unit.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace distributed {

namespace detail {

inline void check(int rc, std::string_view call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  dftune::detail::fail<device_error>(call, "MPI error " + std::to_string(rc) + " (" + std::string(text, static_cast<std::size_t>(len)) + ")",
                                     "MPI_SUCCESS");
}

template <class T>
MPI_Datatype datatype() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else return MPI_DOUBLE;
}

inline int count(std::size_t n, std::string_view what) {
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    dftune::detail::fail(what, n, "at most INT_MAX elements per MPI call");
  return static_cast<int>(n);
}

}  // namespace detail

// MPI_Init_thread(MPI_THREAD_FUNNELED) unless MPI is already initialised, and MPI_Finalize at the
// end of its scope if it initialised MPI.
//
// An exception that leaves the session's scope (std::uncaught_exceptions() is higher than when the
// session was made) ends the whole job with MPI_Abort instead: MPI_Finalize is collective, so a
// rank that finalises while its peers wait in a collective would wait with them forever, and the
// exception's message would never be printed. The destructor cannot see that exception (it is not
// caught yet), so it prints only where it happened; run_main (below) prints its message. In a world
// of one nothing can hang: the session finalises and the exception goes on to the caller's handler.
class MpiSession {
 public:
  // Starts MPI (MPI_Init_thread, FUNNELED) with the program's arguments, unless it is already
  // running; then this session does not finalise it. MPI failures: dftune::device_error.
  MpiSession(int& argc, char**& argv) { init(&argc, &argv); }
  MpiSession() { init(nullptr, nullptr); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession() {
    int finalised = 0;
    if (!owner_ || MPI_Finalized(&finalised) != MPI_SUCCESS || finalised) return;
    if (std::uncaught_exceptions() > uncaught_at_start_ && world_size() > 1)
      abort_job("an exception left the scope of dftune::distributed::MpiSession (wrap main in "
                "dftune::distributed::run_main to see its message); MPI_Abort instead of MPI_Finalize, "
                "which would wait for the other ranks forever");
    MPI_Finalize();
  }

  // Prints "rank r of P: <message>" on stderr and ends every rank of MPI_COMM_WORLD (MPI_Abort).
  [[noreturn]] static void abort_job(std::string_view message, int exit_code = 1) {
    int r = 0;
    if (MPI_Comm_rank(MPI_COMM_WORLD, &r) != MPI_SUCCESS) r = -1;
    std::fprintf(stderr, "rank %d of %d: %.*s\n", r, world_size(), static_cast<int>(message.size()), message.data());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::abort();  // MPI_Abort does not return; this is for the compiler
  }

 private:
  static int world_size() {
    int p = 0;
    return MPI_Comm_size(MPI_COMM_WORLD, &p) == MPI_SUCCESS ? p : 0;
  }
  void init(int* argc, char*** argv) {
    int initialised = 0;
    detail::check(MPI_Initialized(&initialised), "MPI_Initialized");
    if (initialised) return;
    int provided = 0;
    detail::check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owner_ = true;
  }
  bool owner_ = false;
  int uncaught_at_start_ = std::uncaught_exceptions();
};

// A main for an MPI program:
//
//   int main(int argc, char** argv) {
//     return dftune::distributed::run_main(argc, argv, [](int argc, char** argv) { … return 0; });
//   }
//
// starts MPI (MpiSession), calls fn(argc, argv) (the arguments MPI_Init left) and returns its
// status after MPI_Finalize. If fn throws on any rank, that rank prints "rank r of P: <what()>" on
// stderr and ends the whole job with MPI_Abort(MPI_COMM_WORLD, 1) — the others may be waiting in a
// collective for it and would otherwise wait forever (mpirun then reports the abort and exits
// non-zero within seconds). In a world of one the message is printed and run_main returns 1.
template <class F>
int run_main(int argc, char** argv, F&& fn) {
  std::string message;
  {
    MpiSession session(argc, argv);
    try {
      return std::forward<F>(fn)(argc, argv);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "an exception that is not a std::exception";
    }
    int p = 0;
    if (MPI_Comm_size(MPI_COMM_WORLD, &p) == MPI_SUCCESS && p > 1) MpiSession::abort_job(message);
  }
  std::fprintf(stderr, "rank 0 of 1: %s\n", message.c_str());
  return 1;
}

// How MpiCommunicator::all_reduce_sum adds the ranks' values (MpiOptions::reduction).
enum class MpiReduction {
  rank_ordered,  // all-to-all + sum in rank order + all-gather (the default: order documented above)
  native,        // MPI_Allreduce(MPI_SUM)
};

// Options of MpiCommunicator.
struct MpiOptions {
  MpiReduction reduction = MpiReduction::rank_ordered;  // rank_ordered: bit-identical sums on every rank, whatever MPI's algorithm
  // Elements per all-reduce round (at most INT_MAX / 2: MPI counts are int); the rank-ordered
  // reduction's scratch buffer is one round long.
  std::size_t max_elements_per_round = std::size_t{1} << 27;
};

// Does not own the MPI_Comm (MPI_COMM_WORLD, or one the caller made and frees).
class MpiCommunicator {
 public:
  // A Communicator over `comm` (MPI must be running: MpiSession). Errors: dftune::argument_error for
  // an invalid reduction or max_elements_per_round outside [1, INT_MAX / 2]; dftune::device_error
  // when MPI fails.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD, MpiOptions options = {}) : comm_(comm), opt_(options) {
    if (opt_.reduction != MpiReduction::rank_ordered && opt_.reduction != MpiReduction::native)
      dftune::detail::fail("reduction", static_cast<int>(opt_.reduction), "MpiReduction::rank_ordered or native");
    if (opt_.max_elements_per_round == 0 ||
        opt_.max_elements_per_round > static_cast<std::size_t>(std::numeric_limits<int>::max() / 2))
      dftune::detail::fail("max_elements_per_round", opt_.max_elements_per_round, "a count in [1, INT_MAX / 2]");
    int r = 0, p = 0;
    detail::check(MPI_Comm_rank(comm_, &r), "MPI_Comm_rank");
    detail::check(MPI_Comm_size(comm_, &p), "MPI_Comm_size");
    rank_ = static_cast<std::size_t>(r);
    size_ = static_cast<std::size_t>(p);
  }

  // This process's rank in the communicator.
  std::size_t rank() const { return rank_; }
  // The number of ranks P.
  std::size_t size() const { return size_; }
  // The MPI communicator (not owned).
  MPI_Comm handle() const { return comm_; }
  // The options it was built with.
  const MpiOptions& options() const { return opt_; }

  // x ← Σ over ranks of x, in rounds of max_elements_per_round; every rank must pass the same size.
  void all_reduce_sum(std::span<float> x) { reduce(x); }
  // x ← Σ over ranks of x (as the float overload).
  void all_reduce_sum(std::span<double> x) { reduce(x); }

  // out = every rank's `in`, rank 0's first; out must hold in.size() · P bytes (dftune::argument_error).
  void all_gather(std::span<const std::byte> in, std::span<std::byte> out) {
    dftune::detail::check_size("all_gather out", out.size(), in.size() * size_);
    const int n = detail::count(in.size(), "all_gather in");
    detail::check(MPI_Allgather(in.data(), n, MPI_BYTE, out.data(), n, MPI_BYTE, comm_), "MPI_Allgather");
  }

  // x ← root's x on every rank; root must be in [0, P) (dftune::argument_error).
  void broadcast(std::span<std::byte> x, std::size_t root) {
    if (root >= size_) dftune::detail::fail("root", root, "a rank in [0, " + std::to_string(size_) + ")");
    for (std::size_t done = 0; done < x.size();) {  // in rounds: MPI counts are int
      const std::size_t n = std::min<std::size_t>(x.size() - done, std::numeric_limits<int>::max());
      detail::check(MPI_Bcast(x.data() + done, static_cast<int>(n), MPI_BYTE, static_cast<int>(root), comm_), "MPI_Bcast");
      done += n;
    }
  }

  // Returns when every rank has called it.
  void barrier() { detail::check(MPI_Barrier(comm_), "MPI_Barrier"); }

 private:
  template <class T>
  void reduce(std::span<T> x) {
    if (size_ == 1) return;
    for (std::size_t done = 0; done < x.size();) {
      const std::size_t n = std::min(x.size() - done, opt_.max_elements_per_round);
      if (opt_.reduction == MpiReduction::native)
        detail::check(MPI_Allreduce(MPI_IN_PLACE, x.data() + done, static_cast<int>(n), detail::datatype<T>(),
                                        MPI_SUM, comm_),
                          "MPI_Allreduce");
      else reduce_rank_ordered(x.subspan(done, n));
      done += n;
    }
  }

  // Chunk c of the n elements is [start(c), start(c + 1)): ⌊n/P⌋ elements, one more for the first n mod P.
  template <class T>
  void reduce_rank_ordered(std::span<T> x) {
    const std::size_t P = size_, n = x.size();
    auto start = [&](std::size_t c) { return c * (n / P) + std::min(c, n % P); };
    counts_.resize(P);
    displs_.resize(P);
    rcounts_.resize(P);
    rdispls_.resize(P);
    const std::size_t mine = start(rank_ + 1) - start(rank_);
    for (std::size_t c = 0; c < P; ++c) {
      counts_[c] = static_cast<int>(start(c + 1) - start(c));
      displs_[c] = static_cast<int>(start(c));
      rcounts_[c] = static_cast<int>(mine);
      rdispls_[c] = static_cast<int>(c * mine);  // P·mine < n + P: fits, n <= INT_MAX / 2 per round
    }
    scratch_.resize(P * mine * sizeof(T));
    T* in = reinterpret_cast<T*>(scratch_.data());
    const MPI_Datatype t = detail::datatype<T>();
    detail::check(MPI_Alltoallv(x.data(), counts_.data(), displs_.data(), t, in, rcounts_.data(), rdispls_.data(), t, comm_),
                      "MPI_Alltoallv");
    T* out = x.data() + start(rank_);
    for (std::size_t k = 0; k < mine; ++k) {
      T s = in[k];  // rank 0's element, then ranks 1, …, P−1 in order
      for (std::size_t q = 1; q < P; ++q) s += in[q * mine + k];
      out[k] = s;
    }
    detail::check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x.data(), counts_.data(), displs_.data(), t, comm_),
                      "MPI_Allgatherv");
  }

  MPI_Comm comm_;
  MpiOptions opt_;
  std::size_t rank_ = 0, size_ = 1;
  std::vector<int> counts_, displs_, rcounts_, rdispls_;
  std::vector<std::byte> scratch_;
};

static_assert(check_communicator<MpiCommunicator>());

}  // namespace distributed

DFTUNE_NAMESPACE_END
