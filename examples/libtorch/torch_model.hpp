#pragma once
// A libtorch model behind dftune's Model concept: libtorch computes the logits (and, through
// autograd, the chain rule from logits to its parameters); dftune computes the token log-prob
// reduction and its fused backward, the DFT objective and the optimizer step.
//
//   TorchModel<Net> model(net, vocab);   // Net: a torch::nn::Module with forward(prev_tokens) -> [N, V] logits
//   dftune::DftOptimizer dft(model, estimator, options, dftune::AdamW<float>{}, schedule);
//
// The only trick: dftune's inner rule wants the parameters and gradients as two flat spans, and
// torch keeps one tensor per parameter. The constructor moves every parameter into one flat
// buffer (each parameter becomes a view of its slice), so the rule's in-place update is what the
// network sees on its next forward; gradients are gathered into a second flat buffer.
#include <dftune/dftune.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

// The network of the example: the logits of token t depend on token t − 1 only (a bigram MLP).
struct BigramNet : torch::nn::Module {
  BigramNet(std::int64_t vocab, std::int64_t hidden)
      : emb(register_module("emb", torch::nn::Embedding(vocab, hidden))),
        out(register_module("out", torch::nn::Linear(hidden, vocab))) {}
  torch::Tensor forward(const torch::Tensor& prev) { return out(torch::tanh(emb(prev))); }
  torch::nn::Embedding emb;
  torch::nn::Linear out;
};

template <class Net>
class TorchModel {
 public:
  using scalar_type = float;

  TorchModel(std::shared_ptr<Net> net, std::size_t vocab) : net_(std::move(net)), vocab_(vocab) {
    torch::NoGradGuard no_grad;
    params_ = net_->parameters();
    std::int64_t total = 0;
    for (const auto& p : params_) {
      if (p.scalar_type() != torch::kFloat32) dftune::detail::fail("net parameters", p.scalar_type(), "float32");
      total += p.numel();
    }
    flat_ = torch::empty({total}, torch::kFloat32);
    flat_grad_ = torch::zeros({total}, torch::kFloat32);
    std::int64_t at = 0;
    for (auto& p : params_) {
      auto slice = flat_.narrow(0, at, p.numel()).view(p.sizes());
      slice.copy_(p);
      p.set_data(slice);  // the parameter now lives in flat_
      at += p.numel();
    }
  }

  std::size_t vocab_size() const { return vocab_; }
  std::span<float> parameters() { return {flat_.data_ptr<float>(), static_cast<std::size_t>(flat_.numel())}; }
  std::span<float> gradients() { return {flat_grad_.data_ptr<float>(), static_cast<std::size_t>(flat_grad_.numel())}; }
  void zero_gradients() { flat_grad_.zero_(); }
  Net& net() { return *net_; }

  void sequence_logp(const dftune::SequenceBatch& batch, std::span<float> scores) {
    gather(batch);
    dftune::detail::check_size("scores", scores.size(), batch.size());
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = net_->forward(prev_).contiguous();
    dftune::logprob::forward(view(logits), scores);
  }

  // grads += Σ_s d_s ∇ score_s: dftune's fused backward gives ∂/∂logits, autograd takes it from
  // there to the parameters.
  void accumulate_gradients(const dftune::SequenceBatch& batch, std::span<const float> d_scores) {
    gather(batch);
    dftune::detail::check_size("d_scores", d_scores.size(), batch.size());
    for (auto& p : params_) p.mutable_grad() = torch::Tensor();
    const torch::Tensor logits = net_->forward(prev_);
    const torch::Tensor z = logits.detach().contiguous();
    torch::Tensor dz = torch::empty_like(z);
    dftune::logprob::backward(view(z), d_scores,
                              std::span<float>(dz.data_ptr<float>(), static_cast<std::size_t>(dz.numel())));
    logits.backward(dz);
    torch::NoGradGuard no_grad;
    std::int64_t at = 0;
    for (auto& p : params_) {
      if (p.grad().defined()) flat_grad_.narrow(0, at, p.numel()).add_(p.grad().reshape({-1}));
      at += p.numel();
    }
  }

 private:
  // One row per completion token: the previous token (the network's input) and the target.
  void gather(const dftune::SequenceBatch& batch) {
    dftune::validate(batch, vocab_);
    std::vector<std::int64_t> prev;
    targets_.clear();
    offsets_.assign(1, 0);
    for (std::size_t s = 0; s < batch.size(); ++s) {
      const auto seq = batch.sequence(s);
      for (auto t = static_cast<std::size_t>(batch.prompt_len[s]); t < seq.size(); ++t) {
        prev.push_back(seq[t - 1]);
        targets_.push_back(seq[t]);
      }
      offsets_.push_back(static_cast<std::int64_t>(targets_.size()));
    }
    prev_ = torch::tensor(prev, torch::kInt64);
  }
  dftune::logprob::TokenLogits<float> view(const torch::Tensor& logits) const {
    return {.logits = std::span<const float>(logits.data_ptr<float>(), static_cast<std::size_t>(logits.numel())),
            .vocab = vocab_, .targets = targets_, .weights = {}, .offsets = offsets_};
  }

  std::shared_ptr<Net> net_;
  std::size_t vocab_;
  std::vector<torch::Tensor> params_;
  torch::Tensor flat_, flat_grad_, prev_;
  std::vector<dftune::token_t> targets_;
  std::vector<std::int64_t> offsets_;
};
