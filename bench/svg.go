//go:build linux

package main

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// series is one line of a chart.
type series struct {
	Name string
	X, Y []float64
}

// hline is a dashed horizontal reference line.
type hline struct {
	Y     float64
	Label string
}

// lineChart is a small line chart rendered as standalone SVG.
type lineChart struct {
	Title, XLabel, YLabel string
	Subtitle              string // a smaller line under the title; may be empty
	Series                []series
	HLines                []hline
	XTicks                []float64 // tick positions; derived from the data when empty
	LogX                  bool      // log10 x axis (all x must be > 0)
	// XTickFormat labels the x ticks; nil labels them as multiples
	// ("2×").
	XTickFormat func(float64) string
}

// Chart geometry, in SVG user units.
const (
	svgW, svgH                     = 720, 420
	padL, padR, padT, padB float64 = 70, 150, 40, 55
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// niceCeil rounds v up to 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power
// of ten, so the five axis ticks fall on round numbers. It returns 1 for v ≤ 0.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	exp := math.Floor(math.Log10(v))
	base := math.Pow(10, exp)
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if c := m * base; c >= v*(1-1e-12) {
			return c
		}
	}
	return 10 * base
}

// fmtTick formats an axis value without trailing zeros.
func fmtTick(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// SVG renders the chart.
func (c *lineChart) SVG() []byte {
	var b strings.Builder
	esc := html.EscapeString
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&b, `<text x="%g" y="20" font-size="15" font-weight="bold">%s</text>`+"\n", padL, esc(c.Title))
	if c.Subtitle != "" {
		fmt.Fprintf(&b, `<text x="%g" y="34" font-size="11" fill="#444">%s</text>`+"\n", padL, esc(c.Subtitle))
	}

	// Data ranges.
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymax := 0.0
	for _, s := range c.Series {
		for i := range s.X {
			xmin, xmax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i])
			if i < len(s.Y) {
				ymax = math.Max(ymax, s.Y[i])
			}
		}
	}
	for _, h := range c.HLines {
		ymax = math.Max(ymax, h.Y)
	}
	for _, t := range c.XTicks {
		xmin, xmax = math.Min(xmin, t), math.Max(xmax, t)
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	if c.LogX && xmin <= 0 {
		c.LogX = false
	}
	if xmin == xmax {
		if c.LogX {
			xmin, xmax = xmin/2, xmax*2
		} else {
			xmin, xmax = xmin-1, xmax+1
		}
	}
	ytop := niceCeil(ymax * 1.05)
	plotW, plotH := svgW-padL-padR, svgH-padT-padB
	fx := func(x float64) float64 {
		if c.LogX {
			return padL + (math.Log10(x)-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin))*plotW
		}
		return padL + (x-xmin)/(xmax-xmin)*plotW
	}
	fy := func(y float64) float64 { return padT + plotH - y/ytop*plotH }

	// Axes, grid and ticks.
	fmt.Fprintf(&b, `<rect x="%g" y="%g" width="%g" height="%g" fill="none" stroke="#333"/>`+"\n", padL, padT, plotW, plotH)
	for i := 0; i <= 5; i++ {
		v := ytop * float64(i) / 5
		y := fy(v)
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ddd"/>`+"\n", padL, y, padL+plotW, y)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padL-6, y, fmtTick(v))
	}
	ticks := c.XTicks
	if len(ticks) == 0 {
		ticks = []float64{xmin, xmax}
	}
	tickLabel := c.XTickFormat
	if tickLabel == nil {
		tickLabel = func(v float64) string { return fmtTick(v) + "×" }
	}
	for _, t := range ticks {
		x := fx(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#eee"/>`+"\n", x, padT, x, padT+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", x, padT+plotH+16, esc(tickLabel(t)))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">%s</text>`+"\n", padL+plotW/2, float64(svgH)-14, esc(c.XLabel))
	fmt.Fprintf(&b, `<text x="16" y="%g" text-anchor="middle" transform="rotate(-90 16 %g)">%s</text>`+"\n", padT+plotH/2, padT+plotH/2, esc(c.YLabel))

	for _, h := range c.HLines {
		y := fy(h.Y)
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#888" stroke-dasharray="6 4"/>`+"\n", padL, y, padL+plotW, y)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" fill="#666" text-anchor="end">%s</text>`+"\n", padL+plotW-6, y-5, esc(h.Label))
	}

	// Lines, points and legend.
	for i, s := range c.Series {
		color := palette[i%len(palette)]
		var pts []string
		for j := range s.X {
			if j >= len(s.Y) || (c.LogX && s.X[j] <= 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", fx(s.X[j]), fy(s.Y[j])))
		}
		if len(pts) > 1 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		}
		for _, p := range pts {
			xy := strings.SplitN(p, ",", 2)
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3.5" fill="%s"/>`+"\n", xy[0], xy[1], color)
		}
		ly := padT + 14 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="2"/>`+"\n", padL+plotW+10, ly, padL+plotW+30, ly, color)
		fmt.Fprintf(&b, `<text x="%g" y="%g" dominant-baseline="middle">%s</text>`+"\n", padL+plotW+36, ly, esc(s.Name))
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
