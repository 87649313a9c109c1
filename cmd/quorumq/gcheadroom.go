package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Go's garbage collector lets the heap grow to twice its live size
// (GOGC=100) before it collects. A node's live heap is mostly the index of
// its backlog, so with a large backlog that headroom is hundreds of
// megabytes of RSS that hold nothing: 1,000,000 queued messages made
// three nodes' live heap about 570 MB and their RSS 2 GB. The server
// bounds the headroom instead: the GC percent is lowered so that the
// heap grows by about gcHeadroom bytes between collections, never below
// minGCPercent, and stays at Go's 100 while the live heap is small, where
// the headroom costs little memory and fewer collections save CPU.
const (
	defaultGCHeadroom = 256 << 20
	minGCPercent      = 25
	gcTuneInterval    = time.Second
)

// gcPercentFor is the GC percent that gives a live heap of live bytes
// about headroom bytes to grow, within [minGCPercent, 100].
func gcPercentFor(live, headroom uint64) int {
	if live == 0 || headroom >= live {
		return 100
	}
	return max(int(headroom*100/live), minGCPercent)
}

// liveHeap is the heap the last collection marked live.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// gcTuner sets the GC percent from the live heap.
type gcTuner struct {
	headroom uint64
	percent  int
}

// step sets the GC percent for a live heap of live bytes when it moved
// by 5 points or more, or reached a bound, and reports whether it did.
func (g *gcTuner) step(live uint64) bool {
	p := gcPercentFor(live, g.headroom)
	if d := p - g.percent; d < 5 && d > -5 && (p == g.percent || (p != 100 && p != minGCPercent)) {
		return false
	}
	debug.SetGCPercent(p)
	g.percent = p
	return true
}

// tuneGC bounds the GC's headroom to about headroom bytes until ctx ends.
// It does nothing when headroom is 0 or GOGC is set: an operator's
// setting wins.
func tuneGC(ctx context.Context, headroom uint64, log *slog.Logger) {
	if headroom == 0 || os.Getenv("GOGC") != "" {
		return
	}
	g := &gcTuner{headroom: headroom, percent: 100}
	go func() {
		t := time.NewTicker(gcTuneInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if live := liveHeap(); g.step(live) {
				log.Debug("gc percent set for the live heap", "gc_percent", g.percent, "live_heap_bytes", live)
			}
		}
	}()
}
