// One GPT-2 124M decode step's GEMMs (12 layers × qkv/o/up/down, + the tied head), on one thread, in
// CPU time: dnnl_sgemm per call (which packs B every call; "tiled" = in tiled_linear's column tiles
// on a 2-core machine, "whole" = one call per matrix) against oneDNN's matmul primitive on weights
// reordered once into the blocked format it picks (format_tag any): the measurement behind
// model/generation/packed_weights.hpp (docs/generation.md, "Speed"). Standalone, not in the build:
//   g++ -std=c++20 -O2 bench/packed_step_gemm.cpp -o /tmp/packed_step_gemm -ldnnl
//   OMP_NUM_THREADS=1 /tmp/packed_step_gemm ROWS [LAYERS=12] [REPS=3]      (HUGE=1: MADV_HUGEPAGE)
// Prints the packing time (reorders and primitive descriptors, CPU-s), the three step times (the
// best of REPS), the packed bytes against the plain ones, and whether the blocked format chosen
// for ROWS rows is also the one chosen for another row count (so one packed copy serves every step).
#include <oneapi/dnnl/dnnl.hpp>
#include <oneapi/dnnl/dnnl.h>
#include <chrono>
#include <ctime>
#include <sys/mman.h>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <algorithm>
using namespace dnnl;
struct Mat { int K, N; std::vector<float> w; };
static size_t column_tile(size_t N){ size_t cores=2; size_t t=(N+4*cores-1)/(4*cores); return std::min(N, std::clamp<size_t>((t+15)/16*16,64,512)); }
int main(int argc, char** argv){
  int M = atoi(argv[1]); int layers = argc>2?atoi(argv[2]):12; int reps = argc>3?atoi(argv[3]):3;
  std::mt19937 rng(1); std::normal_distribution<float> nd(0,0.02f);
  std::vector<Mat> mats;
  for(int l=0;l<layers;++l) for(auto [K,N]: {std::pair{768,2304},{768,768},{768,3072},{3072,768}}) { Mat m{K,N,std::vector<float>(size_t(K)*N)}; for(auto&x:m.w)x=nd(rng); mats.push_back(std::move(m)); }
  { Mat m{768,50257,std::vector<float>(size_t(768)*50257)}; for(auto&x:m.w)x=nd(rng); mats.push_back(std::move(m)); }
  std::vector<float> A(size_t(M)*3072), C(size_t(M)*50257);
  for(auto&x:A)x=nd(rng);
  engine eng(engine::kind::cpu,0); stream s(eng);
  timespec q0; clock_gettime(CLOCK_PROCESS_CPUTIME_ID,&q0);
  // packed
  std::vector<matmul> prims; std::vector<memory> wp; std::vector<memory::desc> srcd,dstd;
  size_t packed_bytes=0, plain_bytes=0; bool same_fmt=true;
  for(auto& m: mats){
    memory::desc src({M,m.K}, memory::data_type::f32, memory::format_tag::ab);
    memory::desc wa({m.K,m.N}, memory::data_type::f32, memory::format_tag::any);
    memory::desc dst({M,m.N}, memory::data_type::f32, memory::format_tag::ab);
    matmul::primitive_desc pd(matmul::desc(src,wa,dst), eng);
    memory user({{m.K,m.N}, memory::data_type::f32, memory::format_tag::ba}, eng, m.w.data());
    size_t sz=(pd.weights_desc().get_size()+(2u<<20)-1)/(2u<<20)*(2u<<20); void* buf=std::aligned_alloc(2u<<20, sz); if(getenv("HUGE")) madvise(buf, sz, MADV_HUGEPAGE);
    memory packed(pd.weights_desc(), eng, buf);
    reorder(user, packed).execute(s, user, packed); s.wait();
    packed_bytes += pd.weights_desc().get_size(); plain_bytes += m.w.size()*4;
    // does the blocked format depend on M?
    memory::desc src2({M==1?32:1,m.K}, memory::data_type::f32, memory::format_tag::ab), dst2({M==1?32:1,m.N}, memory::data_type::f32, memory::format_tag::ab);
    matmul::primitive_desc pd2(matmul::desc(src2,wa,dst2), eng);
    if(!(pd2.weights_desc()==pd.weights_desc())) same_fmt=false;
    prims.emplace_back(pd); wp.push_back(packed); srcd.push_back(src); dstd.push_back(dst);
    if(&m==&mats[0]) std::printf("impl %s\n", pd.impl_info_str());
  }
  timespec q1; clock_gettime(CLOCK_PROCESS_CPUTIME_ID,&q1); std::printf("pack+pd cpu %.3f s\n", (q1.tv_sec-q0.tv_sec)+1e-9*(q1.tv_nsec-q0.tv_nsec));
  auto now=[]{timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID,&t); return std::chrono::duration<double>(t.tv_sec+1e-9*t.tv_nsec);};
  double best_sg=1e9,best_sgw=1e9,best_mm=1e9;
  for(int r=0;r<reps;++r){
    auto t0=now();
    for(auto& m: mats){ size_t tile = m.N==50257? 2048 : column_tile(m.N); // head: logits' tiles (approx)
      for(size_t j0=0;j0<size_t(m.N);j0+=tile){ size_t w=std::min(tile,size_t(m.N)-j0);
        dnnl_sgemm('N','T',M,w,m.K,1.f,A.data(),m.K,m.w.data()+j0*m.K,m.K,0.f,C.data()+j0,m.N);} }
    auto t1=now();
    for(auto& m: mats) dnnl_sgemm('N','T',M,m.N,m.K,1.f,A.data(),m.K,m.w.data(),m.K,0.f,C.data(),m.N);
    auto t2=now();
    for(size_t i=0;i<mats.size();++i){ memory a(srcd[i],eng,A.data()), c(dstd[i],eng,C.data()); prims[i].execute(s,{{DNNL_ARG_SRC,a},{DNNL_ARG_WEIGHTS,wp[i]},{DNNL_ARG_DST,c}}); } s.wait();
    auto t3=now();
    best_sg=std::min(best_sg,1e3*(t1-t0).count());
    best_sgw=std::min(best_sgw,1e3*(t2-t1).count());
    best_mm=std::min(best_mm,1e3*(t3-t2).count());
  }
  double flops=0; for(auto&m:mats) flops+=2.0*M*m.K*m.N;
  std::printf("M %d: sgemm tiled %.1f ms (%.1f GF/s), sgemm whole %.1f ms (%.1f), matmul packed %.1f ms (%.1f); packed %.1f MiB vs %.1f MiB; format same for other M: %d\n",
    M,best_sg,flops/best_sg/1e6,best_sgw,flops/best_sgw/1e6,best_mm,flops/best_mm/1e6,packed_bytes/1048576.,plain_bytes/1048576.,int(same_fmt));
}
