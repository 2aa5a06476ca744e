#pragma once
// The setup every thread-world test wrote out: a world of P ranks (threads), one result slot per
// rank, the run. per_rank(P, body) runs body(comm) on every rank and returns what each returned,
// in rank order, e.g. each rank's error_of(...) message for a "same error on every rank" check.
#include "../distributed/thread_world.hpp"

#include <cstddef>
#include <type_traits>
#include <vector>

namespace test {

template <class F>
auto per_rank(std::size_t P, F&& body) {
  std::vector<std::invoke_result_t<F&, ThreadWorld::Comm&>> out(P);
  ThreadWorld w(P);
  w.run([&](ThreadWorld::Comm& c) { out[c.rank()] = body(c); });
  return out;
}

}  // namespace test
