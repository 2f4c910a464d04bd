#include "server/memory_budget.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace convnext::server {
namespace {

TEST(MemoryBudgetTest, ReservesUpToTheLimitAndReleases) {
  MemoryBudget budget(100);
  EXPECT_TRUE(budget.CanEverFit(100));
  EXPECT_FALSE(budget.CanEverFit(101));
  EXPECT_TRUE(budget.TryReserve(60));
  EXPECT_FALSE(budget.TryReserve(41));  // Not now...
  EXPECT_TRUE(budget.CanEverFit(41));   // ...but later.
  EXPECT_TRUE(budget.TryReserve(40));
  EXPECT_EQ(budget.in_use_bytes(), 100);
  budget.Release(60);
  EXPECT_TRUE(budget.TryReserve(41));
  EXPECT_EQ(budget.in_use_bytes(), 81);
}

TEST(MemoryBudgetTest, AReservationMustFitTheParentToo) {
  MemoryBudget process(100);
  MemoryBudget a(80, &process), b(80, &process);
  EXPECT_FALSE(a.CanEverFit(90));
  EXPECT_TRUE(a.TryReserve(70));
  EXPECT_FALSE(b.TryReserve(40)) << "fits b, not the process";
  EXPECT_EQ(b.in_use_bytes(), 0) << "a refused reservation holds nothing";
  EXPECT_TRUE(b.TryReserve(30));
  EXPECT_EQ(process.in_use_bytes(), 100);
  a.Release(70);
  EXPECT_EQ(process.in_use_bytes(), 30);
  MemoryBudget small_parent(10);
  MemoryBudget child(100, &small_parent);
  EXPECT_FALSE(child.CanEverFit(11));
}

TEST(MemoryBudgetTest, ConcurrentReservationsNeverExceedTheLimit) {
  MemoryBudget process(1000);
  MemoryBudget model(700, &process);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (model.TryReserve(7)) {
          EXPECT_LE(model.in_use_bytes(), 700);
          EXPECT_LE(process.in_use_bytes(), 1000);
          model.Release(7);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(model.in_use_bytes(), 0);
  EXPECT_EQ(process.in_use_bytes(), 0);
}

}  // namespace
}  // namespace convnext::server
