// A minimal parallel-for for the batch entry points: plain std::threads pulling indices from one
// atomic counter, so uneven items (a 90k-character trace next to a short one) balance by themselves.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

namespace asap {

// The cores this process may run on: its CPU affinity where the OS reports one (a container or
// `taskset` limits it below the machine's count), else std::thread::hardware_concurrency(), at
// least 1.
inline int available_cores() noexcept {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
#endif
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// The threads a batch of n items gets: workers <= 0 means every available core; never more than
// the available cores (a thread per requested worker could exhaust memory or the thread limit and
// would only add contention) nor than the items.
inline int thread_count(int64_t n, int workers) noexcept {
  const int cores = available_cores();
  if (workers <= 0 || workers > cores) workers = cores;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(workers, n)));
}

// Calls fn(i) for every i in [0, n) on thread_count(n, workers) threads, the calling one included.
// fn(i) must be safe to call concurrently for distinct i. The first exception thrown by any fn is
// rethrown on the calling thread after every thread has stopped. A thread that cannot be started
// (the OS is out of threads or memory) is not an error: the threads that did start, at least the
// calling one, share the remaining items, so the result is the same.
template <class Fn>
void parallel_for(int64_t n, int workers, Fn fn) {
  const int threads_wanted = thread_count(n, workers);
  if (threads_wanted <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_lock;
  auto work = [&]() noexcept {
    try {
      for (int64_t i = next++; i < n; i = next++) fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> threads;
  try {
    threads.reserve(static_cast<size_t>(threads_wanted) - 1);
    for (int t = 1; t < threads_wanted; ++t) threads.emplace_back(work);
  } catch (const std::exception&) {
    // std::system_error (no thread) or std::bad_alloc: carry on with the threads already running.
  }
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace asap
