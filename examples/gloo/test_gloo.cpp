// The data-parallel DFT step over PyTorch's ProcessGroupGloo (through C10dCommunicator): two ranks
// as two threads of this process, meeting through a c10d::FileStore. The P = 2 run follows the
// single-process run of the same global batches (≤ 1e-12), the replicas stay identical, and a bad
// input on rank 1 is the same error on both ranks.
#include "gloo_communicator.hpp"

#include "distributed/scenario.hpp"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdio>
#include <filesystem>
#include <thread>

using namespace dftune;

int main() {
  const std::size_t P = 2, V = 6, B = 8, steps = 12;
  CategoricalPolicy<double> init(V, V);
  std::mt19937_64 rng(1);
  std::normal_distribution<double> z(0, 0.5);
  for (double& x : init.parameters()) x = z(rng);
  CategoricalPolicy<double> ref = init;
  const scenario::Problem problem = scenario::make_problem(ref, 32, 2, 3);
  const scenario::Outcome one = scenario::run(problem, init, Variant::dft, B, steps, distributed::Single{});

  const auto store_path = std::filesystem::temp_directory_path() / ("dftune_gloo_store_" + std::to_string(::getpid()));
  std::filesystem::remove(store_path);
  std::vector<scenario::Outcome> out(P);
  std::vector<std::string> errors(P);
  std::vector<std::thread> ranks;
  for (std::size_t r = 0; r < P; ++r)
    ranks.emplace_back([&, r] {
      auto store = c10::make_intrusive<c10d::FileStore>(store_path.string(), static_cast<int>(P));
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      C10dCommunicator comm(c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(r), static_cast<int>(P), options));
      out[r] = scenario::run(problem, init, Variant::dft, B, steps, comm);
      scenario::Trainer<CategoricalPolicy<double>, C10dCommunicator> t(problem, init, Variant::dft, B, comm);
      scenario::Batch bad = t.next_batch();
      if (r == 1) bad.ids[0] = 0;  // an id of rank 0
      try {
        t.opt.step(bad.view());
      } catch (const dftune::error& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  std::filesystem::remove(store_path);

  int failed = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) std::fprintf(stderr, "test_gloo: FAILED: %s\n", what), ++failed;
  };
  const double d = scenario::rel_diff(out[0].params, one.params);
  std::printf("gloo: P=2 over ProcessGroupGloo vs P=1 after %zu AdamW steps: max|dθ|/max|θ| = %.1e\n", steps, d);
  check(d <= 1e-12, "P = 2 follows P = 1 to 1e-12");
  check(scenario::bit_equal(out[0].params, out[1].params), "the replicas are identical");
  check(!errors[0].empty() && errors[0] == errors[1], "the same error on both ranks");
  std::printf("gloo: a bad id on rank 1 -> both ranks: %s\n", errors[0].c_str());
  return failed == 0 ? 0 : 1;
}
