// dftune drives the DFT step of a libtorch model: libtorch computes the logits, dftune does the
// rest (log-prob reduction, DFT objective with its estimator, AdamW + cosine on the flat
// parameters). The task: after prompt c, answer c+1, c+2, c+3 (mod V); negatives are sampled
// from the frozen initial model at temperature 0.7, fresh each epoch, as in the paper's recipe.
#include "torch_model.hpp"

#include <dftune/io/checkpoint.hpp>

#include <cstdio>
#include <filesystem>

namespace {

constexpr std::int64_t V = 12, H = 16;
constexpr std::size_t kPrompts = 12, kNeg = 2, kLen = 3;

// Completions of kLen tokens after `prompt`, token by token from softmax(logits / temperature).
std::vector<dftune::token_t> sample(BigramNet& net, dftune::token_t prompt, double temperature, torch::Generator& gen) {
  torch::NoGradGuard no_grad;
  std::vector<dftune::token_t> out;
  std::int64_t prev = prompt;
  for (std::size_t t = 0; t < kLen; ++t) {
    const auto p = torch::softmax(net.forward(torch::tensor({prev})) / temperature, 1);
    prev = torch::multinomial(p, 1, false, gen).item<std::int64_t>();
    out.push_back(static_cast<dftune::token_t>(prev));
  }
  return out;
}

}  // namespace

int main() {
  using namespace dftune;
  torch::manual_seed(0);
  auto net = std::make_shared<BigramNet>(V, H);
  auto frozen = std::make_shared<BigramNet>(V, H);  // π_ref: a copy of the initial weights
  {
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < net->parameters().size(); ++k) frozen->parameters()[k].copy_(net->parameters()[k]);
  }
  TorchModel<BigramNet> model(net, V), ref(frozen, V);
  static_assert(check_model<TorchModel<BigramNet>>());

  const DftOptions opt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
  Estimator<float> est(kPrompts, opt);
  const std::size_t epochs = 30;
  DftOptimizer dft(model, est, opt, AdamW<float>(AdamOptions{.weight_decay = 0.0}),
                   CosineSchedule{.base_lr = 0.03, .warmup_steps = 3, .total_steps = epochs});
  auto gen = at::detail::createCPUGenerator(1);
  std::vector<std::int64_t> ids;
  Sequences pos;
  for (std::size_t i = 0; i < kPrompts; ++i) {
    const auto c = static_cast<token_t>(i % V);
    const auto at = [&](int k) { return static_cast<token_t>((c + k) % V); };
    ids.push_back(static_cast<std::int64_t>(i));
    pos.push(std::vector<token_t>{c}, std::vector<token_t>{at(1), at(2), at(3)});
  }
  std::printf("epoch  loss      mean log pi(y|x)  mean log pi(y'|x)\n");
  for (std::size_t e = 0; e < epochs; ++e) {
    Sequences neg;
    for (std::size_t i = 0; i < kPrompts; ++i)
      for (std::size_t j = 0; j < kNeg; ++j) neg.push(std::vector<token_t>{static_cast<token_t>(i % V)}, sample(*frozen, static_cast<token_t>(i % V), 0.7, gen));
    std::vector<float> ref_logp(neg.size());
    ref.sequence_logp(neg.view(), ref_logp);
    const auto info = dft.step({.ids = ids, .positives = pos.view(), .negatives = neg.view(),
                                .ref_neg_logp = ref_logp, .num_negatives = kNeg});
    if (e % 5 == 0 || e + 1 == epochs)
      std::printf("%5zu  %8.4f  %16.4f  %17.4f\n", info.step, static_cast<double>(info.result.loss),
                  static_cast<double>(info.mean_pos_logp), static_cast<double>(info.mean_neg_logp));
  }
  const auto path = std::filesystem::temp_directory_path() / "dftune_libtorch.ckpt";
  io::save(path, dft);
  std::printf("checkpoint: %s (%ju bytes)\n", path.string().c_str(), static_cast<std::uintmax_t>(std::filesystem::file_size(path)));
  std::filesystem::remove(path);
  return 0;
}
