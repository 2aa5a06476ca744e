// finetune: DFT, DFT2 or SFT of a Hugging Face decoder (GPT-2, Llama, Qwen2, SmolLM2) on your own
// prompt/answer pairs (docs/finetune.md).
//
//   finetune --model DIR --data train.jsonl --out DIR [--method dft|dft2|sft] [options; --help]
//
//   1. load config.json + model.safetensors + tokenizer.json; read and tokenize the data (every
//      bad line is FILE:LINE: field: got ..., expected ...); split off a validation share;
//   2. negatives: m samples per prompt from the model itself with their log π_ref, cached in a
//      file keyed by a fingerprint of model + data + sampling (finetune/negatives.hpp);
//   3. train: AdamW on a cosine schedule with 10% warm-up, batches of a per-epoch shuffle of the
//      training split; DFT/DFT2 through DftOptimizer, SFT by the sequence-mean NLL; one JSON
//      object per step in OUT/metrics.jsonl, validation loss every --save-every steps and at the
//      end (evaluation never touches the estimator); a progress line with tokens/s and ETA;
//   4. checkpoints (OUT/checkpoint: io/checkpoint.hpp's training state — estimator, parameters,
//      step, AdamW moments — beside the weights as safetensors); --resume continues bit for bit;
//   5. writes OUT/config.json + OUT/model.safetensors + OUT/tokenizer.json.
// Errors are dftune::error messages on stderr and exit status 1; bad flags exit 2.
#include "finetune/negatives.hpp"
#include "finetune/options.hpp"

#include <dftune/callbacks/jsonl.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/hf/jsonl.hpp>
#include <dftune/hf/pretrained.hpp>
#include <dftune/hf/tokenizer.hpp>
#include <dftune/io/checkpoint.hpp>
#include <dftune/model/decoder/decoder.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/clip.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/schedule.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fs = std::filesystem;
using dftune::Sequences;
using Model = dftune::Decoder<float>;
using Optimizer = dftune::DftOptimizer<Model, dftune::AdamW<float>, dftune::CosineSchedule>;

namespace finetune {

// The examples of a step: positives, their m negatives each and the negatives' log π_ref.
struct Batch {
  std::vector<std::int64_t> ids;
  Sequences positives, negatives;
  std::vector<float> ref;
  std::size_t tokens = 0;  // every token the step's forward passes see
};

inline Batch gather(std::span<const std::size_t> examples, const dftune::hf::Examples& data, const dftune::io::Negatives& negs,
                    std::size_t m) {
  Batch b;
  const auto seqs = data.sequences.view();
  for (std::size_t i : examples) {
    const auto seq = seqs.sequence(i);
    const auto p = static_cast<std::size_t>(seqs.prompt_len[i]);
    b.ids.push_back(static_cast<std::int64_t>(i));
    b.positives.push(seq.first(p), seq.subspan(p));
    b.tokens += seq.size();
    for (std::size_t j = 0; j < m; ++j) {
      const auto y = negs.completion(i, j, m);
      b.negatives.push(seq.first(p), y);
      b.ref.push_back(static_cast<float>(negs.logp_ref[i * m + j]));
      b.tokens += p + y.size();
    }
  }
  return b;
}

// Which examples train and which validate: a seeded shuffle of the file's order.
struct Split {
  std::vector<std::size_t> train, validation;
};

inline Split split(std::size_t n, double val_fraction, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 rng(seed * 1000003 + 7);
  std::shuffle(order.begin(), order.end(), rng);
  std::size_t v = static_cast<std::size_t>(val_fraction * static_cast<double>(n));
  if (val_fraction > 0 && v == 0 && n > 1) v = 1;
  Split s;
  s.validation.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(v));
  s.train.assign(order.begin() + static_cast<std::ptrdiff_t>(v), order.end());
  if (s.train.empty()) dftune::detail::fail("training split", "0 examples", "at least one (a larger data file or a smaller --val-fraction)");
  return s;
}

