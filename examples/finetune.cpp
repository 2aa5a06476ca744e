// finetune: DFT, DFT2, SFT, DPO, IPO, SimPO or ORPO of a Hugging Face decoder (GPT-2, Llama, Qwen2,
// SmolLM2) on your own prompt/answer pairs or chats (docs/finetune.md).
//
//   finetune --model DIR --data train.jsonl --out DIR [--method dft|dft2|sft|dpo|ipo|simpo|orpo] [options; --help]
//   mpirun -np P finetune ...   (built with MPI: DFT/DFT2 data-parallel, sharded checkpoints)
//
//   1. load config.json + model.safetensors + tokenizer.json; read and tokenize the data (every
//      bad line is FILE:LINE: field: got ..., expected ...); split off a validation share;
//   2. negatives: m samples per prompt from the model itself with their log π_ref, cached in a
//      file keyed by a fingerprint of model + data + sampling (finetune/negatives.hpp);
//   3. train: AdamW on a cosine schedule with 10% warm-up, batches of a per-epoch shuffle of the
//      training split; DFT/DFT2 through DftOptimizer, SFT by the sequence-mean NLL, the pairwise
//      objectives with each negative as a rejected answer (plain_step); one JSON
//      object per step in OUT/metrics.jsonl, validation loss every --save-every steps and at the
//      end (evaluation never touches the estimator); a progress line with tokens/s and ETA;
//   4. checkpoints (OUT/checkpoint: io/checkpoint.hpp's training state — estimator, parameters,
//      step, AdamW moments — beside the weights as safetensors; under mpirun io/sharded_checkpoint.hpp's
//      set, one estimator shard per rank); --resume continues bit for bit;
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
#include <dftune/io/sharded_checkpoint.hpp>
#include <dftune/distributed/replica_check.hpp>
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

// Built with MPI (target dftune::mpi), every rank of `mpirun -np P finetune ...` trains on the ids
// it owns (id mod P) of the same global batches, as the demo does (docs/distributed.md).
#if defined(DFTUNE_FINETUNE_MPI)
#include <dftune/distributed/mpi.hpp>
using Comm = dftune::distributed::MpiCommunicator;
#else
#include <dftune/distributed/single.hpp>
using Comm = dftune::distributed::Single;
#endif

namespace fs = std::filesystem;
using dftune::Sequences;
using Model = dftune::Decoder<float>;
using Optimizer = dftune::DftOptimizer<Model, dftune::AdamW<float>, dftune::CosineSchedule, Comm>;

