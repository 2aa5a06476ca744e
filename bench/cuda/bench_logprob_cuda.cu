// GPU benchmark of the CUDA log-prob reductions (include/dftune/logprob/cuda/).
//
// For each storage type (fp32, bf16, fp16), V ∈ {32000, 128256, 256000} and N ∈ {4096, 16384}
// (sequences of 1024 tokens, every token weighted), it times
//   forward          logprob::cuda::forward (token log-probs, row lse, sequence sums)
//   forward+backward forward, then the fused backward into a separate gradient buffer with row_lse
// and compares the achieved bandwidth with a device-to-device cudaMemcpy measured in the same run.
//
// Bytes that must move (counted for the achieved bandwidth):
//   forward          N·V·sizeof(T) logits read once + N·(target, weight, token_logp, row_lse)
//   forward+backward the forward's bytes + N·V·sizeof(T) read again and N·V·sizeof(T) written:
//                    the backward cannot start before the objective has turned the forward's
//                    sequence scores into d_seq, so the logits are read twice.
// Copy bandwidth = 2 · bytes / time of cudaMemcpyAsync(D2D) (each byte is read and written).
//
// Usage: bench_logprob_cuda [--json] [--quick] [--reps R]
//   --json   one JSON object per line (what bench/cuda/bench_logprob_cuda.py reads)
//   --quick  only V = 32000, N = 4096 (a smoke run)
#include <dftune/logprob/cuda/device_logprob.cuh>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace lc = dftune::logprob::cuda;

#define CUDA_OK(call) lc::detail::check_cuda((call), #call)

__device__ __forceinline__ std::uint32_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<std::uint32_t>(x);
}

// Logit-like values: a per-row offset plus a sum of two uniforms (spread about 4).
template <class T>
__global__ void fill_logits(T* z, long long V, long long total) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long row = i / V;
    const float u1 = static_cast<float>(mix(static_cast<std::uint64_t>(i)) >> 8) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>(mix(static_cast<std::uint64_t>(i) + 0x9e3779b97f4a7c15ull) >> 8) * (1.0f / 16777216.0f);
    const float shift = static_cast<float>(mix(static_cast<std::uint64_t>(row) * 7919u) % 2000u) * 0.01f - 10.0f;
    const float x = shift + 4.0f * (u1 + u2 - 1.0f);
    if constexpr (std::is_same_v<T, float>) z[i] = x;
    else if constexpr (std::is_same_v<T, lc::bf16>) z[i] = __float2bfloat16_rn(x);
    else z[i] = __float2half_rn(x);
  }
}

__global__ void fill_rows(std::int32_t* targets, float* weights, long long N, long long V) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    targets[i] = static_cast<std::int32_t>(mix(static_cast<std::uint64_t>(i) * 31u + 7u) % static_cast<std::uint32_t>(V));
    weights[i] = 1.0f;
  }
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CUDA_OK(cudaEventCreate(&a));
    CUDA_OK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  // Median milliseconds of `reps` timed runs of f after two warm-up runs.
  template <class F>
  double median_ms(int reps, cudaStream_t stream, F&& f) {
    f();
    f();
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      CUDA_OK(cudaEventRecord(a, stream));
      f();
      CUDA_OK(cudaEventRecord(b, stream));
      CUDA_OK(cudaEventSynchronize(b));
      float ms = 0;
      CUDA_OK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

template <class T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, lc::bf16>) return "bf16";
  else return "fp16";
}

struct Options {
  bool json = false;
  bool quick = false;
  int reps = 20;
};

