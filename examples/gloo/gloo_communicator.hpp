#pragma once
// A dftune Communicator over a PyTorch c10d process group (docs/distributed.md, "Your own
// communicator"): ProcessGroupGloo on CPUs here; the same adapter takes a ProcessGroupNCCL, whose
// tensors would live on the GPU. It is the whole adapter: dftune needs five collectives, and c10d
// has them all. Gloo's CPU all-reduce (ring) hands every rank the same bits, which is what keeps
// the parameter replicas identical.
#include <dftune/distributed/communicator.hpp>
#include <dftune/error.hpp>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/types.h>  // not torch/torch.h: tensors are all this needs, at half its parse time

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

class C10dCommunicator {
 public:
  explicit C10dCommunicator(c10::intrusive_ptr<c10d::ProcessGroup> group) : pg_(std::move(group)) {}

  std::size_t rank() const { return static_cast<std::size_t>(pg_->getRank()); }
  std::size_t size() const { return static_cast<std::size_t>(pg_->getSize()); }

  void all_reduce_sum(std::span<float> x) { reduce(x, torch::kFloat32); }
  void all_reduce_sum(std::span<double> x) { reduce(x, torch::kFloat64); }

  void all_gather(std::span<const std::byte> in, std::span<std::byte> out) {
    dftune::detail::check_size("all_gather out", out.size(), in.size() * size());
    if (in.empty()) return;
    const auto n = static_cast<std::int64_t>(in.size());
    std::vector<at::Tensor> input{bytes(const_cast<std::byte*>(in.data()), n)};  // read, never written
    std::vector<std::vector<at::Tensor>> output(1);
    for (std::size_t r = 0; r < size(); ++r) output[0].push_back(bytes(out.data() + r * in.size(), n));
    pg_->allgather(output, input)->wait();
  }

  void broadcast(std::span<std::byte> x, std::size_t root) {
    if (x.empty()) return;
    std::vector<at::Tensor> t{bytes(x.data(), static_cast<std::int64_t>(x.size()))};
    c10d::BroadcastOptions o;
    o.rootRank = static_cast<std::int64_t>(root);
    pg_->broadcast(t, o)->wait();
  }

  void barrier() { pg_->barrier()->wait(); }

 private:
  static at::Tensor bytes(std::byte* p, std::int64_t n) { return torch::from_blob(p, {n}, torch::kUInt8); }

  template <class T>
  void reduce(std::span<T> x, c10::ScalarType type) {
    if (x.empty()) return;
    std::vector<at::Tensor> t{torch::from_blob(x.data(), {static_cast<std::int64_t>(x.size())}, type)};
    pg_->allreduce(t)->wait();  // c10d::ReduceOp::SUM, in place
  }

  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
};

static_assert(dftune::distributed::check_communicator<C10dCommunicator>());
