// DFT and DFT2 on the categorical policy, written as the paper writes them (the step is in
// dft_reference.hpp, each line citing arXiv 2502.18679): a few SGD steps of each, printed.
// tests/test_dft_reference.cpp checks that the library's dft_step + Estimator and DftOptimizer
// compute the same numbers bit for bit.
#include "dft_reference.hpp"

#include <cstdio>
#include <optional>
#include <vector>

int main() {
  using namespace dft_reference;
  // Two prompts (contexts 0 and 1) over a vocabulary of 4; one positive and two negatives each,
  // with log π_ref of each negative.
  std::vector<Example> batch(2);
  batch[0].id = 0;
  batch[0].positive = {0, std::vector<int>{1, 2}};
  batch[0].negatives = {{0, std::vector<int>{3, 3}}, {0, std::vector<int>{1, 3}}};
  batch[0].ref_logp = {-1.2, -2.0};
  batch[1].id = 1;
  batch[1].positive = {1, std::vector<int>{0}};
  batch[1].negatives = {{1, std::vector<int>{2}}, {1, std::vector<int>{3}}};
  batch[1].ref_logp = {-0.7, -1.9};
  for (bool dft2 : {false, true}) {
    Policy p{4, std::vector<double>(8, 0.0)};
    std::vector<std::optional<double>> log_u(2);
    const Options o{.dft2 = dft2, .tau = dft2 ? 0.3 : 1.0, .gamma = dft2 ? 0.9 : 0.85, .eps = 1e-8, .log_u0 = std::nullopt, .lr = 0.5};
    std::printf("%s\n", dft2 ? "DFT2" : "DFT");
    for (int t = 0; t < 5; ++t) {
      const Step r = dft_step(p, log_u, batch, o);
      std::printf("  step %d  loss %8.4f  log pi(pos) %7.3f %7.3f  log u %7.3f %7.3f\n", t, r.loss,
                  p.log_pi(batch[0].positive), p.log_pi(batch[1].positive), *log_u[0], *log_u[1]);
    }
  }
}
