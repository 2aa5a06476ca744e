// An exception on one rank of an MPI job ends every rank, with its message, instead of a hang
// (distributed/mpi.hpp: MpiSession, run_main). Run by tests/mpi/expect_abort.cmake as
//   mpirun -np 2 test_mpi_abort CASE
//   run_main   rank 1 throws from the user's code inside run_main while rank 0 waits in a barrier:
//              "rank 1 of 2: user code failed on rank 1" on stderr, the job ends non-zero;
//   session    the same with a bare MpiSession: the session's destructor aborts the job (MPI_Abort)
//              instead of MPI_Finalize, which would wait for rank 0 forever;
//   clean      no exception: both ranks return 0 through run_main and MPI_Finalize.
#include <dftune/distributed/mpi.hpp>
#include <dftune/error.hpp>

#include <cstdio>
#include <string>

namespace {

int user_main(int, char**) {
  dftune::distributed::MpiCommunicator world;
  if (world.rank() == 1) throw dftune::argument_error("user code failed on rank 1");
  world.barrier();  // rank 0 waits here for a rank that will never come
  std::printf("rank 0 passed the barrier, which it must not\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "";
  if (name == "run_main") return dftune::distributed::run_main(argc, argv, user_main);
  if (name == "clean")
    return dftune::distributed::run_main(argc, argv, [](int, char**) {
      dftune::distributed::MpiCommunicator world;
      world.barrier();
      std::printf("rank %zu of %zu: clean exit\n", world.rank(), world.size());
      return 0;
    });
  if (name == "session") {
    try {
      dftune::distributed::MpiSession session(argc, argv);
      return user_main(argc, argv);
    } catch (const std::exception& e) {  // never reached with P > 1: the session aborts the job
      std::fprintf(stderr, "caught after the session ended: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "test_mpi_abort: unknown case '%s'\n", name.c_str());
  return 2;
}
