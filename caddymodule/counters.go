package caddymodule

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The counts GET /mcp/status shows are kept here, in atomics the proxy
// reads, and exported to Prometheus from them: the admin API never reads a
// number back out of a Prometheus collector.

// counter is a Prometheus counter the proxy reads too.
type counter struct {
	desc *prometheus.Desc // nil for a member of a counterVec
	n    atomic.Uint64
}

func newCounter(opts prometheus.CounterOpts) *counter {
	return &counter{desc: prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, opts.Subsystem, opts.Name), opts.Help, nil, nil)}
}

// Inc adds one.
func (c *counter) Inc() { c.n.Add(1) }

// Add adds n.
func (c *counter) Add(n uint64) { c.n.Add(n) }

// Value is the count.
func (c *counter) Value() float64 { return float64(c.n.Load()) }

// Describe implements prometheus.Collector.
func (c *counter) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *counter) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, c.Value())
}

// counterVec is a Prometheus counter family of one label the proxy reads
// too. Like a prometheus.CounterVec, a label value's series exists from
// its first count; the values are the proxy's own words, a handful each.
type counterVec struct {
	desc   *prometheus.Desc
	counts sync.Map // label value → *counter
}

func newCounterVec(opts prometheus.CounterOpts, label string) *counterVec {
	return &counterVec{desc: prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, opts.Subsystem, opts.Name), opts.Help, []string{label}, nil)}
}

// WithLabelValues returns the counter of a label value.
func (v *counterVec) WithLabelValues(value string) *counter {
	if c, ok := v.counts.Load(value); ok {
		return c.(*counter)
	}
	c, _ := v.counts.LoadOrStore(value, new(counter))
	return c.(*counter)
}

// Value is the count of a label value, 0 before its first.
func (v *counterVec) Value(value string) float64 {
	if c, ok := v.counts.Load(value); ok {
		return c.(*counter).Value()
	}
	return 0
}

// Describe implements prometheus.Collector.
func (v *counterVec) Describe(ch chan<- *prometheus.Desc) { ch <- v.desc }

// Collect implements prometheus.Collector.
func (v *counterVec) Collect(ch chan<- prometheus.Metric) {
	v.counts.Range(func(value, c any) bool {
		ch <- prometheus.MustNewConstMetric(v.desc, prometheus.CounterValue, c.(*counter).Value(), value.(string))
		return true
	})
}

// gauge is a Prometheus gauge of a count the proxy reads too.
type gauge struct {
	desc *prometheus.Desc
	n    atomic.Int64
}

func newGauge(opts prometheus.GaugeOpts) *gauge {
	return &gauge{desc: prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, opts.Subsystem, opts.Name), opts.Help, nil, nil)}
}

// Inc adds one.
func (g *gauge) Inc() { g.n.Add(1) }

// Dec takes one away.
func (g *gauge) Dec() { g.n.Add(-1) }

// Value is the count.
func (g *gauge) Value() int64 { return g.n.Load() }

// Describe implements prometheus.Collector.
func (g *gauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements prometheus.Collector.
func (g *gauge) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(g.Value()))
}
