// XLA FFI handler for the CPU LUT-GEMM kernel and the nanobind module that exports it.
//
// Attributes: in_features, out_features, num_bits, group_size (validated by CheckOperands),
// layout (0 = canonical sign words, 1 = the 'cpu' byte-major layout; bcq_format.h), mode
// (0 = exact float32 tables, 1 = fast int8 tables) and path (0 = lookup tables, 1 = dequantized
// tiles + dense FMA GEMM, the large-batch path, which reads no mode). Work is spread over the
// calling thread and the library's own workers (worker_pool.h), as many threads in all as XLA's
// intra-op pool (ffi::ThreadPool) has, up to 256.
// Environment (read per call, for tests and benchmarks):
//   LUTGEMM_CPU_ISA=portable|avx2|avx512
//                                   force the code path (default and avx512: the best the CPU
//                                   supports; avx2 keeps the lookup and dense kernels off AVX-512)
//   LUTGEMM_CPU_THREADS=<n>         use at most n threads (default: the pool's size)
//   LUTGEMM_CPU_SPIN_US=<us>        how long idle workers spin before sleeping (worker_pool.h)
//   LUTGEMM_CPU_POISON=1            fill y with NaN bytes (0xff) before computing, so tests can
//                                   prove that every output element is written
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <string>

#include "dense.h"
#include "lut.h"
#include "lut_gemm_cpu.h"
#include "read_bandwidth.h"
#include "worker_pool.h"
#include "lutgemm/ffi_checks.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace lutgemm::cpu {
namespace {

int64_t NumThreads(ffi::ThreadPool& pool) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (const char* env = std::getenv("LUTGEMM_CPU_THREADS")) {
    const long v = std::atol(env);
    if (v > 0) threads = v;
  }
  return threads;
}

ffi::Error LutGemmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer bits,
                          ffi::AnyBuffer alpha, ffi::AnyBuffer offset,
                          ffi::Result<ffi::AnyBuffer> y, int64_t in_features,
                          int64_t out_features, int64_t num_bits, int64_t group_size,
                          int64_t layout, int64_t mode, int64_t path) {
  GemmProblem p;
  if (ffi::Error err = CheckOperands(x, bits, alpha, offset, *y, in_features, out_features,
                                     num_bits, group_size, &p);
      err.failure())
    return err;
  if (mode != static_cast<int64_t>(Mode::kExact) && mode != static_cast<int64_t>(Mode::kFast))
    return ffi::Error::InvalidArgument(
        "lut_gemm: mode must be 0 (exact float32 tables) or 1 (fast int8 tables)");
  if (path != static_cast<int64_t>(Path::kLut) && path != static_cast<int64_t>(Path::kDense))
    return ffi::Error::InvalidArgument(
        "lut_gemm: path must be 0 (lookup tables) or 1 (dequantized tiles + dense GEMM)");
  if (layout != static_cast<int64_t>(Layout::kCanonical) &&
      layout != static_cast<int64_t>(Layout::kCpu))
    return ffi::Error::InvalidArgument(
        "lut_gemm: layout must be 0 (canonical sign words) or 1 (the 'cpu' byte-major layout)");
  if (p.m == 0) return ffi::Error::Success();

  if (const char* env = std::getenv("LUTGEMM_CPU_POISON"); env != nullptr && env[0] == '1')
    std::memset(y->untyped_data(), 0xff, y->size_bytes());

  Operands op;
  op.shape = p.shape;
  op.m = p.m;
  op.x = x.untyped_data();
  op.x_type = ToDType(x.element_type());
  op.bits = static_cast<const uint32_t*>(bits.untyped_data());
  op.layout = static_cast<Layout>(layout);
  op.alpha = alpha.untyped_data();
  op.offset = p.shape.has_offset ? offset.untyped_data() : nullptr;
  op.alpha_type = ToDType(alpha.element_type());
  op.y = y->untyped_data();

  const int64_t threads = NumThreads(pool);
  ParallelFor pf = [threads](int64_t count, const std::function<void(int64_t)>& fn) {
    PoolParallelFor(std::min(threads, count) - 1, count, fn);
  };
  try {  // nothing may unwind into XLA: allocations (tables, partial sums) can fail
    LutGemm(op, static_cast<Mode>(mode), static_cast<Path>(path), SelectIsa(), threads, pf);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "lut_gemm: out of memory for the kernel's lookup tables or buffers");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("lut_gemm: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LutGemmCpu, LutGemmCpuImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // bits
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // offset
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("in_features")
                                  .Attr<int64_t>("out_features")
                                  .Attr<int64_t>("num_bits")
                                  .Attr<int64_t>("group_size")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("mode")
                                  .Attr<int64_t>("path"));

}  // namespace lutgemm::cpu

NB_MODULE(_lutgemm_cpu, m) {
  m.doc() = "LUT-GEMM CPU kernels as XLA FFI handlers.";
  m.def("registrations", []() {
    nb::dict d;
    d["lutgemm_cpu"] = nb::capsule(reinterpret_cast<void*>(lutgemm::cpu::LutGemmCpu));
    return d;
  });
  m.def("avx2_supported", []() { return lutgemm::cpu::IsaSupported(lutgemm::cpu::Isa::kAvx2); },
        "Whether this CPU has AVX2 + FMA + F16C (the fast code path).");
  m.def(
      "avx512_supported",
      []() {
        // What the CPU offers, whatever LUTGEMM_CPU_ISA chooses.
        return lutgemm::cpu::IsaSupported(lutgemm::cpu::Isa::kAvx2) &&
               (lutgemm::cpu::Avx512LookupsSupported() || lutgemm::cpu::DenseAvx512Supported());
      },
      "Whether this CPU runs some kernels on AVX-512 (the 'avx512' value of LUTGEMM_CPU_ISA).");
  m.def(
      "selected_isa",
      []() -> const char* {
        using lutgemm::cpu::Isa;
        if (lutgemm::cpu::SelectIsa() != Isa::kAvx2) return "portable";
        const bool avx512 = lutgemm::cpu::Avx512Lookups() || lutgemm::cpu::DenseAvx512Usable();
        return avx512 ? "avx512" : "avx2";
      },
      "The code path the next call will take (honours LUTGEMM_CPU_ISA).");
  m.def("dense_avx512", &lutgemm::cpu::DenseAvx512Usable,
        "Whether the dense path's micro-kernel runs on AVX-512F (CPUID; LUTGEMM_CPU_ISA=avx2 "
        "keeps it on AVX2).");
  m.def("kernel_threads", &lutgemm::cpu::KernelThreads,
        "Threads the kernel uses with XLA's default pool (honours LUTGEMM_CPU_THREADS).");
  m.def(
      "read_bandwidth",
      [](int64_t nbytes, int64_t passes, int64_t threads) {
        lutgemm::cpu::ReadBandwidth r;
        {
          nb::gil_scoped_release release;
          r = lutgemm::cpu::MeasureReadBandwidth(nbytes, passes, threads,
                                                 lutgemm::cpu::SelectIsa());
        }
        nb::list seconds;
        for (const double s : r.pass_seconds) seconds.append(s);
        nb::dict d;
        d["pass_seconds"] = seconds;
        d["threads"] = r.threads;
        d["checksum"] = r.checksum;
        return d;
      },
      nb::arg("nbytes"), nb::arg("passes"), nb::arg("threads"),
      "Times `passes` read passes over an `nbytes` buffer on the kernel's worker pool "
      "(read_bandwidth.h).");
}
