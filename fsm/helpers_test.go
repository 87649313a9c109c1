package fsm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// t0 is the start of every test's clock.
const t0 = int64(1_700_000_000) * int64(time.Second)

// harness drives an FSM through Encode and Apply, as raft would.
type harness struct {
	t   testing.TB
	f   *FSM
	idx uint64
	now int64
	// rules: the Command.rules of the commands it applies (Rules unless a
	// test plays a leader of a mixed cluster).
	rules uint32
}

func newHarness(t testing.TB) *harness { return &harness{t: t, f: New(), now: t0, rules: Rules} }

// at sets the clock to t0 + d for the next commands.
func (h *harness) at(d time.Duration) *harness { h.now = t0 + int64(d); return h }

func (h *harness) apply(cmd *fsmpb.Command) *fsmpb.Result {
	h.t.Helper()
	if cmd.NowUnixNano == 0 {
		cmd.NowUnixNano = h.now
	}
	if cmd.Rules == 0 {
		cmd.Rules = h.rules
	}
	data, err := Encode(cmd)
	if err != nil {
		h.t.Fatalf("encode: %v", err)
	}
	h.idx++
	out := h.f.Apply(&raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: data})
	res, ok := out.(*fsmpb.Result)
	if !ok || res == nil {
		h.t.Fatalf("Apply returned %T %v, want *fsmpb.Result", out, out)
	}
	checkInvariants(h.t, h.f)
	// What the leader does before it answers.
	if err := h.f.FillBodies(res); err != nil {
		h.t.Fatalf("fill bodies: %v", err)
	}
	return res
}

// ok applies cmd and fails the test if it returned an error.
func (h *harness) ok(cmd *fsmpb.Command) *fsmpb.Result {
	h.t.Helper()
	res := h.apply(cmd)
	if err := ResultError(res); err != nil {
		h.t.Fatalf("%v: %v", cmd, err)
	}
	return res
}

// fails applies cmd, expects error code and a message containing want, and
// checks that the state did not change.
func (h *harness) fails(cmd *fsmpb.Command, code fsmpb.ErrorCode, want string) *fsmpb.Result {
	h.t.Helper()
	before := h.f.StateHash()
	res := h.apply(cmd)
	if res.GetError().GetCode() != code {
		h.t.Fatalf("%v: error %v, want %v", cmd, res.GetError(), code)
	}
	if !strings.Contains(res.GetError().GetMessage(), want) {
		h.t.Fatalf("error message %q does not mention %q", res.GetError().GetMessage(), want)
	}
	if after := h.f.StateHash(); after != before {
		h.t.Fatalf("failed command %v changed the state", cmd)
	}
	return res
}

func (h *harness) stats(queue string) *fsmpb.QueueStats {
	h.t.Helper()
	info, err := h.f.Queue(queue)
	if err != nil {
		h.t.Fatal(err)
	}
	return info.GetStats()
}

// Command builders.

func createQ(name string, s *fsmpb.QueueSettings) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: name, Settings: s}}}
}

func updateQ(name string, s *fsmpb.QueueSettings) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_UpdateQueue{UpdateQueue: &fsmpb.UpdateQueue{Name: name, Settings: s}}}
}

func enq(queue string, msgs ...*fsmpb.Message) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: queue, Messages: msgs}}}
}

func msg(body, dedup string) *fsmpb.Message {
	return &fsmpb.Message{Body: []byte(body), DedupId: dedup}
}

func delayed(body string, d time.Duration) *fsmpb.Message {
	return &fsmpb.Message{Body: []byte(body), DelayNs: int64(d)}
}

// recv is a receive as a leader of this release writes it once every
// voter knows dead-letter origins.
func recv(queue string, max uint32) *fsmpb.Receive {
	return &fsmpb.Receive{Queue: queue, Max: max, DeadLetterOrigin: true}
}

func recvCmd(r *fsmpb.Receive) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: r}}
}

func ackCmd(queue string, rs ...*fsmpb.Receipt) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Ack{Ack: &fsmpb.Ack{Queue: queue, Receipts: rs}}}
}

func nackCmd(queue string, delay time.Duration, rs ...*fsmpb.Receipt) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Nack{Nack: &fsmpb.Nack{Queue: queue, Receipts: rs, DelayNs: int64(delay)}}}
}

func extendCmd(queue string, vis time.Duration, rs ...*fsmpb.Receipt) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Extend{Extend: &fsmpb.Extend{Queue: queue, Receipts: rs, VisibilityNs: int64(vis)}}}
}

