#pragma once
// A world of P ranks as P threads of one process, for testing data-parallel code without MPI; it is
// also the smallest complete user Communicator. all_reduce_sum sums in rank order, as
// distributed/mpi.hpp's default does, so both give the same bits.
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <span>
#include <thread>
#include <vector>

namespace test {

class ThreadWorld {
 public:
  explicit ThreadWorld(std::size_t P) : P_(P), barrier_(static_cast<std::ptrdiff_t>(P)), slots_(P) {}

  class Comm {
   public:
    Comm(ThreadWorld& w, std::size_t rank) : w_(&w), rank_(rank) {}
    std::size_t rank() const { return rank_; }
    std::size_t size() const { return w_->P_; }
    void all_reduce_sum(std::span<float> x) { reduce(x); }
    void all_reduce_sum(std::span<double> x) { reduce(x); }
    void all_gather(std::span<const std::byte> in, std::span<std::byte> out) {
      dftune::detail::check_size("all_gather out", out.size(), in.size() * size());
      publish(in);
      for (std::size_t r = 0; r < size(); ++r)
        std::copy(w_->slots_[r].begin(), w_->slots_[r].end(), out.begin() + static_cast<std::ptrdiff_t>(r * in.size()));
      barrier();
    }
    void broadcast(std::span<std::byte> x, std::size_t root) {
      publish(x);
      if (rank_ != root) std::copy(w_->slots_[root].begin(), w_->slots_[root].end(), x.begin());
      barrier();
    }
    void barrier() { w_->barrier_.arrive_and_wait(); }

   private:
    void publish(std::span<const std::byte> x) {
      w_->slots_[rank_].assign(x.begin(), x.end());
      barrier();
    }
    template <class T>
    void reduce(std::span<T> x) {
      publish(std::as_bytes(x));
      std::vector<T> v(x.size());
      for (std::size_t k = 0; k < x.size(); ++k) {
        T s = 0;
        for (std::size_t r = 0; r < size(); ++r) {
          T y;
          std::memcpy(&y, w_->slots_[r].data() + k * sizeof(T), sizeof(T));
          s = r == 0 ? y : s + y;
        }
        v[k] = s;
      }
      barrier();
      std::copy(v.begin(), v.end(), x.begin());
    }
    ThreadWorld* w_;
    std::size_t rank_;
  };

  // Runs f(comm) on P threads and waits for them; rethrows the exception of the lowest rank that
  // let one escape (a rank that throws outside distributed::agree would leave the others blocked,
  // which is what agree is for).
  void run(const std::function<void(Comm&)>& f) {
    std::vector<std::exception_ptr> errors(P_);
    std::vector<std::thread> threads;
    for (std::size_t r = 0; r < P_; ++r)
      threads.emplace_back([&, r] {
        Comm c(*this, r);
        try {
          f(c);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }

 private:
  std::size_t P_;
  std::barrier<> barrier_;
  std::vector<std::vector<std::byte>> slots_;
};

static_assert(dftune::distributed::check_communicator<ThreadWorld::Comm>());

}  // namespace test
