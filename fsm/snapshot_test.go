package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// memSink is a raft.SnapshotSink over a buffer.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func persistBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v, want closed", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func persist(t testing.TB, f *FSM) io.ReadCloser {
	return io.NopCloser(bytes.NewReader(persistBytes(t, f)))
}

// busyState builds a state with every kind of entry: several queues,
// ready, delayed, leased, dead letters, tombstones, dedup and replay.
func busyState(t testing.TB) *harness {
	h := newHarness(t)
	h.ok(createQ("dlq", nil))
	h.ok(createQ("w", settingsOf(func(s *fsmpb.QueueSettings) {
		s.MaxDeliveries = protoU32(1)
		s.DeadLetterQueue = protoStr("dlq")
	})))
	h.ok(enq("w", msg("a", "da"), msg("b", "db"), delayed("c", time.Hour),
		&fsmpb.Message{Body: []byte("d"), Attributes: []*fsmpb.Attribute{{Key: "k", Value: "v"}}}))
	r := h.ok(recvCmd(&fsmpb.Receive{Queue: "w", Max: 2, RequestId: "req"}))
	h.ok(ackCmd("w", r.Deliveries[0].Receipt))
	h.ok(nackCmd("w", 0, r.Deliveries[1].Receipt))
	h.at(time.Second)
	h.ok(recvCmd(recv("w", 5))) // b dead-lettered, d leased
	return h
}

func TestSnapshotRestoreSameHash(t *testing.T) {
	h := busyState(t)
	want := h.f.StateHash()
	data := persistBytes(t, h.f)

	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, g)
	if got := g.StateHash(); got != want {
		t.Fatalf("restored hash %s, want %s", got, want)
	}
	if g.AppliedIndex() != h.f.AppliedIndex() || !g.Now().Equal(h.f.Now()) {
		t.Fatalf("restored index %d now %v, want %d %v", g.AppliedIndex(), g.Now(), h.f.AppliedIndex(), h.f.Now())
	}
	// Both continue identically.
	h2 := &harness{t: t, f: g, idx: h.idx, now: h.now, rules: h.rules}
	for _, x := range []*harness{h, h2} {
		x.at(2 * time.Hour)
		x.ok(recvCmd(recv("w", 10)))
		x.ok(recvCmd(recv("dlq", 10)))
		x.ok(tickCmd())
	}
	if h.f.StateHash() != g.StateHash() {
		t.Fatal("restored FSM diverged after more commands")
	}
}

func TestSnapshotIsFrozen(t *testing.T) {
	h := busyState(t)
	snap, _ := h.f.Snapshot()
	want := h.f.StateHash()
	h.ok(enq("w", msg("later", "")))
	h.ok(purgeCmd("dlq"))
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != want {
		t.Fatal("snapshot saw commands applied after Snapshot()")
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	data := persistBytes(t, busyState(t).f)
	flip := func(i int) []byte {
		b := append([]byte{}, data...)
		b[i] ^= 0x40
		return b
	}
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":            {nil, "truncated in header"},
		"bad magic":        {flip(0), "bad magic"},
		"unknown version":  {append(append([]byte(snapshotMagic), 0, 0, 0, 9), data[12:]...), "version 9, this release reads versions 1 and 2"},
		"truncated":        {data[:len(data)/2], "truncated"},
		"no checksum":      {data[:len(data)-4], "truncated in checksum"},
		"flipped body bit": {flip(len(data) / 2), ""},
		"flipped checksum": {flip(len(data) - 1), "checksum"},
		"trailing data":    {append(append([]byte{}, data...), 0), "unexpected data after the checksum"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := busyState(t)
			before := h.f.StateHash()
			err := h.f.Restore(io.NopCloser(bytes.NewReader(tc.data)))
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("Restore error %v, want ErrSnapshot", err)
			}
			if tc.want != "" && !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if h.f.StateHash() != before {
				t.Fatal("rejected snapshot changed the state")
			}
		})
	}
}

