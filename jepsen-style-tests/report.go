package jepsen

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The report page is one self-contained HTML file: the plots are inline SVG
// drawn here, so a report folder can be archived by CI and opened anywhere
// without a plotting library or network access.

const (
	plotW, plotH       = 960, 220
	padL, padR         = 60, 20
	padT, padB         = 18, 30
	minLatMs, maxLatMs = 0.1, 10000.0
)

var statusColor = map[Status]string{StatusOK: "#2e7d32", StatusFail: "#c62828", StatusUnknown: "#ef6c00"}

type plot struct {
	Title string
	SVG   template.HTML
}

// WriteHTML writes the report page for res and its history.
func WriteHTML(path string, res *Result, ops []Op) error {
	var end int64 = 1
	for _, o := range ops {
		end = max(end, o.End)
	}
	for _, w := range res.Windows {
		end = max(end, w.End)
	}
	kinds := map[string][]Op{}
	for _, o := range ops {
		kinds[o.Kind] = append(kinds[o.Kind], o)
	}
	var plots []plot
	for _, k := range sortedKeys(kinds) {
		plots = append(plots, plot{Title: "latency of " + k + " (ms, log scale) over time (s)", SVG: latencyPlot(kinds[k], res.Windows, end)})
	}
	plots = append(plots, plot{Title: "throughput: completed operations per second, by outcome", SVG: throughputPlot(ops, res.Windows, end)})

	logs, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "nodes", "*.log"))
	for i := range logs {
		logs[i] = "nodes/" + filepath.Base(logs[i])
	}
	data := struct {
		R     *Result
		Plots []plot
		Ops   []string
		Logs  []string
	}{res, plots, sortedKeys(res.Ops), logs}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pageTmpl.Execute(f, data)
}

func xOf(t, end int64) float64 {
	return padL + float64(t)/float64(end)*float64(plotW-padL-padR)
}

func frame(b *strings.Builder, windows []Window, end int64) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="10">`, plotW, plotH)
	for _, w := range windows {
		x0, x1 := xOf(w.Start, end), xOf(w.End, end)
		fmt.Fprintf(b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#9e9e9e" fill-opacity="0.25"><title>%s</title></rect>`,
			x0, padT, max(x1-x0, 1), plotH-padT-padB, template.HTMLEscapeString(w.Nemesis))
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#616161">%s</text>`, x0+2, padT-4, template.HTMLEscapeString(w.Nemesis))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000"/>`, padL, plotH-padB, plotW-padR, plotH-padB)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000"/>`, padL, padT, padL, plotH-padB)
	secs := float64(end) / 1e9
	step := math.Max(1, math.Ceil(secs/12))
	for s := 0.0; s <= secs; s += step {
		x := xOf(int64(s*1e9), end)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000"/><text x="%.1f" y="%d" text-anchor="middle">%g</text>`,
			x, plotH-padB, x, plotH-padB+4, x, plotH-padB+16, s)
	}
}

