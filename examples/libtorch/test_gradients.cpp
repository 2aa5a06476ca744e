// The libtorch model's gradients, computed by dftune (fused log-prob backward + DFT objective)
// and handed to autograd at the logits, against autograd all the way: torch's own log_softmax,
// gather and per-sequence sums, and the DFT loss of docs/math.md written in torch with detached
// weights. Exit status 0 when every check passes.
#include "torch_model.hpp"

#include <cmath>
#include <cstdio>

namespace {

int failures = 0;

void check_close(const char* what, std::span<const float> got, const torch::Tensor& want, double rtol, double atol) {
  const torch::Tensor w = want.contiguous().to(torch::kFloat64).reshape({-1});
  double worst = 0;
  bool ok = static_cast<std::int64_t>(got.size()) == w.numel();
  for (std::size_t k = 0; ok && k < got.size(); ++k) {
    const double a = got[k], b = w[static_cast<std::int64_t>(k)].item<double>();
    const double err = std::fabs(a - b) / (atol + rtol * std::fabs(b));
    worst = std::max(worst, err);
    ok = ok && std::isfinite(a) && err <= 1;
  }
  std::printf("%-58s %s (worst error / tolerance %.3f)\n", what, ok ? "ok" : "FAILED", worst);
  failures += !ok;
}

// Flat gradients of the net, as autograd left them in .grad.
torch::Tensor autograd_flat(BigramNet& net) {
  std::vector<torch::Tensor> g;
  for (auto& p : net.parameters()) g.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros({p.numel()}));
  return torch::cat(g);
}

// Per-sequence log π(completion | prompt) computed by torch alone, differentiable.
torch::Tensor torch_scores(BigramNet& net, const dftune::Sequences& s) {
  std::vector<std::int64_t> prev, target, seq_of;
  const auto b = s.view();
  for (std::size_t i = 0; i < b.size(); ++i) {
    const auto q = b.sequence(i);
    for (auto t = static_cast<std::size_t>(b.prompt_len[i]); t < q.size(); ++t) {
      prev.push_back(q[t - 1]);
      target.push_back(q[t]);
      seq_of.push_back(static_cast<std::int64_t>(i));
    }
  }
  const auto lp = torch::log_softmax(net.forward(torch::tensor(prev)), 1).gather(1, torch::tensor(target).unsqueeze(1)).squeeze(1);
  return torch::zeros({static_cast<std::int64_t>(b.size())}).index_add(0, torch::tensor(seq_of), lp);
}

}  // namespace

