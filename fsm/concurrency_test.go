package fsm

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestConcurrentReadsAndPersist applies commands while other goroutines
// read stats, watch, hash and persist a snapshot taken mid-way; run it with
// -race. The persisted snapshot must restore to the hash at the moment it
// was taken.
func TestConcurrentReadsAndPersist(t *testing.T) {
	h := busyState(t)
	g := newGen(rngChooser{newRand(11)})
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := h.f.StateHash()

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.f.Queues()
				_, _ = h.f.Queue("a")
				h.f.Watch("b", time.Unix(0, t0))
				h.f.AppliedIndex()
			}
		})
	}
	var persisted memSink
	wg.Go(func() {
		if err := snap.Persist(&persisted); err != nil {
			t.Error(err)
		}
	})
	for i := range 2000 {
		h.f.ApplyCommand(uint64(1000+i), g.next())
		if i%500 == 0 {
			h.f.StateHash()
		}
	}
	close(stop)
	wg.Wait()

	r := New()
	if err := r.Restore(io.NopCloser(bytes.NewReader(persisted.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if r.StateHash() != want {
		t.Fatal("snapshot persisted concurrently with Apply is not the state it was taken from")
	}
}

// TestTickBoundsMemory checks that after the window everything a
// delivered-and-acked message left behind (tombstone, dedup entry, replay
// entry) is purged.
func TestTickBoundsMemory(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	for i := range 50 {
		h.ok(enq("q", msg("m", string(rune('a'+i%26))+string(rune('a'+i/26)))))
	}
	r := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 50, RequestId: "r"}))
	var rs []*fsmpb.Receipt
	for _, d := range r.Deliveries {
		rs = append(rs, d.Receipt)
	}
	h.ok(ackCmd("q", rs...))
	h.at(DefaultDedupWindow + time.Second)
	if n := h.ok(tickCmd()).Count; n != 50+50+1 {
		t.Fatalf("tick purged %d entries, want 101 (50 dedup, 50 tombstones, 1 replay)", n)
	}
	h.f.mu.RLock()
	defer h.f.mu.RUnlock()
	q := h.f.get("q")
	if q.msgs.Len()+q.tombs.Len()+q.dedup.Len()+q.replay.Len()+q.replayAt.Len() != 0 {
		t.Fatalf("left behind: msgs %d tombs %d dedup %d replay %d", q.msgs.Len(), q.tombs.Len(), q.dedup.Len(), q.replay.Len())
	}
}
