// Small helpers for propagating absl::Status, written once for the whole project (the Abseil we
// build against, 20220623, does not ship status_macros.h).
//
//   RETURN_IF_ERROR(DoThing());
//   ASSIGN_OR_RETURN(auto value, ComputeValue());
//   ASSIGN_OR_RETURN(existing_variable, ComputeValue());
#ifndef CONVNEXT_BASE_STATUS_MACROS_H_
#define CONVNEXT_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CONVNEXT_STATUS_CONCAT_INNER_(a, b) a##b
#define CONVNEXT_STATUS_CONCAT_(a, b) CONVNEXT_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) once and returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                           \
  do {                                                  \
    if (absl::Status _status = (expr); !_status.ok()) { \
      return _status;                                   \
    }                                                   \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>) once; returns its status if not OK, otherwise moves
// the value into `lhs`, which may be a declaration.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(CONVNEXT_STATUS_CONCAT_(_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)       \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#endif  // CONVNEXT_BASE_STATUS_MACROS_H_
