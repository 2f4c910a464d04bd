#include "model/grn.h"

#include <ATen/ATen.h>

namespace convnext {

void ApplyGrn(const at::Tensor& rows, const at::Tensor& mask, const at::Tensor& gamma,
              const at::Tensor& beta) {
  const at::ScalarType accumulate = rows.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor x = rows.to(accumulate);
  if (mask.defined()) x = x * mask.reshape({rows.size(0), -1, 1}).to(accumulate);
  const at::Tensor norms = at::norm(x, 2, {1}, /*keepdim=*/true);  // [N, 1, C]
  const at::Tensor scale = at::addcmul(at::ones_like(norms), gamma.to(accumulate),
                                       norms / (norms.mean({-1}, /*keepdim=*/true) + 1e-6));
  at::Tensor out = rows;  // addcmul_out takes its output by non-const reference.
  at::addcmul_out(out, beta.to(rows.scalar_type()), rows, scale.to(rows.scalar_type()));
}

}  // namespace convnext
