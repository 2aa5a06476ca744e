// Decoder<float> at GPT-2 124M's shape (12 layers, d 768, 12 heads, V 50257, 1024 positions):
// forward (sequence_logp) and forward + backward (zero_gradients + accumulate_gradients) of S
// sequences of L tokens (prompt 1 token, L − 1 scored), then one DFT step (DftOptimizer with AdamW:
// B positives of L tokens, m negatives each, π_ref's log-probs given). Prints one JSON line; threads
// from OMP_NUM_THREADS. bench/decoder_vs_torch.py runs it beside bench/torch_decoder.py.
//   decoder_step [S=4] [L=64] [reps=3] [B=2] [m=2]
#include <dftune/dftune.hpp>
#include <dftune/model/decoder/decoder.hpp>

#include "decoder_bench.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <omp.h>

using namespace dftune;
using bench::make_sequences;
using bench::peak_rss_mb;
using bench::seconds_since;

int main(int argc, char** argv) {
  auto arg = [&](int i, std::size_t d) { return argc > i ? static_cast<std::size_t>(std::atol(argv[i])) : d; };
  const std::size_t S = arg(1, 4), L = arg(2, 64), reps = arg(3, 3), B = arg(4, 2), m = arg(5, 2);
  decoder::Config c = decoder::tiny_gpt2(50257, 768, 12, 12, 1024);
  Decoder<float> model(c, 1);
  const double rss_model = peak_rss_mb();
  const Sequences batch = make_sequences(S, L, c.vocab, 0);
  std::vector<float> scores(S), d(S, 1.0f);
  auto time_it = [&](auto&& f) {
    f();  // warm-up: buffers grow once
    double best = 1e300;
    for (std::size_t r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      best = std::min(best, seconds_since(t0));
    }
    return best;
  };
  const double fwd = time_it([&] { model.sequence_logp(batch.view(), scores); });
  const double fb = time_it([&] {
    model.zero_gradients();
    model.accumulate_gradients(batch.view(), d);
  });
  const double rss_fb = peak_rss_mb();

  // One DFT step: B prompts with their positive, m negatives each (same length).
  const Sequences pos = make_sequences(B, L, c.vocab, 100), neg = make_sequences(B * m, L, c.vocab, 200);
  std::vector<std::int64_t> ids(B);
  for (std::size_t i = 0; i < B; ++i) ids[i] = static_cast<std::int64_t>(i);
  std::vector<float> ref(neg.size());
  model.sequence_logp(neg.view(), ref);
  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<float> est(B, opt);
  DftOptimizer optimizer(model, est, opt, AdamW<float>{}, ConstantSchedule{.base_lr = 1e-5});
  const DftBatch<float> dft{.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = m};
  const double step = time_it([&] { optimizer.step(dft); });
  std::printf("{\"impl\": \"dftune\", \"threads\": %d, \"S\": %zu, \"L\": %zu, \"forward_s\": %.4f, \"fwd_bwd_s\": %.4f, "
              "\"fwd_bwd_tokens_per_s\": %.1f, \"peak_rss_mb_model\": %.0f, \"peak_rss_mb_fwd_bwd\": %.0f, \"B\": %zu, \"m\": %zu, "
              "\"dft_step_s\": %.4f, \"peak_rss_mb_dft\": %.0f, \"score0\": %.6f}\n",
              omp_get_max_threads(), S, L, fwd, fb, static_cast<double>(S * L) / fb, rss_model, rss_fb, B, m, step, peak_rss_mb(),
              static_cast<double>(scores[0]));
}
