#pragma once
// Statistics over the seeds of a study: the mean and spread of a measurement, and the paired comparison of a
// variant with the baseline. Runs of the same seed share their initialisation stream and data order, so the
// per-seed differences cancel what the seed does to both, and Student's t over those differences gives the 95%
// interval a verdict rests on.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace ellipse::study {

// P(T <= t) for T following Student's t distribution with `dof` > 0 degrees of freedom.
double student_t_cdf(double t, double dof);
// The t with student_t_cdf(t, dof) == p, for 0 < p < 1 and dof > 0 (e.g. 12.7062 for p 0.975, dof 1).
double student_t_quantile(double p, double dof);

struct Spread {
  double mean = 0;
  double std = 0;  // the sample standard deviation (n - 1 in the denominator); 0 for a single value
};
// Of one or more finite values.
Spread spread_of(const std::vector<double>& values);

enum class Better { higher, lower };  // which direction of a measurement counts as better

enum class Verdict {
  better,         // the 95% interval of variant - baseline lies wholly on the better side of 0
  worse,          // ... wholly on the worse side
  no_difference,  // the interval holds 0, or the difference is negligible: none detected at this number of seeds
  one_seed,       // a single seed has no spread, so no interval and no verdict
};
// "better", "worse", "no difference detected", "one seed: not judged".
std::string_view verdict_name(Verdict verdict);

struct Interval {
  double lo = 0, hi = 0;
};

// variant[i] - baseline[i] over seeds i, both measured on seed i.
struct PairedComparison {
  std::vector<double> differences{};
  Spread difference{};               // mean and sample standard deviation of the differences
  std::optional<Interval> ci95{};    // mean -+ t(0.975, n - 1) std / sqrt(n); unset for one seed
  Verdict verdict = Verdict::one_seed;
};
// Throws unless both hold the same number (>= 1) of finite values. A mean difference smaller in size than
// `negligible` (>= 0; e.g. below what a report prints) is no difference, whatever its interval.
PairedComparison compare_paired(const std::vector<double>& baseline, const std::vector<double>& variant,
                                Better better, double negligible = 0);

}  // namespace ellipse::study
