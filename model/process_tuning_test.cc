#include "model/process_tuning.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <thread>

namespace convnext {
namespace {

TEST(ProcessTuningTest, RunOnThreadOfItsOwnRunsElsewhereAndWaits) {
  const std::thread::id here = std::this_thread::get_id();
  std::thread::id there;
  bool finished = false;
  RunOnThreadOfItsOwn([&] {
    there = std::this_thread::get_id();
    finished = true;
  });
  EXPECT_TRUE(finished);
  EXPECT_NE(there, here);
}

TEST(ProcessTuningTest, OneIntraOpThreadOnThisThreadOnly) {
  const int before = IntraOpThreads();
  SetIntraOpThreads(2);
  int lowered = 0, lowered_after_an_operator = 0, elsewhere = 0;
  at::Tensor sum;
  std::thread([&] {
    UseOneIntraOpThreadOnThisThread();
    lowered = at::get_num_threads();
    // A parallel operator (well above ATen's grain of 32768 elements) and the count stays 1.
    sum = at::ones({1 << 20}).sum();
    lowered_after_an_operator = at::get_num_threads();
  }).join();
  std::thread([&] { elsewhere = at::get_num_threads(); }).join();
  SetIntraOpThreads(before);
  EXPECT_EQ(lowered, 1);
  EXPECT_EQ(lowered_after_an_operator, 1);
  EXPECT_EQ(sum.item<double>(), 1 << 20);
  EXPECT_EQ(elsewhere, 2);
}

}  // namespace
}  // namespace convnext