// The examples of step t: epoch t / S's shuffle of the training split (S steps per epoch, the
// last batch of an epoch may be short). A function of t alone, so a resumed run draws the same.
inline std::vector<std::size_t> batch_of(std::size_t t, const Split& s, std::size_t B, std::uint64_t seed) {
  const std::size_t n = s.train.size(), per_epoch = (n + B - 1) / B, epoch = t / per_epoch, k = t % per_epoch;
  std::vector<std::size_t> order = s.train;
  std::mt19937_64 rng(seed * 1000003 + 17 + epoch);
  std::shuffle(order.begin(), order.end(), rng);
  const std::size_t from = k * B, to = std::min(n, from + B);
  return {order.begin() + static_cast<std::ptrdiff_t>(from), order.begin() + static_cast<std::ptrdiff_t>(to)};
}

// SFT's step: L = −(1/B) Σ log π(y_i|x_i), clipped, then the same AdamW DftOptimizer would apply.
inline double sft_step(Model& model, dftune::AdamW<float>& rule, double lr, const Batch& b, double max_grad_norm,
                       double& grad_norm) {
  const std::size_t B = b.ids.size();
  std::vector<float> scores(B), d(B, -1.0f / static_cast<float>(B));
  model.zero_gradients();
  model.sequence_logp(b.positives.view(), scores);
  model.accumulate_gradients(b.positives.view(), d);
  grad_norm = dftune::clip_grad_norm(model.gradients(), max_grad_norm);
  rule.step(model.parameters(), std::span<const float>(model.gradients()), static_cast<float>(lr));
  return -std::accumulate(scores.begin(), scores.end(), 0.0) / static_cast<double>(B);
}

// Validation: the method's loss and the mean log-probabilities of the positives and negatives.
// DFT/DFT2 go through DftOptimizer::evaluate, which reads the estimator and never writes it.
struct Eval {
  double loss = 0, chosen = 0, rejected = 0;
};

inline Eval evaluate(Model& model, Optimizer& dft, Method method, const Split& s, const dftune::hf::Examples& data,
                     const dftune::io::Negatives& negs, const Options& o) {
  Eval e;
  const std::size_t n = s.validation.size();
  if (n == 0) return e;
  for (std::size_t from = 0; from < n; from += o.batch) {
    const std::size_t to = std::min(n, from + o.batch);
    const Batch b = gather(std::span<const std::size_t>(s.validation).subspan(from, to - from), data, negs, o.m);
    const double w = static_cast<double>(to - from) / static_cast<double>(n);
    if (method == Method::sft) {
      std::vector<float> pos(b.ids.size()), neg(b.negatives.size());
      model.sequence_logp(b.positives.view(), pos);
      model.sequence_logp(b.negatives.view(), neg);
      const double cp = std::accumulate(pos.begin(), pos.end(), 0.0) / static_cast<double>(pos.size());
      e.loss -= w * cp;
      e.chosen += w * cp;
      e.rejected += w * std::accumulate(neg.begin(), neg.end(), 0.0) / static_cast<double>(neg.size());
    } else {
      const auto info = dft.evaluate({.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(),
                                      .num_negatives = o.m,
                                      .ref_neg_logp = method == Method::dft ? std::span<const float>(b.ref) : std::span<const float>()});
      e.loss += w * info.result.loss;
      e.chosen += w * info.mean_pos_logp;
      e.rejected += w * info.mean_neg_logp;
    }
  }
  return e;
}

// metrics.jsonl without the lines of steps after `step` (those a resumed run will redo).
inline void truncate_metrics(const fs::path& path, std::size_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> keep;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_unsigned() && j["step"].get<std::size_t>() <= step) keep.push_back(line);
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : keep) out << l << '\n';
}

