package fsm

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

const benchBody = 256

func benchMessages(n, seq int, dedup bool) []*fsmpb.Message {
	out := make([]*fsmpb.Message, n)
	for i := range out {
		out[i] = &fsmpb.Message{Body: make([]byte, benchBody)}
		if dedup {
			// 26 characters, the length of a ULID.
			out[i].DedupId = fmt.Sprintf("01J%023d", seq*n+i)
		}
	}
	return out
}

func benchEnqueue(b *testing.B, batch, readers int) {
	f := New()
	f.ApplyCommand(1, &fsmpb.Command{NowUnixNano: t0, Op: createQ("q", nil).Op})
	logs := make([]*raft.Log, b.N)
	for i := range logs {
		data, err := Encode(&fsmpb.Command{NowUnixNano: t0 + int64(i), Op: enq("q", benchMessages(batch, i, true)...).Op})
		if err != nil {
			b.Fatal(err)
		}
		logs[i] = &raft.Log{Index: uint64(i + 2), Type: raft.LogCommand, Data: data}
	}
	b.ReportAllocs()
	defer withReaders(f, readers)()
	b.ResetTimer()
	for i := range b.N {
		if err := ResultError(f.Apply(logs[i]).(*fsmpb.Result)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkApplyEnqueue1 is Apply (decode included) of an enqueue of one
// 256-byte message with a dedup ID.
func BenchmarkApplyEnqueue1(b *testing.B) { benchEnqueue(b, 1, 0) }

// BenchmarkApplyEnqueue1Readers is BenchmarkApplyEnqueue1 while two
// goroutines read stats without pause, as long polls and GetQueue do.
func BenchmarkApplyEnqueue1Readers(b *testing.B) { benchEnqueue(b, 1, 2) }

// withReaders starts n goroutines calling Queue until the returned func is
// called.
func withReaders(f *FSM, n int) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = f.Queue("q")
				}
			}
		})
	}
	return func() { close(stop); wg.Wait() }
}