namespace finetune {

// The examples of a step: positives, their m negatives each and the negatives' log π_ref.
// Data-parallel, a rank's Batch holds the examples of the global batch that its shard owns.
struct Batch {
  std::vector<std::int64_t> ids;
  Sequences positives, negatives;
  std::vector<float> ref;
  std::size_t tokens = 0;  // every token the step's forward passes see, on every rank together
};

inline Batch gather(std::span<const std::size_t> examples, const dftune::hf::Examples& data, const dftune::io::Negatives& negs,
                    std::size_t m, dftune::distributed::Shard shard = {}) {
  Batch b;
  const auto seqs = data.sequences.view();
  for (std::size_t i : examples) {
    const auto seq = seqs.sequence(i);
    const auto p = static_cast<std::size_t>(seqs.prompt_len[i]);
    const bool mine = shard.owns(static_cast<std::int64_t>(i));
    if (mine) {
      b.ids.push_back(static_cast<std::int64_t>(i));
      b.positives.push(seq.first(p), seq.subspan(p));
    }
    b.tokens += seq.size();
    for (std::size_t j = 0; j < m; ++j) {
      const auto y = negs.completion(i, j, m);
      if (mine) {
        b.negatives.push(seq.first(p), y);
        b.ref.push_back(static_cast<float>(negs.logp_ref[i * m + j]));
      }
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

inline double mean(std::span<const float> x) {
  return x.empty() ? 0.0 : std::accumulate(x.begin(), x.end(), 0.0) / static_cast<double>(x.size());
}

// What a step or a validation batch reports.
struct Scored {
  double loss = 0, chosen = 0, rejected = 0, grad_norm = 0;
};

// The methods without an estimator. SFT: L = −(1/B) Σ_i log π(y_i|x_i). DPO, IPO, SimPO, ORPO:
// their loss over the B·m pairs (answer i ≻ negative ij) of objective/baseline.hpp, DPO and IPO
// against log π_ref of both (ref_answers: the base model's, by example). With a rule: gradients,
// clipped to max_grad_norm, then the AdamW step DftOptimizer would take; without: evaluation only.
inline Scored plain_step(Model& model, dftune::AdamW<float>* rule, double lr, const Batch& b, const Options& o,
                         std::span<const float> ref_answers) {
  const std::size_t B = b.ids.size(), m = B ? b.negatives.size() / B : 0;
  std::vector<float> pos(B), neg(B * m), dpos, dneg;
  model.sequence_logp(b.positives.view(), pos);
  if (m) model.sequence_logp(b.negatives.view(), neg);
  Scored s{.loss = 0, .chosen = mean(pos), .rejected = mean(neg), .grad_norm = 0};
  if (o.method == Method::sft) {
    s.loss = -s.chosen;
    dpos.assign(B, -1.0f / static_cast<float>(B));
  } else {
    std::vector<float> ref_pos(B);
    std::vector<std::int64_t> pos_len(B), neg_len(B * m);
    for (std::size_t i = 0; i < B; ++i) {
      if (!ref_answers.empty()) ref_pos[i] = ref_answers[static_cast<std::size_t>(b.ids[i])];
      pos_len[i] = b.positives.view().completion_length(i);
    }
    for (std::size_t k = 0; k < B * m; ++k) neg_len[k] = b.negatives.view().completion_length(k);
    const dftune::PreferenceScores<float> p{.pos_logp = pos, .neg_logp = neg, .ref_pos_logp = ref_pos,
                                            .ref_neg_logp = b.ref, .pos_len = pos_len, .neg_len = neg_len, .num_negatives = m};
    dftune::PreferenceResult<float> r = o.method == Method::dpo   ? dftune::dpo_loss(p, o.dpo)
                                        : o.method == Method::ipo ? dftune::ipo_loss(p, o.ipo)
                                        : o.method == Method::simpo ? dftune::simpo_loss(p, o.simpo)
                                                                    : dftune::orpo_loss(p, o.orpo);
    s.loss = r.loss;
    dpos = std::move(r.grad_pos);
    dneg = std::move(r.grad_neg);
  }
  if (rule == nullptr) return s;
  model.zero_gradients();
  model.accumulate_gradients(b.positives.view(), dpos);
  if (!dneg.empty()) model.accumulate_gradients(b.negatives.view(), dneg);
  s.grad_norm = dftune::clip_grad_norm(model.gradients(), o.max_grad_norm);
  rule->step(model.parameters(), std::span<const float>(model.gradients()), static_cast<float>(lr));
  return s;
}

// Validation: the method's loss and the mean log-probabilities of the positives and negatives.
// DFT/DFT2 go through DftOptimizer::evaluate, which reads the estimator and never writes it
// (collective under mpirun: every rank scores the validation examples it owns).
inline Scored evaluate(Model& model, Optimizer& dft, const Split& s, const dftune::hf::Examples& data, const dftune::io::Negatives& negs,
                       const Options& o, std::span<const float> ref_answers) {
  Scored e;
  const std::size_t n = s.validation.size();
  const dftune::distributed::Shard shard = dftune::distributed::shard_of(dft.communicator());
  for (std::size_t from = 0; from < n; from += o.batch) {
    const std::size_t to = std::min(n, from + o.batch);
    const Batch b = gather(std::span<const std::size_t>(s.validation).subspan(from, to - from), data, negs, negs.logp_ref.empty() ? 0 : o.m, shard);
    const double w = static_cast<double>(to - from) / static_cast<double>(n);
    if (uses_estimator(o.method)) {
      const auto info = dft.evaluate({.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(),
                                      .ref_neg_logp = o.method == Method::dft ? std::span<const float>(b.ref) : std::span<const float>(),
                                      .num_negatives = o.m});
      e.loss += w * info.result.loss;
      e.chosen += w * info.mean_pos_logp;
      e.rejected += w * info.mean_neg_logp;
    } else {
      const Scored v = plain_step(model, nullptr, 0, b, o, ref_answers);
      e.loss += w * v.loss;
      e.chosen += w * v.chosen;
      e.rejected += w * v.rejected;
    }
  }
  return e;
}

// log π_ref(y_i|x_i) of every example's answer under the base model (DPO and IPO), by example.
inline std::vector<float> reference_answers(Model& base, const dftune::hf::Examples& data, std::size_t batch) {
  std::vector<float> ref(data.size());
  const dftune::io::Negatives none;
  std::vector<std::size_t> ids;
  for (std::size_t from = 0; from < data.size(); from += batch) {
    ids.resize(std::min(data.size(), from + batch) - from);
    std::iota(ids.begin(), ids.end(), from);
    const Batch b = gather(ids, data, none, 0);
    base.sequence_logp(b.positives.view(), std::span<float>(ref).subspan(from, ids.size()));
  }
  return ref;
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

// Where the training state of a checkpoint lives: one file in a world of one, io/sharded_checkpoint.hpp's
// directory (a manifest, the optimizer, one estimator shard per rank) under mpirun.
struct CheckpointPaths {
  fs::path dir, single, sharded;
  bool has_sharded() const { return fs::exists(sharded / dftune::io::manifest_name); }
};

inline int run(const Options& o, Comm comm) {
#if defined(_OPENMP)
  if (o.threads) omp_set_num_threads(static_cast<int>(o.threads));
#endif
  const bool root = comm.rank() == 0, parallel = comm.size() > 1;
  const dftune::distributed::Shard shard = dftune::distributed::shard_of(comm);
  if (parallel && !uses_estimator(o.method))
    dftune::detail::fail("--method", name(o.method), "dft or dft2 under mpirun with " + std::to_string(comm.size()) +
                                                         " ranks (the other methods run in one process)");
  const fs::path model_dir(o.model), out(o.out);
  const CheckpointPaths ckpt{.dir = out / "checkpoint", .single = out / "checkpoint" / "training.ckpt", .sharded = out / "checkpoint" / "training.d"};
  for (const char* f : {"config.json", "tokenizer.json"})
    if (!fs::exists(model_dir / f))
      dftune::detail::fail("--model " + o.model, "no " + std::string(f), "a directory with config.json, model.safetensors and tokenizer.json");
  const dftune::hf::Tokenizer tok = dftune::hf::Tokenizer::from_file(model_dir / "tokenizer.json");
  Model model = dftune::hf::load_pretrained<float>(model_dir);
  const std::size_t context = o.max_len ? std::min(o.max_len, model.config().max_len) : model.config().max_len;

  dftune::hf::DataOptions dopt;
  dopt.context = context;
  dopt.chat = chat_template(o.chat);
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
  if (root)
    std::fprintf(stderr, "data: %zu examples (%zu train, %zu validation), context %zu%s\n", data.size(), s.train.size(),
                 s.validation.size(), context, parallel ? (", " + std::to_string(comm.size()) + " ranks").c_str() : "");

  if (root) fs::create_directories(out);
  // The negatives and log π_ref of the answers come from the base model, before any checkpoint is
  // loaded into it. Under mpirun rank 0 samples (and caches) them; the others then read the cache.
  const bool needs_negatives = o.method != Method::sft || !s.validation.empty();
  dftune::io::Negatives negs;
  if (needs_negatives) {
    if (root) negs = negatives(model, data, o, eos, context);
    comm.barrier();
    if (!root) negs = negatives(model, data, o, eos, context);
  }
  const std::vector<float> ref_answers = needs_ref_answers(o.method) ? reference_answers(model, data, o.batch) : std::vector<float>{};

  const std::size_t per_epoch = (s.train.size() + o.batch - 1) / o.batch, total = per_epoch * o.epochs;
  const dftune::CosineSchedule schedule{.base_lr = o.lr, .min_lr = 0.0, .warmup_steps = total / 10, .total_steps = total};
  const dftune::DftOptions dopts = o.dft_options();
  dftune::Estimator<float> estimator(data.size(), dopts, shard);
  Optimizer dft(model, estimator, dopts, dftune::AdamW<float>{}, schedule, {.max_grad_norm = o.max_grad_norm}, comm);
  dftune::AdamW<float> plain_rule;  // every method but DFT/DFT2; saved as the optimizer's rule

  const fs::path metrics = out / "metrics.jsonl";
  std::size_t step = 0;
  if (o.resume && (fs::exists(ckpt.single) || ckpt.has_sharded())) {
    // A world of one prefers its own file; the sharded set loads at any world size.
    const bool sharded = parallel || !fs::exists(ckpt.single);
    if (sharded && !ckpt.has_sharded())
      dftune::detail::fail("--resume", ckpt.single.string(), "a checkpoint of a run under mpirun (" + ckpt.sharded.string() +
                                                                 "): this one is of one process; resume it without mpirun");
    if (sharded) dftune::io::load_sharded(ckpt.sharded, dft);
    else dftune::io::load(ckpt.single, dft);
    step = dft.steps();
    plain_rule = dft.rule();
    if (root) {
      truncate_metrics(metrics, step);
      std::fprintf(stderr, "resumed at step %zu from %s\n", step, (sharded ? ckpt.sharded : ckpt.single).string().c_str());
    }
  } else if (root) {
    std::ofstream(metrics, std::ios::trunc);
  }
  dftune::distributed::check_replicas(dft);  // collective: every rank holds the same weights, or each says which differ
  const auto save_checkpoint = [&] {
    if (!uses_estimator(o.method)) dft.restore(step, dftune::AdamW<float>(plain_rule));
    std::error_code ec;
    if (parallel) {
      dftune::io::save_sharded(ckpt.sharded, dft);  // collective
      if (root) fs::remove(ckpt.single, ec);        // the set just committed is the newest state
    } else {
      fs::create_directories(ckpt.dir);
      dftune::io::save(ckpt.single, dft);
      fs::remove_all(ckpt.sharded, ec);
    }
    if (root) dftune::hf::save_pretrained(ckpt.dir, model);
  };
  std::ofstream log;
  if (root) log.open(metrics, std::ios::app);
  const auto write_eval = [&] {
    if (s.validation.empty()) return;
    const Scored e = evaluate(model, dft, s, data, negs, o, ref_answers);
    if (!root) return;
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
    const Batch b = gather(batch_of(step, s, o.batch, o.seed), data, negs, o.method == Method::sft ? 0 : o.m, shard);
    dftune::JsonRecord r;
    r.add("step", step + 1).add("epoch", static_cast<double>(step + 1) / static_cast<double>(per_epoch)).add("learning_rate", schedule.lr(step));
    double loss = 0;
    if (!uses_estimator(o.method)) {
      const Scored v = plain_step(model, &plain_rule, schedule.lr(step), b, o, ref_answers);
      loss = v.loss;
      r.add("loss", loss).add("grad_norm", v.grad_norm).add("logps/chosen", v.chosen);
      if (o.method != Method::sft) r.add("logps/rejected", v.rejected);
    } else {
      const auto info = dft.step({.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(),
                                  .ref_neg_logp = o.method == Method::dft ? std::span<const float>(b.ref) : std::span<const float>(),
                                  .num_negatives = o.m});
      loss = info.result.loss;
      r.add("loss", loss).add("grad_norm", info.grad_norm).add("logps/chosen", info.mean_pos_logp).add("logps/rejected", info.mean_neg_logp);
      demo::StepLog dlog;  // rank 0's estimator shard under mpirun
      demo::log_dft(dlog, info.result,
                    demo::StepBatch{.ids = b.ids, .positives = b.positives.view(), .negatives = b.negatives.view(),
                                    .ref_neg_logp = b.ref, .num_negatives = o.m},
                    dopts);
      for (const auto& [k, v] : dlog.values) r.add(k, v);
    }
    ++step;
    ++done;
    tokens += b.tokens;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.add("tokens_per_second", static_cast<double>(tokens) / secs);
    if (root) {
      log << r.str() << '\n' << std::flush;
      std::fprintf(stderr, "\rstep %zu/%zu  loss %.4f  %.0f tok/s  %.2f s/step  ETA %s   ", step, total, loss,
                   static_cast<double>(tokens) / secs, secs / static_cast<double>(done),
                   duration(secs / static_cast<double>(done) * static_cast<double>(total - step)).c_str());
    }
    if (o.save_every && step % o.save_every == 0 && step < last) {
      if (root) std::fprintf(stderr, "\n");
      write_eval();
      save_checkpoint();
    }
  }
  if (root) std::fprintf(stderr, "\n");
  if (step < total) {  // --stop-after: leave a checkpoint to resume from
    save_checkpoint();
    if (root)
      std::fprintf(stderr, "stopped after step %zu of %zu; checkpoint in %s (run again with --resume)\n", step, total, ckpt.dir.string().c_str());
    return 0;
  }
  write_eval();
  save_checkpoint();
  if (!root) return 0;
  dftune::hf::save_pretrained(out, model);
  fs::copy_file(model_dir / "tokenizer.json", out / "tokenizer.json", fs::copy_options::overwrite_existing);
  std::fprintf(stderr, "wrote %s (config.json, model.safetensors, tokenizer.json) and %s\n", out.string().c_str(), metrics.string().c_str());
  return 0;
}

}  // namespace finetune

// Under MPI, distributed::run_main (MPI_Init … MPI_Finalize): an error on one rank ends every rank
// with its message instead of leaving the others waiting.
int main(int argc, char** argv) {
  const finetune::Options o = finetune::parse(argc, argv);  // a bad flag exits 2 before MPI starts
#if defined(DFTUNE_FINETUNE_MPI)
  return dftune::distributed::run_main(argc, argv, [&o](int, char**) { return finetune::run(o, Comm{}); });
#else
  try {
    return finetune::run(o, Comm{});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nfinetune: %s\n", e.what());
    return 1;
  }
#endif
}