int main() {
  using namespace dftune;
  torch::manual_seed(3);
  constexpr std::int64_t V = 9, H = 7;
  auto net = std::make_shared<BigramNet>(V, H);
  TorchModel<BigramNet> model(net, V);
  static_assert(Model<TorchModel<BigramNet>>);

  // B = 3 prompts, m = 2 negatives each, completions of different lengths.
  Sequences pos, neg;
  pos.push(std::vector<token_t>{1}, std::vector<token_t>{2, 3, 4});
  pos.push(std::vector<token_t>{5, 0}, std::vector<token_t>{8});
  pos.push(std::vector<token_t>{7}, std::vector<token_t>{6, 6});
  neg.push(std::vector<token_t>{1}, std::vector<token_t>{3});
  neg.push(std::vector<token_t>{1}, std::vector<token_t>{2, 2, 4, 0});
  neg.push(std::vector<token_t>{5, 0}, std::vector<token_t>{1, 4});
  neg.push(std::vector<token_t>{5, 0}, std::vector<token_t>{8});
  neg.push(std::vector<token_t>{7}, std::vector<token_t>{0, 1, 2});
  neg.push(std::vector<token_t>{7}, std::vector<token_t>{6});

  // 1. scores: dftune's reduction over torch's logits against torch's log_softmax + gather + sum.
  std::vector<float> s(pos.size());
  model.sequence_logp(pos.view(), s);
  check_close("sequence log-probs vs torch", s, torch_scores(*net, pos).detach(), 1e-5, 1e-6);

  // 2. Σ_s d_s ∇ score_s: dftune's backward at the logits, then autograd, against autograd alone.
  const std::vector<float> d{0.7f, -1.3f, 0.25f};
  model.zero_gradients();
  model.accumulate_gradients(pos.view(), d);
  for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
  (torch_scores(*net, pos) * torch::tensor(std::vector<float>(d))).sum().backward();
  check_close("grad of sum_s d_s score_s vs autograd", model.gradients(), autograd_flat(*net), 1e-4, 1e-6);

  // 3. The DFT step's gradient (DftOptimizer's path: objective → d loss/d score → backward)
  //    against autograd on the DFT loss written in torch, for DFT and DFT2, first visit.
  const std::vector<float> ref{-2.1f, -5.0f, -3.3f, -1.9f, -4.4f, -2.0f};
  const std::vector<std::int64_t> ids{0, 1, 2};
  for (Variant v : {Variant::dft, Variant::dft2}) {
    const DftOptions opt{.variant = v, .tau = v == Variant::dft ? 1.0 : 0.3, .gamma = 0.9};
    Estimator<float> est(3, opt);
    std::vector<float> sp(3), sn(6);
    model.sequence_logp(pos.view(), sp);
    model.sequence_logp(neg.view(), sn);
    std::vector<std::int64_t> pl, nl;
    for (std::size_t i = 0; i < 3; ++i) pl.push_back(pos.view().completion_length(i));
    for (std::size_t k = 0; k < 6; ++k) nl.push_back(neg.view().completion_length(k));
    const auto r = dft_loss<float>({.ids = ids, .pos_logp = sp, .neg_logp = sn, .ref_neg_logp = ref,
                                    .pos_len = pl, .neg_len = nl, .num_negatives = 2}, est, opt);
    model.zero_gradients();
    model.accumulate_gradients(pos.view(), r.grad_pos);
    model.accumulate_gradients(neg.view(), r.grad_neg);

    // L = (1/B) Σ_i [ −s_i + (1/m) Σ_j sg(exp(d_ij − log u_i)) s'_ij ], log u_i = logmeanexp_j d_ij.
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    auto lp_pos = torch_scores(*net, pos), lp_neg = torch_scores(*net, neg);
    const bool dft2 = v == Variant::dft2;
    const auto len_pos = torch::tensor(std::vector<float>(pl.begin(), pl.end())) + 1e-8;
    const auto len_neg = torch::tensor(std::vector<float>(nl.begin(), nl.end())) + 1e-8;
    const auto s_pos = dft2 ? lp_pos / len_pos : lp_pos;
    const auto s_neg = (dft2 ? lp_neg / len_neg : lp_neg).reshape({3, 2});
    const auto dij = s_neg.detach() / opt.tau - (dft2 ? torch::zeros({3, 2}) : torch::tensor(ref).reshape({3, 2}));
    const auto log_u = torch::logsumexp(dij, 1, true) - std::log(2.0);
    const auto w = torch::exp(dij - log_u);
    const auto L = (-s_pos + (w * s_neg).mean(1)).mean();
    L.backward();
    check_close(v == Variant::dft ? "DFT loss gradient vs autograd" : "DFT2 loss gradient vs autograd", model.gradients(),
                autograd_flat(*net), 1e-4, 1e-6);
    check_close("  and the loss itself", std::span<const float>(&r.loss, 1), L.detach(), 1e-5, 1e-6);
  }

  // 4. One DftOptimizer step with SGD moves the torch parameters by −lr · that gradient.
  {
    const DftOptions opt{};
    Estimator<float> est(3, opt);
    const std::vector<float> before(model.parameters().begin(), model.parameters().end());
    DftOptimizer dft(model, est, opt, Sgd<float>{}, ConstantSchedule{.base_lr = 0.5});
    dft.step({.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = 2});
    const std::vector<float> g(model.gradients().begin(), model.gradients().end());
    std::vector<float> moved;
    for (auto& p : net->parameters()) {
      const auto flat = p.detach().reshape({-1});
      for (std::int64_t k = 0; k < flat.numel(); ++k) moved.push_back(flat[k].item<float>());
    }
    torch::Tensor want = torch::tensor(before) - 0.5 * torch::tensor(g);
    check_close("a DftOptimizer step updates the torch module in place", moved, want, 1e-6, 1e-7);
  }
  std::printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