func txCmd(acks []*fsmpb.Ack, enqs []*fsmpb.Enqueue) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Transaction{Transaction: &fsmpb.Transaction{Acks: acks, Enqueues: enqs}}}
}

func tickCmd() *fsmpb.Command { return &fsmpb.Command{Op: &fsmpb.Command_Tick{Tick: &fsmpb.Tick{}}} }

func purgeCmd(queue string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: queue}}}
}

func receipt(id uint64, attempt uint32) *fsmpb.Receipt {
	return &fsmpb.Receipt{MessageId: id, Attempt: attempt}
}

func bodies(res *fsmpb.Result) []string {
	var out []string
	for _, d := range res.GetDeliveries() {
		out = append(out, string(d.GetBody()))
	}
	return out
}

func outcomes(res *fsmpb.Result) []fsmpb.AckOutcome { return res.GetOutcomes() }

func settingsOf(fn func(s *fsmpb.QueueSettings)) *fsmpb.QueueSettings {
	s := &fsmpb.QueueSettings{}
	fn(s)
	return s
}

// checkInvariants verifies every structural invariant of every queue:
// each live message in exactly one of ready/timed, the gauges match the
// trees, the counters add up, tombstones and dedup entries are consistent.
func checkInvariants(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	checkStore(t, f)
	f.queues.Scan(func(q *queue) bool {
		var live, leased, deadLetters, tombs, dead, waiting uint64
		var prev *message
		var grouped []groupEntry
		heads := make(map[string]uint64) // group -> its first live message
		q.msgs.Scan(func(m *message) bool {
			if prev != nil && m.id <= prev.id {
				t.Fatalf("queue %s: ids out of order", q.name)
			}
			if prev != nil && m.enqueuedAt < prev.enqueuedAt {
				t.Fatalf("queue %s: message %d enqueued before %d", q.name, m.id, prev.id)
			}
			prev = m
			if m.id >= q.nextID {
				t.Fatalf("queue %s: message %d >= next id %d", q.name, m.id, q.nextID)
			}
			if m.is(flagDeleted) {
				tombs++
				if _, ok := q.tombs.Get(m); !ok {
					t.Fatalf("queue %s: tombstone %d missing from tombs", q.name, m.id)
				}
				return true
			}
			if m.is(flagDead) {
				dead++
				if q.ready.has(m.id) || m.is(flagReady|flagLeased) {
					t.Fatalf("queue %s: dead message %d is deliverable", q.name, m.id)
				}
				if _, ok := q.timed.Get(m); ok {
					t.Fatalf("queue %s: dead message %d is in timed", q.name, m.id)
				}
				return true
			}
			live++
			inReady := q.ready.has(m.id)
			_, inTimed := q.timed.Get(m)
			if g := m.group(); g != "" {
				grouped = append(grouped, groupEntry{key: g, id: m.id})
				if m.is(flagWaiting) != (heads[g] != 0) {
					t.Fatalf("queue %s: message %d of group %q: waiting %v, earlier message %d", q.name, m.id, g, m.is(flagWaiting), heads[g])
				}
				if heads[g] == 0 {
					heads[g] = m.id
				}
			} else if m.is(flagWaiting) {
				t.Fatalf("queue %s: message %d waits without a group", q.name, m.id)
			}
			if m.is(flagWaiting) {
				waiting++
				if m.is(flagDeadLetter) {
					deadLetters++
				}
				if inReady || inTimed || m.is(flagReady|flagLeased) {
					t.Fatalf("queue %s: waiting message %d in ready=%v timed=%v flags=%b", q.name, m.id, inReady, inTimed, m.flags)
				}
				return true
			}
			if inReady == inTimed || inReady != m.is(flagReady) {
				t.Fatalf("queue %s: message %d in ready=%v timed=%v flags=%b", q.name, m.id, inReady, inTimed, m.flags)
			}
			if m.is(flagLeased) {
				leased++
			}
			if m.is(flagDeadLetter) {
				deadLetters++
			}
			return true
		})
		if live != q.live() || leased != q.leased || deadLetters != q.deadLetters || tombs != uint64(q.tombs.Len()) || dead != q.dead {
			t.Fatalf("queue %s: live %d/%d leased %d/%d dead letters %d/%d tombs %d/%d dead %d/%d", q.name,
				live, q.live(), leased, q.leased, deadLetters, q.deadLetters, tombs, q.tombs.Len(), dead, q.dead)
		}
		if waiting != q.waiting || uint64(len(heads)) != q.groupCount || q.heads != nil {
			t.Fatalf("queue %s: waiting %d/%d, groups %d/%d, heads pending %v", q.name, waiting, q.waiting, len(heads), q.groupCount, q.heads)
		}
		slices.SortFunc(grouped, func(a, b groupEntry) int {
			if byGroup(a, b) {
				return -1
			}
			return 1
		})
		var inTree []groupEntry
		q.groups.Scan(func(e groupEntry) bool { inTree = append(inTree, e); return true })
		if !slices.Equal(grouped, inTree) {
			t.Fatalf("queue %s: group entries %v, live grouped messages %v", q.name, inTree, grouped)
		}
		c := q.counters
		if c.enqueued != live+dead+c.acked+c.expired+c.deadLettered+c.purged+c.redriven {
			t.Fatalf("queue %s: enqueued %d != live %d + dead %d + acked %d + expired %d + dead-lettered %d + purged %d + redriven %d",
				q.name, c.enqueued, live, dead, c.acked, c.expired, c.deadLettered, c.purged, c.redriven)
		}
		if c.redelivered > c.delivered {
			t.Fatalf("queue %s: redelivered %d > delivered %d", q.name, c.redelivered, c.delivered)
		}
		q.dedup.Scan(func(e *message) bool {
			m, ok := q.msgs.Get(e)
			if !ok || m != e {
				t.Fatalf("queue %s: dedup %q -> %d is not the current record", q.name, e.dedupID, e.id)
			}
			return true
		})
		var spanIDs int
		var last uint64
		q.ready.spans.Scan(func(s span) bool {
			if s.lo > s.hi || (last != 0 && s.lo <= last+1) {
				t.Fatalf("queue %s: ready runs %v after %d overlap or touch", q.name, s, last)
			}
			last = s.hi
			spanIDs += int(s.hi - s.lo + 1)
			return true
		})
		if spanIDs != q.ready.len() {
			t.Fatalf("queue %s: ready runs hold %d ids, count says %d", q.name, spanIDs, q.ready.len())
		}
		if q.replay.Len() != q.replayAt.Len() {
			t.Fatalf("queue %s: replay %d entries, replayAt %d", q.name, q.replay.Len(), q.replayAt.Len())
		}
		return true
	})
}

