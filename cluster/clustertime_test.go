package cluster

import (
	"log/slog"
	"testing"
	"time"
)

// manualClock is a Clock that moves only when told.
type manualClock struct {
	wall time.Time
	mono time.Duration
}

func (c *manualClock) Wall() time.Time     { return c.wall }
func (c *manualClock) Mono() time.Duration { return c.mono }

// advance moves both clocks by d, as real time passing does.
func (c *manualClock) advance(d time.Duration) {
	c.wall = c.wall.Add(d)
	c.mono += d
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTestClusterTime() (*clusterTime, *manualClock) {
	clk := &manualClock{wall: epoch, mono: time.Hour}
	return newClusterTime(clk, "n1", slog.New(slog.DiscardHandler)), clk
}

var voters3 = []string{"n1", "n2", "n3"}

// peersAt makes n2 and n3 report wall clocks off by d2 and d3 from the
// local clock's wall time now.
func peersAt(ct *clusterTime, clk *manualClock, d2, d3 time.Duration) {
	ct.sample("n2", clk.wall.Add(d2).UnixNano(), 0)
	ct.sample("n3", clk.wall.Add(d3).UnixNano(), 0)
}

func TestReferenceIsTheMedianOfAMajorityThatAgrees(t *testing.T) {
	ms := func(v ...int64) []clockReading {
		var out []clockReading
		for i, x := range v {
			out = append(out, clockReading{id: string(rune('a' + i)), wall: x * int64(time.Millisecond)})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		rs     []clockReading
		voters int
		want   int64 // ms
		ok     bool
	}{
		{"all agree", ms(1000, 1100, 1200), 3, 1100, true},
		{"one an hour ahead is outvoted", ms(3_600_000, 1000, 1200), 3, 1100, true},
		{"one behind is outvoted", ms(-3_600_000, 1000, 1200), 3, 1100, true},
		{"no two within tolerance", ms(0, 1000, 2000), 3, 0, false},
		{"only one clock read of three", ms(1000), 3, 0, false},
		{"two of five agreeing are not a majority", ms(0, 100, 5000, 10000, 20000), 5, 0, false},
		{"three of five", ms(0, 100, 400, 10000, 20000), 5, 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref, _, ok := reference(tc.rs, tc.voters, "a")
			if ok != tc.ok || (ok && ref != tc.want*int64(time.Millisecond)) {
				t.Fatalf("reference = %v, %v; want %v ms, %v", time.Duration(ref), ok, tc.want, tc.ok)
			}
		})
	}
}

// The first command of a new cluster takes the clocks' time; after that
// time runs on the monotonic clock whatever this node's wall clock does.
func TestStampFollowsTheMonotonicClockNotTheWallClock(t *testing.T) {
	ct, clk := newTestClusterTime()
	first := ct.stamp(0, voters3)
	if first != epoch.UnixNano() {
		t.Fatalf("first stamp of a cluster %v, want the wall clock %v", time.Unix(0, first), epoch)
	}
	for _, jump := range []time.Duration{time.Hour, -2 * time.Hour, 30 * time.Minute} {
		clk.wall = clk.wall.Add(jump)
		clk.mono += 100 * time.Millisecond
		got := ct.stamp(first, voters3)
		if want := first + int64(100*time.Millisecond); got != want {
			t.Fatalf("after a wall-clock jump of %v: stamp moved %v, want 100ms (the monotonic time)", jump, time.Duration(got-first))
		}
		first = got
	}
}

// A new leader starts from the last command it applied, plus its
// monotonic time since.
func TestStampContinuesFromTheLastAppliedCommand(t *testing.T) {
	ct, clk := newTestClusterTime()
	clk.wall = clk.wall.Add(time.Hour) // this node's wall clock is wrong
	applied := epoch.UnixNano()
	ct.applied(applied)
	clk.advance(2 * time.Second)
	if got := ct.stamp(applied, voters3); got != applied+int64(2*time.Second) {
		t.Fatalf("stamp = applied + %v, want + 2s", time.Duration(got-applied))
	}
	// Without any anchor (nothing applied since start), time stands still
	// until a stamp of its own or an applied command gives one.
	ct2, clk2 := newTestClusterTime()
	clk2.advance(time.Minute)
	if got := ct2.now(applied); got.UnixNano() != applied {
		t.Fatalf("estimate without an anchor = %v, want the FSM's time", got)
	}
}

// Behind the majority's clocks, cluster time catches up at no more than
// 1+catchUpRate times the monotonic clock; ahead of them, it neither goes
// back nor slows down.
func TestStampCatchesUpWithTheReferenceAtABoundedRate(t *testing.T) {
	ct, clk := newTestClusterTime()
	behind := epoch.Add(-10 * time.Second).UnixNano()
	ct.applied(behind)
	prev := ct.stamp(behind, voters3)
	// 10 s behind at 10 %: caught up after 100 s.
	for i := 0; i < 1100; i++ {
		clk.advance(100 * time.Millisecond)
		peersAt(ct, clk, 0, 50*time.Millisecond)
		got := ct.stamp(prev, voters3)
		step := time.Duration(got - prev)
		if step < 100*time.Millisecond || step > 110*time.Millisecond+time.Microsecond {
			t.Fatalf("stamp %d: step %v for 100ms of monotonic time; want 100ms..110ms", i, step)
		}
		prev = got
	}
	if lag := clk.wall.UnixNano() - prev; lag > int64(100*time.Millisecond) || lag < 0 {
		t.Fatalf("after 110 s of catching up at 10%%, cluster time is %v behind the clocks, want caught up", time.Duration(lag))
	}

	ahead := clk.wall.Add(time.Hour).UnixNano()
	ct.applied(ahead)
	clk.advance(time.Second)
	peersAt(ct, clk, 0, 0)
	if got := ct.stamp(ahead, voters3); got != ahead+int64(time.Second) {
		t.Fatalf("ahead of the clocks: stamp moved %v in 1s", time.Duration(got-ahead))
	}
}

// Offsets are each clock against this node's cluster time.
func TestOffsets(t *testing.T) {
	ct, clk := newTestClusterTime()
	now := ct.stamp(0, voters3)
	peersAt(ct, clk, time.Hour, -time.Second)
	off := ct.offsets(now, voters3)
	if off["n1"] != 0 || off["n2"] != time.Hour || off["n3"] != -time.Second {
		t.Fatalf("offsets = %v", off)
	}
	clk.advance(clockSampleTTL + time.Second)
	if off := ct.offsets(now, voters3); len(off) != 1 {
		t.Fatalf("offsets from stale readings: %v", off)
	}
}

// A node that has neither applied a command nor stamped one has no cluster
// time yet: it reports no offsets, rather than every wall clock against
// the Unix epoch (a fresh cluster's status showed 499001h).
func TestNoOffsetsBeforeClusterTimeExists(t *testing.T) {
	ct, clk := newTestClusterTime()
	peersAt(ct, clk, time.Second, 0)
	if off := ct.offsets(0, voters3); len(off) != 0 {
		t.Fatalf("offsets before any cluster time: %v, want none", off)
	}
	ct.applied(clk.wall.UnixNano())
	if off := ct.offsets(0, voters3); off["n2"] != time.Second {
		t.Fatalf("offsets once a command is applied: %v, want n2 at 1s", off)
	}
}

// BenchmarkStamp is what cluster time adds to every proposal on the
// leader (go test ./cluster -run '^$' -bench Stamp).
func BenchmarkStamp(b *testing.B) {
	ct := newClusterTime(SystemClock{}, "n1", slog.New(slog.DiscardHandler))
	now := time.Now()
	ct.sample("n2", now.UnixNano(), time.Millisecond)
	ct.sample("n3", now.UnixNano(), time.Millisecond)
	last := ct.stamp(0, voters3)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		last = ct.stamp(last, voters3)
	}
}