// benchCodec encodes (or decodes) an enqueue of batch 256-byte messages
// with dedup IDs: the framing every command gets on its way into the
// Raft log and out of it on each node.
func benchCodec(b *testing.B, batch int, decode bool) {
	cmd := &fsmpb.Command{NowUnixNano: t0, Op: enq("q", benchMessages(batch, 0, true)...).Op}
	data, err := Encode(cmd)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if decode {
			_, err = Decode(data)
		} else {
			_, err = Encode(cmd)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeEnqueue1(b *testing.B)   { benchCodec(b, 1, false) }
func BenchmarkEncodeEnqueue100(b *testing.B) { benchCodec(b, 100, false) }
func BenchmarkDecodeEnqueue1(b *testing.B)   { benchCodec(b, 1, true) }
func BenchmarkDecodeEnqueue100(b *testing.B) { benchCodec(b, 100, true) }

// BenchmarkApplyEnqueue100 is Apply of an enqueue batch of 100.
func BenchmarkApplyEnqueue100(b *testing.B) { benchEnqueue(b, 100, 0) }

// BenchmarkReceiveAck100 is one receive(100) and one ack(100), each
// encoded and applied as a log entry.
func BenchmarkReceiveAck100(b *testing.B) {
	f := New()
	f.ApplyCommand(1, &fsmpb.Command{NowUnixNano: t0, Op: createQ("q", nil).Op})
	idx := uint64(1)
	for i := range b.N {
		idx++
		f.ApplyCommand(idx, &fsmpb.Command{NowUnixNano: t0, Op: enq("q", benchMessages(100, i, true)...).Op})
	}
	apply := func(cmd *fsmpb.Command) *fsmpb.Result {
		data, err := Encode(cmd)
		if err != nil {
			b.Fatal(err)
		}
		idx++
		res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(*fsmpb.Result)
		if err := ResultError(res); err != nil {
			b.Fatal(err)
		}
		return res
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		now := t0 + int64(i)
		res := apply(&fsmpb.Command{NowUnixNano: now, Op: recvCmd(recv("q", 100)).Op})
		if len(res.Deliveries) != 100 {
			b.Fatalf("received %d", len(res.Deliveries))
		}
		rs := make([]*fsmpb.Receipt, len(res.Deliveries))
		for j, d := range res.Deliveries {
			rs[j] = d.Receipt
		}
		apply(&fsmpb.Command{NowUnixNano: now, Op: ackCmd("q", rs...).Op})
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
}

const million = 1_000_000

// fill enqueues n 256-byte messages in batches of 1000.
func fill(f *FSM, n int, dedup bool) {
	f.ApplyCommand(1, &fsmpb.Command{NowUnixNano: t0, Op: createQ("q", nil).Op})
	for i := range n / 1000 {
		res := f.ApplyCommand(uint64(i+2), &fsmpb.Command{NowUnixNano: t0 + int64(i), Op: enq("q", benchMessages(1000, i, dedup)...).Op})
		if err := ResultError(res); err != nil {
			panic(err)
		}
	}
}

var (
	bigOnce sync.Once
	big     *FSM
	bigSnap []byte
)

// bigState is an FSM with a million queued 256-byte messages with dedup
// IDs, and its persisted snapshot.
func bigState(b *testing.B) (*FSM, []byte) {
	bigOnce.Do(func() {
		big = New()
		fill(big, million, true)
		snap, _ := big.Snapshot()
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			b.Fatal(err)
		}
		bigSnap = sink.Bytes()
	})
	return big, bigSnap
}

// BenchmarkSnapshot1M is Snapshot() with 1M queued messages.
func BenchmarkSnapshot1M(b *testing.B) {
	f, _ := bigState(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		s.Release()
	}
}

type countSink struct{ n int64 }

func (s *countSink) Write(p []byte) (int, error) { s.n += int64(len(p)); return len(p), nil }
func (s *countSink) ID() string                  { return "count" }
func (s *countSink) Cancel() error               { return nil }
func (s *countSink) Close() error                { return nil }

// BenchmarkPersist1M streams a snapshot of 1M messages to a counting sink.
func BenchmarkPersist1M(b *testing.B) {
	f, _ := bigState(b)
	b.ResetTimer()
	var size int64
	for range b.N {
		s, _ := f.Snapshot()
		var sink countSink
		if err := s.Persist(&sink); err != nil {
			b.Fatal(err)
		}
		size = sink.n
	}
	b.ReportMetric(float64(size), "snapshot-bytes")
	b.SetBytes(size)
}

// BenchmarkRestore1M restores that snapshot into a fresh FSM.
func BenchmarkRestore1M(b *testing.B) {
	_, data := bigState(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		g := New()
		if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			b.Fatal(err)
		}
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// benchHeap reports the heap the FSM holds per queued 256-byte message,
// its store apart: the FSM's heap with the state minus the heap once the
// FSM is garbage and the store (which on a node is pebble, off the Go
// heap for its memtables and cache) is still held. Bodies and attributes
// are in the store, so this is the index. With dedup the 26-byte dedup
// ID (32 with its size class) counts too.
func benchHeap(b *testing.B, dedup bool) {
	for range b.N {
		store := NewMemStore()
		f := NewWithStore(store)
		fill(f, million, dedup)
		with := heapAlloc()
		runtime.KeepAlive(f) // and garbage from here on
		without := heapAlloc()
		b.ReportMetric(float64(int64(with)-int64(without))/million, "B/msg")
		runtime.KeepAlive(store)
	}
}

func BenchmarkHeapPerMessage(b *testing.B)          { benchHeap(b, false) }
func BenchmarkHeapPerMessageWithDedup(b *testing.B) { benchHeap(b, true) }

// benchHeapGroups is benchHeap with every message in one of groups
// groups ("customer-0000017", 16 bytes), enqueued 1000 to a command as a
// producer's batch would be: the group's entry, and once per group and
// command the record's extra and the key. A group's messages of one
// command share them.
func benchHeapGroups(b *testing.B, groups int) {
	for range b.N {
		store := NewMemStore()
		f := NewWithStore(store)
		f.ApplyCommand(1, &fsmpb.Command{NowUnixNano: t0, Op: createQ("q", nil).Op})
		for i := range million / 1000 {
			msgs := benchMessages(1000, i, false)
			for j, m := range msgs {
				m.Group = fmt.Sprintf("customer-%07d", (i*1000+j)%groups)
			}
			res := f.ApplyCommand(uint64(i+2), &fsmpb.Command{NowUnixNano: t0 + int64(i), Op: enq("q", msgs...).Op})
			if err := ResultError(res); err != nil {
				b.Fatal(err)
			}
		}
		with := heapAlloc()
		runtime.KeepAlive(f)
		without := heapAlloc()
		b.ReportMetric(float64(int64(with)-int64(without))/million, "B/msg")
		runtime.KeepAlive(store)
	}
}

func BenchmarkHeapPerMessageOneGroup(b *testing.B)      { benchHeapGroups(b, 1) }
func BenchmarkHeapPerMessage1000Groups(b *testing.B)    { benchHeapGroups(b, 1000) }
func BenchmarkHeapPerMessageMillionGroups(b *testing.B) { benchHeapGroups(b, million) }