func latencyPlot(ops []Op, windows []Window, end int64) template.HTML {
	var b strings.Builder
	frame(&b, windows, end)
	h := float64(plotH - padT - padB)
	yOf := func(ms float64) float64 {
		ms = math.Min(math.Max(ms, minLatMs), maxLatMs)
		f := (math.Log10(ms) - math.Log10(minLatMs)) / (math.Log10(maxLatMs) - math.Log10(minLatMs))
		return float64(plotH-padB) - f*h
	}
	for _, ms := range []float64{0.1, 1, 10, 100, 1000, 10000} {
		y := yOf(ms)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%g</text>`,
			padL, y, plotW-padR, y, padL-4, y+3, ms)
	}
	// Failed and unknown operations are drawn last so they stay visible.
	for _, st := range []Status{StatusOK, StatusFail, StatusUnknown} {
		fmt.Fprintf(&b, `<g fill="%s">`, statusColor[st])
		for _, o := range ops {
			if o.Status != st {
				continue
			}
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.6"/>`, xOf(o.Start, end), yOf(float64(o.End-o.Start)/1e6))
		}
		b.WriteString(`</g>`)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func throughputPlot(ops []Op, windows []Window, end int64) template.HTML {
	var b strings.Builder
	frame(&b, windows, end)
	buckets := int(end/1e9) + 1
	counts := map[Status][]int{}
	for _, st := range []Status{StatusOK, StatusFail, StatusUnknown} {
		counts[st] = make([]int, buckets)
	}
	peak := 1
	for _, o := range ops {
		i := int(o.End / 1e9)
		counts[o.Status][i]++
		peak = max(peak, counts[o.Status][i])
	}
	h := float64(plotH - padT - padB)
	yOf := func(n int) float64 { return float64(plotH-padB) - float64(n)/float64(peak)*h }
	for _, n := range []int{0, peak / 2, peak} {
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`, padL-4, yOf(n)+3, n)
	}
	for _, st := range []Status{StatusOK, StatusFail, StatusUnknown} {
		var pts []string
		for i, n := range counts[st] {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(int64(i)*1e9+5e8, end), yOf(n)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, statusColor[st], strings.Join(pts, " "))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var pageTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"secs": func(ns int64) string { return fmt.Sprintf("%.2f", float64(ns)/1e9) },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>quorumq jepsen: {{.R.Case}} seed {{.R.Seed}}</title>
<style>
body{font-family:sans-serif;margin:24px;max-width:1000px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f5f5f5} td.l,th.l{text-align:left}
.ok{color:#2e7d32}.bad{color:#c62828;font-weight:bold}
.legend span{margin-right:16px}
</style></head><body>
<h1>{{.R.Case}} — seed {{.R.Seed}}</h1>
<p>Started {{.R.Started}}, {{printf "%.0f" .R.Seconds}} s, network: {{.R.Network}}.
Verdict: {{if .R.Valid}}<span class="ok">valid</span>{{else}}<span class="bad">INVALID</span>{{end}}.
Replay with <code>go test ./jepsen-style-tests -run 'TestJepsen/{{.R.Case}}$' -seed {{.R.Seed}}</code>.</p>
{{if .R.Problems}}<h2>Problems</h2><ul>{{range .R.Problems}}<li class="bad">{{.}}</li>{{end}}</ul>{{end}}

<h2>Total-queue checks</h2>
<p>Counts of distinct values. lost: acknowledged sends never delivered; unexpected: delivered but never sent (or send definitely failed);
duplicated: delivered twice (at-least-once: allowed; at-most-once: forbidden) or put into the sink twice (exactly-once: forbidden);
recovered: send outcome unknown, delivered later; 2×enq: a dedup ID that got two message IDs; order: pairs of one producer's
enqueued messages whose message IDs do not rise with its send order; early: a message delivered again more than 2 s before its
previous lease ended by the harness's clock; dedup window: an acknowledged send inside its dedup window that got a new message ID.
A row "(only P)" counts producer P's values alone.</p>
<table><tr><th class="l">workload</th><th class="l">mode</th><th class="l">queue</th><th>attempted</th><th>ok</th><th>failed</th><th>unknown</th>
<th>delivered</th><th>lost</th><th>duplicated</th><th>unexpected</th><th>recovered</th><th>redelivered</th><th>2×enq</th><th>order</th><th>early</th><th>dedup window</th><th class="l">verdict</th></tr>
{{range .R.Queues}}<tr><td class="l">{{.Workload}}</td><td class="l">{{.Mode}}</td><td class="l">{{.Source}}{{if ne .Source .Sink}} → {{.Sink}}{{end}}{{if .Producer}} (only {{.Producer}}){{end}}</td>
<td>{{.Attempted}}</td><td>{{.OK}}</td><td>{{.Failed}}</td><td>{{.Unknown}}</td><td>{{.Delivered}}</td><td>{{.Lost}}</td><td>{{.Duplicated}}</td>
<td>{{.Unexpected}}</td><td>{{.Recovered}}</td><td>{{.Redelivered}}</td><td>{{.DoubleEnqueued}}</td><td>{{.OrderViolations}}</td><td>{{.EarlyRedeliveries}}</td><td>{{.DedupWindowViolations}}</td>
<td class="l">{{if .Valid}}<span class="ok">ok</span>{{else}}<span class="bad">{{range .Problems}}{{.}}; {{end}}</span>{{end}}</td></tr>
{{end}}</table>
{{range .R.Queues}}{{if or .LostValues .UnexpectedValues .DoubleEnqValues .OrderExamples .EarlyExamples .DedupExamples}}<p><b>{{.Workload}} {{.Sink}}{{if .Producer}} (only {{.Producer}}){{end}}</b>:
{{if .LostValues}}lost {{.LostValues}}. {{end}}{{if .UnexpectedValues}}unexpected {{.UnexpectedValues}}. {{end}}
{{if .DoubleEnqValues}}enqueued twice {{.DoubleEnqValues}}. {{end}}{{if .OrderExamples}}order {{.OrderExamples}}.{{end}}
{{if .EarlyExamples}}early {{.EarlyExamples}}. {{end}}{{if .DedupExamples}}dedup window {{.DedupExamples}}.{{end}}</p>{{end}}{{end}}

{{range .R.Queues}}{{$q := .}}{{with .Groups}}<h3>Message groups of {{$q.Source}}: {{.Groups}} groups</h3>
<p>{{.Messages}} messages, {{.Acked}} acked, {{.DeadLettered}} dead-lettered (DLQ read at the end: {{.DLQRead}}).
same receive: two messages of one group in one receive; early delivery: a message delivered before an earlier message of its group
could have been settled (acked, rejected or dead-lettered); ack order: a message acked before an earlier one of its group could
have been settled; gaps: neither acked nor in the DLQ; duplicates: acked at two attempts, delivered after its ack returned, or
both acked and dead-lettered.</p>
<table><tr><th>same receive</th><th>early delivery</th><th>ack order</th><th>gaps</th><th>duplicates</th><th>wrong group</th><th class="l">verdict</th></tr>
<tr><td>{{.SameReceive}}</td><td>{{.EarlyDeliveries}}</td><td>{{.AckOrder}}</td><td>{{.Gaps}}</td><td>{{.Duplicates}}</td><td>{{.WrongGroup}}</td>
<td class="l">{{if .Valid}}<span class="ok">ok</span>{{else}}<span class="bad">{{range .Problems}}{{.}}; {{end}}</span>{{end}}</td></tr></table>
{{if or .SameReceiveExamples .EarlyExamples .AckOrderExamples .GapExamples .DuplicateExamples .WrongGroupExamples}}<ul>
{{range .SameReceiveExamples}}<li>{{.}}</li>{{end}}{{range .EarlyExamples}}<li>{{.}}</li>{{end}}{{range .AckOrderExamples}}<li>{{.}}</li>{{end}}
{{range .GapExamples}}<li>{{.}}</li>{{end}}{{range .DuplicateExamples}}<li>{{.}}</li>{{end}}{{range .WrongGroupExamples}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{end}}{{end}}

<h2>Operations by outcome</h2>
<table><tr><th class="l">workload</th><th>total</th><th>ok</th><th>failed</th><th>unknown</th><th>during faults</th><th>failed during faults</th><th>unknown during faults</th></tr>
{{range $w := .Ops}}{{with index $.R.Ops $w}}<tr><td class="l">{{$w}}</td><td>{{.Total}}</td><td>{{.OK}}</td><td>{{.Failed}}</td><td>{{.Unknown}}</td>
<td>{{.DuringFaults}}</td><td>{{.FailedDuringFaults}}</td><td>{{.UnknownDuringFaults}}</td></tr>{{end}}{{end}}</table>

<h2>FIFO linearizability (porcupine)</h2>
{{with .R.FIFO}}<p>Result: <b>{{.Result}}</b> over {{.Operations}} operations ({{.Unknown}} with unknown outcome).
<a href="fifo-linearizability.html">porcupine's visualisation</a> (each FIFO queue is one partition).</p>{{end}}

<h2>State hashes after healing</h2>
<p>{{if .R.Convergence.Converged}}<span class="ok">all nodes equal</span>{{else}}<span class="bad">{{.R.Convergence.Problem}}</span>{{end}}</p>
<table><tr><th class="l">node</th><th>applied index</th><th class="l">state hash</th></tr>
{{range $id, $h := .R.Convergence.Hashes}}<tr><td class="l">{{$id}}</td><td>{{index $.R.Convergence.Applied $id}}</td><td class="l"><code>{{$h}}</code></td></tr>{{end}}</table>

<h2>Plots</h2>
<p class="legend"><span style="color:#2e7d32">● ok</span><span style="color:#c62828">● failed</span><span style="color:#ef6c00">● unknown</span>
<span style="background:#9e9e9e40">&nbsp;fault window&nbsp;</span></p>
{{range .Plots}}<h3>{{.Title}}</h3>{{.SVG}}{{end}}

<h2>Faults</h2>
<table><tr><th>time (s)</th><th class="l">nemesis</th><th class="l">action</th><th class="l">detail</th><th class="l">error</th></tr>
{{range .R.Faults}}<tr><td>{{secs .Time}}</td><td class="l">{{.Nemesis}}</td><td class="l">{{.Action}}</td><td class="l">{{.Detail}}</td><td class="l bad">{{.Error}}</td></tr>{{end}}</table>

<h2>Files</h2>
<ul><li><a href="history.jsonl">history.jsonl</a> — every client operation</li>
<li><a href="nemesis.jsonl">nemesis.jsonl</a> — every fault event</li>
<li><a href="results.json">results.json</a> — this page's numbers</li>
{{range .Logs}}<li><a href="{{.}}">{{.}}</a></li>{{end}}</ul>
</body></html>
`))
