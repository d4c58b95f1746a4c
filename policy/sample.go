package policy

import "sync/atomic"

// Sampler keeps one record in N, deterministically by a counter (N <= 1
// keeps all): the first, the N+1st, and so on. Safe for concurrent use. A
// nil or zero Sampler keeps all.
type Sampler struct {
	n     uint64
	count atomic.Uint64
}

// NewSampler returns a Sampler that keeps one record in n.
func NewSampler(n int) *Sampler {
	s := &Sampler{}
	if n > 1 {
		s.n = uint64(n)
	}
	return s
}

// Keep reports whether to keep the next record.
func (s *Sampler) Keep() bool {
	if s == nil || s.n <= 1 {
		return true
	}
	return (s.count.Add(1)-1)%s.n == 0
}