// Device-to-device copy bandwidth in GB/s (read + write), on a 1 GiB buffer (or less if short).
double copy_bandwidth(cudaStream_t stream, int reps) {
  std::size_t free_b = 0, total_b = 0;
  CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
  const std::size_t bytes = std::min<std::size_t>(std::size_t{1} << 30, free_b / 4);
  void *src = nullptr, *dst = nullptr;
  CUDA_OK(cudaMalloc(&src, bytes));
  CUDA_OK(cudaMalloc(&dst, bytes));
  CUDA_OK(cudaMemsetAsync(src, 1, bytes, stream));
  Timer timer;
  const double ms =
      timer.median_ms(reps, stream, [&] { CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream)); });
  CUDA_OK(cudaFree(src));
  CUDA_OK(cudaFree(dst));
  return 2.0 * static_cast<double>(bytes) / (ms * 1e6);
}

template <class T>
void run_shape(long long V, long long N, double copy_gbs, const Options& opt, cudaStream_t stream) {
  const long long seq_len = 1024;
  const long long S = (N + seq_len - 1) / seq_len;
  const std::size_t elems = static_cast<std::size_t>(N) * static_cast<std::size_t>(V);
  T *z = nullptr, *g = nullptr;
  std::int32_t* y = nullptr;
  float *w = nullptr, *seq = nullptr, *tok = nullptr, *lse = nullptr, *d_seq = nullptr;
  std::int64_t* off = nullptr;
  CUDA_OK(cudaMalloc(&z, elems * sizeof(T)));
  CUDA_OK(cudaMalloc(&g, elems * sizeof(T)));
  CUDA_OK(cudaMalloc(&y, N * sizeof(std::int32_t)));
  CUDA_OK(cudaMalloc(&w, N * sizeof(float)));
  CUDA_OK(cudaMalloc(&tok, N * sizeof(float)));
  CUDA_OK(cudaMalloc(&lse, N * sizeof(float)));
  CUDA_OK(cudaMalloc(&seq, S * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_seq, S * sizeof(float)));
  CUDA_OK(cudaMalloc(&off, (S + 1) * sizeof(std::int64_t)));
  fill_logits<T><<<4096, 256, 0, stream>>>(z, V, static_cast<long long>(elems));
  fill_rows<<<256, 256, 0, stream>>>(y, w, N, V);
  std::vector<std::int64_t> h_off(static_cast<std::size_t>(S) + 1);
  for (long long s = 0; s <= S; ++s) h_off[static_cast<std::size_t>(s)] = std::min(s * seq_len, N);
  std::vector<float> h_d(static_cast<std::size_t>(S), -1.0f / static_cast<float>(S));
  CUDA_OK(cudaMemcpyAsync(off, h_off.data(), h_off.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
  CUDA_OK(cudaMemcpyAsync(d_seq, h_d.data(), h_d.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
  CUDA_OK(cudaStreamSynchronize(stream));

  dftune::logprob::TokenLogits<T> in{.logits = {z, elems},
                                     .vocab = static_cast<std::size_t>(V),
                                     .targets = {y, static_cast<std::size_t>(N)},
                                     .weights = {w, static_cast<std::size_t>(N)},
                                     .offsets = {off, static_cast<std::size_t>(S) + 1}};
  const std::size_t ws_bytes = lc::workspace_size(in);
  std::byte* ws = nullptr;
  CUDA_OK(cudaMalloc(&ws, ws_bytes));
  const std::span<std::byte> wspan(ws, ws_bytes);
  const std::span<float> seq_s(seq, static_cast<std::size_t>(S)), tok_s(tok, static_cast<std::size_t>(N)),
      lse_s(lse, static_cast<std::size_t>(N));

  Timer timer;
  auto fwd = [&] { lc::forward(in, seq_s, tok_s, lse_s, wspan, stream); };
  auto bwd = [&] {
    lc::backward(in, std::span<const float>(d_seq, static_cast<std::size_t>(S)), std::span<T>(g, elems),
                 std::span<const float>(lse, static_cast<std::size_t>(N)), wspan, stream);
  };
  const double fwd_ms = timer.median_ms(opt.reps, stream, fwd);
  const double both_ms = timer.median_ms(opt.reps, stream, [&] {
    fwd();
    bwd();
  });
  CUDA_OK(cudaGetLastError());
  const std::uint32_t status = lc::read_status(wspan, stream);

  const double logit_bytes = static_cast<double>(elems) * sizeof(T);
  const double row_bytes = static_cast<double>(N) * (4 + 4 + 4 + 4);
  const double fwd_bytes = logit_bytes + row_bytes;
  const double both_bytes = fwd_bytes + 2 * logit_bytes + static_cast<double>(N) * (4 + 4 + 4);
  const double fwd_gbs = fwd_bytes / (fwd_ms * 1e6);
  const double both_gbs = both_bytes / (both_ms * 1e6);
  if (opt.json) {
    std::printf(
        "{\"dtype\": \"%s\", \"V\": %lld, \"N\": %lld, \"fwd_ms\": %.5f, \"fwd_bwd_ms\": %.5f, \"fwd_gbs\": %.2f, "
        "\"fwd_bwd_gbs\": %.2f, \"copy_gbs\": %.2f, \"fwd_frac\": %.4f, \"fwd_bwd_frac\": %.4f, \"status\": %u}\n",
        dtype_name<T>(), V, N, fwd_ms, both_ms, fwd_gbs, both_gbs, copy_gbs, fwd_gbs / copy_gbs, both_gbs / copy_gbs,
        status);
  } else {
    std::printf("| %-4s | %6lld | %5lld | %8.3f | %7.0f | %5.1f %% | %8.3f | %7.0f | %5.1f %% |%s\n", dtype_name<T>(), V, N,
                fwd_ms, fwd_gbs, 100 * fwd_gbs / copy_gbs, both_ms, both_gbs, 100 * both_gbs / copy_gbs,
                status ? " status != 0!" : "");
  }
  std::fflush(stdout);
  for (void* p : {static_cast<void*>(z), static_cast<void*>(g), static_cast<void*>(y), static_cast<void*>(w),
                  static_cast<void*>(tok), static_cast<void*>(lse), static_cast<void*>(seq), static_cast<void*>(d_seq),
                  static_cast<void*>(off), static_cast<void*>(ws)})
    CUDA_OK(cudaFree(p));
}

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json")) opt.json = true;
    else if (!std::strcmp(argv[i], "--quick")) opt.quick = true;
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) opt.reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--json] [--quick] [--reps R]\n", argv[0]);
      return 2;
    }
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::fprintf(stderr, "no CUDA device (cudaGetDeviceCount: %s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 1;
  }
  try {
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_bandwidth(stream, opt.reps);
    if (opt.json) {
      std::printf("{\"device\": \"%s\", \"sm\": %d, \"copy_gbs\": %.2f}\n", prop.name, prop.major * 10 + prop.minor, copy_gbs);
    } else {
      std::printf("device: %s (sm_%d%d); device-to-device copy: %.0f GB/s (read + write)\n\n", prop.name, prop.major,
                  prop.minor, copy_gbs);
      std::printf("| type |      V |     N |  fwd ms | fwd GB/s | of copy | fwd+bwd ms | GB/s | of copy |\n");
      std::printf("|------|--------|-------|---------|----------|---------|------------|------|---------|\n");
    }
    const std::vector<long long> vocabs = opt.quick ? std::vector<long long>{32000} : std::vector<long long>{32000, 128256, 256000};
    const std::vector<long long> rows = opt.quick ? std::vector<long long>{4096} : std::vector<long long>{4096, 16384};
    for (long long V : vocabs)
      for (long long N : rows) {
        run_shape<float>(V, N, copy_gbs, opt, stream);
        run_shape<lc::bf16>(V, N, copy_gbs, opt, stream);
        run_shape<lc::fp16>(V, N, copy_gbs, opt, stream);
      }
    CUDA_OK(cudaStreamDestroy(stream));
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_logprob_cuda: %s\n", ex.what());
    return 1;
  }
  return 0;
}
