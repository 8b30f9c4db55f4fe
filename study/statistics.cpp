#include "study/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace ellipse::study {

namespace {

// The continued fraction of the regularized incomplete beta function I_x(a, b), evaluated with the modified
// Lentz method; it converges fast for x < (a + 1) / (a + b + 2), where the caller uses it.
double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300;
  constexpr double eps = 1e-16;
  auto guard = [](double v) { return std::abs(v) < tiny ? tiny : v; };
  double c = 1, d = 1 / guard(1 - (a + b) * x / (a + 1));
  double result = d;
  for (int m = 1; m <= 1000; ++m) {
    // Two terms per m: the even one m (b - m) x / ((a + 2m - 1)(a + 2m)), then the odd one.
    const double even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
    d = 1 / guard(1 + even * d);
    c = guard(1 + even / c);
    result *= d * c;
    const double odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
    d = 1 / guard(1 + odd * d);
    c = guard(1 + odd / c);
    const double step = d * c;
    result *= step;
    if (std::abs(step - 1) < eps) break;
  }
  return result;
}

// I_x(a, b) = B(x; a, b) / B(a, b) for 0 <= x <= 1.
double regularized_incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  if (x < (a + 1) / (a + b + 2)) return std::exp(log_front) * incomplete_beta_fraction(a, b, x) / a;
  return 1 - std::exp(log_front) * incomplete_beta_fraction(b, a, 1 - x) / b;
}

}  // namespace

double student_t_cdf(double t, double dof) {
  ELLIPSE_CHECK(dof > 0 && std::isfinite(dof), "student_t_cdf: dof is {}; expected a positive finite number", dof);
  ELLIPSE_CHECK(!std::isnan(t), "student_t_cdf: t is NaN");
  // P(|T| > |t|) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2).
  const double tail = 0.5 * regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t));
  return t > 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double dof) {
  ELLIPSE_CHECK(p > 0 && p < 1, "student_t_quantile: p is {}; expected 0 < p < 1", p);
  ELLIPSE_CHECK(dof > 0 && std::isfinite(dof), "student_t_quantile: dof is {}; expected a positive finite number",
                dof);
  if (p < 0.5) return -student_t_quantile(1 - p, dof);
  // The cdf is increasing: bracket the root by doubling, then bisect to the resolution of a double.
  double lo = 0, hi = 1;
  while (student_t_cdf(hi, dof) < p) {
    lo = hi;
    hi *= 2;
  }
  for (int i = 0; i < 200 && hi - lo > 4 * std::numeric_limits<double>::epsilon() * hi; ++i) {
    const double mid = lo + (hi - lo) / 2;
    (student_t_cdf(mid, dof) < p ? lo : hi) = mid;
  }
  return lo + (hi - lo) / 2;
}

Spread spread_of(const std::vector<double>& values) {
  ELLIPSE_CHECK(!values.empty(), "spread_of: no values; expected one or more");
  Spread s;
  for (double v : values) s.mean += v;
  s.mean /= static_cast<double>(values.size());
  if (values.size() < 2) return s;
  for (double v : values) s.std += (v - s.mean) * (v - s.mean);
  s.std = std::sqrt(s.std / static_cast<double>(values.size() - 1));
  return s;
}

std::string_view verdict_name(Verdict verdict) {
  switch (verdict) {
    case Verdict::better: return "better";
    case Verdict::worse: return "worse";
    case Verdict::no_difference: return "no difference detected";
    case Verdict::one_seed: return "one seed: not judged";
  }
  return "?";
}

PairedComparison compare_paired(const std::vector<double>& baseline, const std::vector<double>& variant,
                                Better better, double negligible) {
  ELLIPSE_CHECK(negligible >= 0, "compare_paired: negligible is {}; expected >= 0", negligible);
  ELLIPSE_CHECK(!baseline.empty() && baseline.size() == variant.size(), "compare_paired: {} baseline and {} variant "
                "values; expected the same number, one per seed, at least one", baseline.size(), variant.size());
  PairedComparison c;
  for (std::size_t i = 0; i < baseline.size(); ++i) {
    ELLIPSE_CHECK(std::isfinite(baseline[i]) && std::isfinite(variant[i]), "compare_paired: seed {} has baseline {} "
                  "and variant {}; expected finite values", i, baseline[i], variant[i]);
    c.differences.push_back(variant[i] - baseline[i]);
  }
  c.difference = spread_of(c.differences);
  const std::size_t n = c.differences.size();
  if (n < 2) return c;
  const double half_width =
      student_t_quantile(0.975, static_cast<double>(n - 1)) * c.difference.std / std::sqrt(static_cast<double>(n));
  c.ci95 = Interval{c.difference.mean - half_width, c.difference.mean + half_width};
  const bool above = c.ci95->lo > 0, below = c.ci95->hi < 0;
  if ((!above && !below) || std::abs(c.difference.mean) < negligible)
    c.verdict = Verdict::no_difference;
  else
    c.verdict = above == (better == Better::higher) ? Verdict::better : Verdict::worse;
  return c;
}

}  // namespace ellipse::study
