package policy

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestSampler(t *testing.T) {
	tests := []struct {
		n    int
		want string
	}{
		{-1, "kkkkkk"},
		{0, "kkkkkk"},
		{1, "kkkkkk"},
		{2, "k.k.k."},
		{3, "k..k..k.."},
	}
	for _, tt := range tests {
		s := NewSampler(tt.n)
		var got []byte
		for range len(tt.want) {
			if s.Keep() {
				got = append(got, 'k')
			} else {
				got = append(got, '.')
			}
		}
		if string(got) != tt.want {
			t.Errorf("NewSampler(%d): %s, want %s", tt.n, got, tt.want)
		}
	}
	var nilSampler *Sampler
	if !nilSampler.Keep() || !(&Sampler{}).Keep() {
		t.Error("a nil or zero Sampler drops")
	}
}

func TestSamplerConcurrent(t *testing.T) {
	s := NewSampler(10)
	var kept atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2500 {
				if s.Keep() {
					kept.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if kept.Load() != 1000 {
		t.Fatalf("kept %d of 10000, want 1000", kept.Load())
	}
}