// checkStore checks that the store holds exactly the bodies the state
// refers to (every live and dead record's and those auto-ack replay
// entries keep), each once, under the CRC its record holds, and that no
// queue carries a command's writes between commands.
func checkStore(t testing.TB, f *FSM) {
	t.Helper()
	refs := make(map[uint64]string)
	ref := func(q *queue, m *message, what string) {
		if m.body.id == 0 {
			if m.body != (bodyRef{}) {
				t.Fatalf("queue %s: %s %d: body without id %+v", q.name, what, m.id, m.body)
			}
			return
		}
		if m.body.id >= f.nextBody {
			t.Fatalf("queue %s: %s %d: body id %d >= next %d", q.name, what, m.id, m.body.id, f.nextBody)
		}
		where := fmt.Sprintf("queue %s %s %d", q.name, what, m.id)
		if other, dup := refs[m.body.id]; dup {
			t.Fatalf("body %d held by %s and %s", m.body.id, other, where)
		}
		refs[m.body.id] = where
		v, ok, err := f.store.Get(bodyKey(m.body.id))
		if err != nil || !ok {
			t.Fatalf("%s: body %d missing from the store (%v)", where, m.body.id, err)
		}
		if crc32c(v) != m.body.crc {
			t.Fatalf("%s: stored body CRC %08x, record says %08x", where, crc32c(v), m.body.crc)
		}
		body, _, err := decodeValue(v)
		if err != nil || uint32(len(body)) != m.body.size {
			t.Fatalf("%s: stored body of %d bytes (%v), record says %d", where, len(body), err, m.body.size)
		}
	}
	f.queues.Scan(func(q *queue) bool {
		if q.ops != nil {
			t.Fatalf("queue %s holds a command's store writes between commands", q.name)
		}
		q.msgs.Scan(func(m *message) bool {
			if m.is(flagDeleted) && m.body != (bodyRef{}) {
				t.Fatalf("queue %s: tombstone %d refers to a body", q.name, m.id)
			}
			ref(q, m, "message")
			return true
		})
		q.replayAt.Scan(func(e *replayEntry) bool {
			for _, m := range e.autoAcked {
				ref(q, m, "replay "+e.requestID+" message")
			}
			return true
		})
		return true
	})
	if ms, ok := f.store.(*MemStore); ok && ms.Len() != len(refs) {
		t.Fatalf("the store holds %d values, the state refers to %d", ms.Len(), len(refs))
	}
}

func protoU32(v uint32) *uint32 { return &v }
func protoStr(v string) *string { return &v }
