//go:build linux

package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest sample such that at least p % of the
// samples are less than or equal to it. It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	if p >= 100 {
		return sorted[n-1]
	}
	// The epsilon keeps p·n that is an integer in exact arithmetic (such as
	// 0.9·10) from rounding up to the next rank in floating point.
	rank := int(math.Ceil(p/100*float64(n) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// latencySummary holds the usual latency figures of a set of samples.
type latencySummary struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// summarize sorts samples in place and returns their summary.
func summarize(samples []time.Duration) latencySummary {
	slices.Sort(samples)
	s := latencySummary{N: len(samples)}
	if len(samples) == 0 {
		return s
	}
	s.P50 = percentile(samples, 50)
	s.P90 = percentile(samples, 90)
	s.P99 = percentile(samples, 99)
	s.Max = samples[len(samples)-1]
	return s
}

// median returns the median of xs (the mean of the two middle values for
// an even count); 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// medianDuration is median for durations.
func medianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(math.Round(median(xs)))
}

// ms formats a duration in milliseconds with a precision that suits its
// size: 0.123, 1.23, 12.3, 123.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case d == 0:
		return "0"
	case v < 1:
		return fmt.Sprintf("%.3f", v)
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// rate formats a per-second figure.
func rate(v float64) string {
	if v >= 100 || v == 0 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// ratio formats a/b as "1.23×", or "–" when b is 0.
func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// parseMultiples parses a comma-separated list of positive numbers such as
// "1,2,5,10" or "0.5, 1.5".
func parseMultiples(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, fmt.Errorf("bad multiple %q: want a positive number", f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no multiples in %q", s)
	}
	return out, nil
}

// fmtMultiple formats a load multiple: 1×, 2×, 0.5×.
func fmtMultiple(m float64) string {
	return fmt.Sprintf("%g×", m)
}

// rotate returns xs rotated left by k: the order of round k when every
// round runs every target once.
func rotate[T any](xs []T, k int) []T {
	n := len(xs)
	if n == 0 {
		return nil
	}
	k = ((k % n) + n) % n
	out := make([]T, 0, n)
	out = append(out, xs[k:]...)
	return append(out, xs[:k]...)
}