inline std::string duration(double s) {
  char buf[32];
  const auto t = static_cast<long long>(s + 0.5);
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
  return buf;
}

inline int run(const Options& o) {
#if defined(_OPENMP)
  if (o.threads) omp_set_num_threads(static_cast<int>(o.threads));
#endif
  const fs::path model_dir(o.model), out(o.out), ckpt_dir = out / "checkpoint";
  for (const char* f : {"config.json", "tokenizer.json"})
    if (!fs::exists(model_dir / f))
      dftune::detail::fail("--model " + o.model, "no " + std::string(f), "a directory with config.json, model.safetensors and tokenizer.json");
  const dftune::hf::Tokenizer tok = dftune::hf::Tokenizer::from_file(model_dir / "tokenizer.json");
  Model model = dftune::hf::load_pretrained<float>(model_dir);
  const std::size_t context = o.max_len ? std::min(o.max_len, model.config().max_len) : model.config().max_len;

  dftune::hf::DataOptions dopt;
  dopt.context = context;
  std::optional<dftune::token_t> eos;
  if (o.eos != "none") {
    eos = tok.token_id(o.eos);
    if (!eos) dftune::detail::fail("--eos", "\"" + o.eos + "\"", "a token of " + (model_dir / "tokenizer.json").string() + " or none");
    if (static_cast<std::size_t>(*eos) >= model.vocab_size())
      dftune::detail::fail("--eos", *eos, "a token id below the model's vocabulary " + std::to_string(model.vocab_size()));
  }
  dopt.eos = eos;
  const dftune::hf::Examples data = dftune::hf::read_jsonl(o.data, tok, dopt);
  if (data.size() == 0) dftune::detail::fail(o.data, "no examples", "at least one prompt/answer line");
  for (const dftune::token_t t : data.sequences.view().tokens)
    if (static_cast<std::size_t>(t) >= model.vocab_size())
      dftune::detail::fail(o.data + ": token", t, "ids below the model's vocabulary " + std::to_string(model.vocab_size()) +
                                                       " (tokenizer.json and the model disagree)");
  const Split s = split(data.size(), o.val_fraction, o.seed);
  std::fprintf(stderr, "data: %zu examples (%zu train, %zu validation), context %zu\n", data.size(), s.train.size(),
               s.validation.size(), context);

  fs::create_directories(out);
  const bool needs_negatives = o.method != Method::sft || !s.validation.empty();
  const dftune::io::Negatives negs = needs_negatives ? negatives(model, data, o, eos, context) : dftune::io::Negatives{};

  const std::size_t per_epoch = (s.train.size() + o.batch - 1) / o.batch, total = per_epoch * o.epochs;
  const dftune::CosineSchedule schedule{.base_lr = o.lr, .min_lr = 0.0, .warmup_steps = total / 10, .total_steps = total};
  const dftune::DftOptions dopts = o.dft_options();
  dftune::Estimator<float> estimator(data.size(), dopts);
  Optimizer dft(model, estimator, dopts, dftune::AdamW<float>{}, schedule, {.max_grad_norm = o.max_grad_norm});
  dftune::AdamW<float> sft_rule;

  const fs::path state = ckpt_dir / "training.ckpt", metrics = out / "metrics.jsonl";
  std::size_t step = 0;
  if (o.resume && fs::exists(state)) {
    dftune::io::load(state, dft);
    step = dft.steps();
    sft_rule = dft.rule();
    truncate_metrics(metrics, step);
    std::fprintf(stderr, "resumed at step %zu from %s\n", step, state.string().c_str());
  } else {
    std::ofstream(metrics, std::ios::trunc);
  }
  const auto save_checkpoint = [&] {
    if (o.method == Method::sft) dft.restore(step, dftune::AdamW<float>(sft_rule));
    dftune::hf::save_pretrained(ckpt_dir, model);
    dftune::io::save(state, dft);
  };
  std::ofstream log(metrics, std::ios::app);
  const auto write_eval = [&] {
    const Eval e = evaluate(model, dft, o.method, s, data, negs, o);
    if (s.validation.empty()) return;
    dftune::JsonRecord r;
    r.add("step", step).add("eval/loss", e.loss).add("eval/logps/chosen", e.chosen);
    if (needs_negatives) r.add("eval/logps/rejected", e.rejected);
    log << r.str() << '\n' << std::flush;
    std::fprintf(stderr, "eval step %zu: loss %.4f, log π(chosen) %.3f, log π(rejected) %.3f\n", step, e.loss, e.chosen, e.rejected);
  };
  if (step == 0) write_eval();

  const auto t0 = std::chrono::steady_clock::now();
  std::size_t tokens = 0, done = 0;
  const std::size_t last = o.stop_after ? std::min(total, step + o.stop_after) : total;
  while (step < last) {
    // SFT trains on the positives alone (its negatives, if sampled, serve validation only).
    const Batch b = gather(batch_of(step, s, o.batch, o.seed), data, negs, o.method == Method::sft ? 0 : o.m);
    dftune::JsonRecord r;
    r.add("step", step + 1).add("epoch", static_cast<double>(step + 1) / static_cast<double>(per_epoch)).add("learning_rate", schedule.lr(step));
    double loss = 0;
    if (o.method == Method::sft) {
      double norm = 0;
      loss = sft_step(model, sft_rule, schedule.lr(step), b, o.max_grad_norm, norm);
      r.add("loss", loss).add("grad_norm", norm).add("logps/chosen", -loss);
    } else {
      const auto info = dft.step({.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(), .num_negatives = o.m,
                                  .ref_neg_logp = o.method == Method::dft ? std::span<const float>(b.ref) : std::span<const float>()});
      loss = info.result.loss;
      r.add("loss", loss).add("grad_norm", info.grad_norm).add("logps/chosen", info.mean_pos_logp).add("logps/rejected", info.mean_neg_logp);
      demo::StepLog dlog;
      demo::log_dft(dlog, info.result,
                    demo::StepBatch{.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(),
                                    .num_negatives = o.m, .ref_neg_logp = b.ref},
                    dopts);
      for (const auto& [k, v] : dlog.values) r.add(k, v);
    }
    ++step;
    ++done;
    tokens += b.tokens;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.add("tokens_per_second", static_cast<double>(tokens) / secs);
    log << r.str() << '\n' << std::flush;
    std::fprintf(stderr, "\rstep %zu/%zu  loss %.4f  %.0f tok/s  %.2f s/step  ETA %s   ", step, total, loss,
                 static_cast<double>(tokens) / secs, secs / static_cast<double>(done),
                 duration(secs / static_cast<double>(done) * static_cast<double>(total - step)).c_str());
    if (o.save_every && step % o.save_every == 0 && step < last) {
      std::fprintf(stderr, "\n");
      write_eval();
      save_checkpoint();
    }
  }
  std::fprintf(stderr, "\n");
  if (step < total) {  // --stop-after: leave a checkpoint to resume from
    save_checkpoint();
    std::fprintf(stderr, "stopped after step %zu of %zu; checkpoint in %s (run again with --resume)\n", step, total, ckpt_dir.string().c_str());
    return 0;
  }
  write_eval();
  save_checkpoint();
  dftune::hf::save_pretrained(out, model);
  fs::copy_file(model_dir / "tokenizer.json", out / "tokenizer.json", fs::copy_options::overwrite_existing);
  std::fprintf(stderr, "wrote %s (config.json, model.safetensors, tokenizer.json) and %s\n", out.string().c_str(), metrics.string().c_str());
  return 0;
}

}  // namespace finetune

int main(int argc, char** argv) {
  const finetune::Options o = finetune::parse(argc, argv);
  try {
    return finetune::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nfinetune: %s\n", e.what());
    return 1;
  }
}
