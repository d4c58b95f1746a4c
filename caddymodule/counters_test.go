package caddymodule

import (
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestCountersExportWhatTheyHold(t *testing.T) {
	c := newCounter(prometheus.CounterOpts{Namespace: "t", Name: "things_total", Help: "Things."})
	v := newCounterVec(prometheus.CounterOpts{Namespace: "t", Name: "kinds_total", Help: "Kinds."}, "kind")
	g := newGauge(prometheus.GaugeOpts{Namespace: "t", Name: "open", Help: "Open."})
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{c, v, g} {
		if err := reg.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	c.Inc()
	c.Add(41)
	v.WithLabelValues("a").Inc()
	v.WithLabelValues("b").Add(2)
	v.WithLabelValues("a").Inc()
	g.Inc()
	g.Inc()
	g.Dec()
	if c.Value() != 42 || v.Value("a") != 2 || v.Value("b") != 2 || v.Value("none") != 0 || g.Value() != 1 {
		t.Fatalf("values: %v %v %v %v", c.Value(), v.Value("a"), v.Value("b"), g.Value())
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				got[key] = "counter " + ftoa(m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				got[key] = "gauge " + ftoa(m.GetGauge().GetValue())
			}
		}
	}
	want := map[string]string{
		"t_things_total": "counter 42", "t_kinds_total{kind=a}": "counter 2", "t_kinds_total{kind=b}": "counter 2", "t_open": "gauge 1",
	}
	if len(got) != len(want) {
		t.Fatalf("gathered %v", got)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
