package main

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGCPercentBoundsTheHeadroom(t *testing.T) {
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{0, 256 << 20, 100},
		{100 << 20, 256 << 20, 100},
		{512 << 20, 256 << 20, 50},
		{1 << 30, 256 << 20, 25},
		{8 << 30, 256 << 20, minGCPercent},
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("live %d MiB, headroom %d MiB: gc percent %d, want %d", c.live>>20, c.headroom>>20, got, c.want)
		}
	}
}

// TestGCTunerSetsTheRuntimesPercent: with 64 MiB live and 16 MiB of
// headroom the runtime's GC percent becomes 25, and back to 100 once the
// live heap is gone.
func TestGCTunerSetsTheRuntimesPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	g := &gcTuner{headroom: 16 << 20, percent: 100}
	live := make([]byte, 64<<20)
	for i := range live {
		live[i] = byte(i)
	}
	runtime.GC()
	g.step(liveHeap())
	if p := debug.SetGCPercent(100); p != 25 {
		t.Fatalf("gc percent %d with %d MiB live and 16 MiB of headroom, want 25", p, liveHeap()>>20)
	}
	debug.SetGCPercent(25)
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	g.step(liveHeap())
	if p := debug.SetGCPercent(100); p != 100 {
		t.Fatalf("gc percent %d with %d MiB live, want 100", p, liveHeap()>>20)
	}
}