// A snapshot whose counters do not add up to its records (here: one
// message too many enqueued) is refused, naming the queue and the sums,
// and the state stays as it was.
func TestRestoreRefusesCountersThatDoNotAddUp(t *testing.T) {
	h := busyState(t)
	var name string
	h.f.queues.Scan(func(q *queue) bool {
		if q.msgs.Len() > 0 {
			name = q.name
			q.counters.enqueued++
			return false
		}
		return true
	})
	if name == "" {
		t.Fatal("busy state has no queue with messages")
	}
	data := persistBytes(t, h.f)
	g := busyState(t)
	before := g.f.StateHash()
	err := g.f.Restore(io.NopCloser(bytes.NewReader(data)))
	if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), fmt.Sprintf("queue %q: enqueued total", name)) {
		t.Fatalf("Restore of counters that do not add up: %v, want ErrSnapshot naming queue %q and its enqueued total", err, name)
	}
	if g.f.StateHash() != before {
		t.Fatal("rejected snapshot changed the state")
	}
}

func TestSnapshotOfEmptyFSM(t *testing.T) {
	f := New()
	g := New()
	if err := g.Restore(persist(t, f)); err != nil {
		t.Fatal(err)
	}
	if f.StateHash() != g.StateHash() {
		t.Fatal("empty FSM restores to a different hash")
	}
}

var _ raft.FSMSnapshot = (*fsmSnapshot)(nil)

// restoreTestdata is a harness on the state of the snapshot file name in
// testdata, written by an earlier release.
func restoreTestdata(t *testing.T, name string) *harness {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, h.f)
	return h
}

// TestRestoreReplayEntryOfEarlierRelease restores a snapshot written by the
// release that kept the delivered records in replay entries: a queue with
// messages a, b and c delivered under request ID "req", then b acked. The
// entry still answers, from the live records: a and c, not the acked b.
// Persisted again, it holds receipts instead of records.
func TestRestoreReplayEntryOfEarlierRelease(t *testing.T) {
	h := restoreTestdata(t, "replay-deliveries.snap")
	h.at(2 * time.Second)
	req := recvCmd(&fsmpb.Receive{Queue: "q", Max: 3, RequestId: "req"})
	r := h.ok(req)
	if !r.Replayed || !slices.Equal(bodies(r), []string{"a", "c"}) || r.Deliveries[0].Receipt.MessageId != 1 || r.Deliveries[1].Receipt.MessageId != 3 {
		t.Fatalf("replay after restore = %v; want a and c, replayed", r)
	}
	if a := r.Deliveries[0]; a.DedupId != "da" || len(a.Attributes) != 1 || a.LeaseUntilUnixNano != t0+int64(DefaultVisibility) || a.Receipt.Attempt != 1 {
		t.Fatalf("replayed a = %v", a)
	}

	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("the restored replay entry did not survive another round trip")
	}
	h.ok(ackCmd("q", r.Deliveries[1].Receipt))
	if r := h.ok(req); !r.Replayed || !slices.Equal(bodies(r), []string{"a"}) {
		t.Fatalf("replay after c was acked = %v; want a alone", r)
	}
}

// TestAutoAckReplaySurvivesRestore checks that the replay entry of an
// auto-ack receive, which keeps its deleted records, still returns them
// after a snapshot round trip.
func TestAutoAckReplaySurvivesRestore(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", "da"), msg("b", "")))
	req := recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true, RequestId: "r"})
	first := h.ok(req)
	g := &harness{t: t, f: New(), idx: h.idx, now: h.now, rules: h.rules}
	if err := g.f.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if r := g.ok(req); !r.Replayed || !proto.Equal(&fsmpb.Result{Deliveries: first.Deliveries}, &fsmpb.Result{Deliveries: r.Deliveries}) {
		t.Fatalf("replay after restore = %v; want %v", r, first.Deliveries)
	}
}
