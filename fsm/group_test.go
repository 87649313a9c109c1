package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

func gmsg(body, group string) *fsmpb.Message {
	return &fsmpb.Message{Body: []byte(body), Group: group}
}

// recvBodies receives up to max messages of q and returns their bodies
// and deliveries.
func (h *harness) recvBodies(q string, max uint32) ([]string, []*fsmpb.Delivery) {
	h.t.Helper()
	r := h.ok(recvCmd(recv(q, max)))
	return bodies(r), r.GetDeliveries()
}

// TestGroupContract walks the delivery rule of message groups: within a
// group a message is delivered only when no earlier message of the group
// is leased, delayed or waiting for redelivery; groups are independent;
// messages without a group are not held by any.
func TestGroupContract(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"one message per group in flight, groups and ungrouped in parallel", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a"), gmsg("b1", "b"), msg("u1", ""), gmsg("a3", "a"), gmsg("b2", "b"), msg("u2", "")))
			got, ds := h.recvBodies("q", 10)
			if want := []string{"a1", "b1", "u1", "u2"}; !slices.Equal(got, want) {
				t.Fatalf("first receive %v, want %v", got, want)
			}
			if ds[0].GetGroup() != "a" || ds[2].GetGroup() != "" {
				t.Fatalf("delivery groups %q %q, want a and none", ds[0].GetGroup(), ds[2].GetGroup())
			}
			if st := h.stats("q"); st.Groups != 2 || st.Waiting != 3 || st.Ready != 0 || st.Leased != 4 {
				t.Fatalf("stats %v: want 2 groups, 3 waiting, 4 leased", st)
			}
			if got, _ := h.recvBodies("q", 10); len(got) != 0 {
				t.Fatalf("receive while every group's head is leased: %v", got)
			}
			h.ok(ackCmd("q", ds[0].GetReceipt(), ds[2].GetReceipt()))
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("after acking a1 and u1: %v, want [a2]", got)
			}
		}},
		{"a nack makes the same message the group's next", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			_, ds := h.recvBodies("q", 10)
			h.ok(nackCmd("q", 0, ds[0].GetReceipt()))
			got, ds := h.recvBodies("q", 10)
			if !slices.Equal(got, []string{"a1"}) || ds[0].GetReceipt().GetAttempt() != 2 {
				t.Fatalf("after a nack: %v (attempt %d), want a1 again", got, ds[0].GetReceipt().GetAttempt())
			}
		}},
		{"a nack with a delay holds the group until it ends", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			_, ds := h.recvBodies("q", 10)
			h.ok(nackCmd("q", 10*time.Second, ds[0].GetReceipt()))
			if got, _ := h.at(5*time.Second).recvBodies("q", 10); len(got) != 0 {
				t.Fatalf("while a1 waits for redelivery: %v", got)
			}
			if got, _ := h.at(10*time.Second).recvBodies("q", 10); !slices.Equal(got, []string{"a1"}) {
				t.Fatalf("after the nack delay: %v, want [a1]", got)
			}
		}},
		{"a lease expiry makes the same message the group's next", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			h.recvBodies("q", 10)
			if got, _ := h.at(DefaultVisibility-time.Nanosecond).recvBodies("q", 10); len(got) != 0 {
				t.Fatalf("while a1's lease runs: %v", got)
			}
			if got, _ := h.at(DefaultVisibility).recvBodies("q", 10); !slices.Equal(got, []string{"a1"}) {
				t.Fatalf("after the lease ended: %v, want [a1]", got)
			}
		}},
		{"a delayed message holds the later ones of its group", func(t *testing.T, h *harness) {
			first := gmsg("a1", "a")
			first.DelayNs = int64(10 * time.Second)
			h.ok(enq("q", first, gmsg("a2", "a"), gmsg("b1", "b")))
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"b1"}) {
				t.Fatalf("while a1 is delayed: %v, want [b1]", got)
			}
			if st := h.stats("q"); st.Delayed != 1 || st.Waiting != 1 {
				t.Fatalf("stats %v: want 1 delayed, 1 waiting", st)
			}
			if got, _ := h.at(10*time.Second).recvBodies("q", 10); !slices.Equal(got, []string{"a1"}) {
				t.Fatalf("after a1's delay: %v, want [a1]", got)
			}
		}},
		{"a later message's own delay counts once it is the group's next", func(t *testing.T, h *harness) {
			later := gmsg("a2", "a")
			later.DelayNs = int64(time.Minute)
			h.ok(enq("q", gmsg("a1", "a"), later))
			_, ds := h.recvBodies("q", 10)
			h.ok(ackCmd("q", ds[0].GetReceipt()))
			if got, _ := h.recvBodies("q", 10); len(got) != 0 {
				t.Fatalf("a2 before its delay: %v", got)
			}
			if got, _ := h.at(time.Minute).recvBodies("q", 10); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("after a2's delay: %v, want [a2]", got)
			}
		}},
		{"an ack in a receive frees the group for that receive", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			_, ds := h.recvBodies("q", 10)
			r := recv("q", 10)
			r.Ack = []*fsmpb.Receipt{ds[0].GetReceipt()}
			if got := bodies(h.ok(recvCmd(r))); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("receive with the ack of a1: %v, want [a2]", got)
			}
		}},
		{"a transaction's ack frees the group", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			h.ok(createQ("out", nil))
			_, ds := h.recvBodies("q", 10)
			h.ok(txCmd([]*fsmpb.Ack{{Queue: "q", Receipts: []*fsmpb.Receipt{ds[0].GetReceipt()}}},
				[]*fsmpb.Enqueue{{Queue: "out", Messages: []*fsmpb.Message{gmsg("o1", "a"), gmsg("o2", "a")}}}))
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("after the transaction: %v, want [a2]", got)
			}
			if got, _ := h.recvBodies("out", 10); !slices.Equal(got, []string{"o1"}) {
				t.Fatalf("transaction's output: %v, want [o1]", got)
			}
		}},
		{"a dead letter frees its group and keeps its group in the DLQ", func(t *testing.T, h *harness) {
			h.ok(updateQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			_, ds := h.recvBodies("q", 10)
			h.ok(nackCmd("q", 0, ds[0].GetReceipt()))
			// a1 reached max deliveries: this receive dead-letters it and
			// delivers a2.
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("after a1 was dead-lettered: %v, want [a2]", got)
			}
			got, ds := h.recvBodies("dlq", 10)
			if !slices.Equal(got, []string{"a1"}) || ds[0].GetGroup() != "a" {
				t.Fatalf("DLQ: %v group %q, want [a1] of group a", got, ds[0].GetGroup())
			}
		}},
		{"a reject frees its group", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			_, ds := h.recvBodies("q", 10)
			h.ok(rejectCmd("q", "bad", ds[0].GetReceipt()))
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a2"}) {
				t.Fatalf("after rejecting a1: %v, want [a2]", got)
			}
			if st := h.stats("q"); st.Groups != 1 || st.DeadLetteredTotal != 1 {
				t.Fatalf("stats %v: want a1 dead-lettered and one group (a2's)", st)
			}
		}},
		{"redrive puts a group's dead letters back in order, behind the group", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a"), gmsg("a3", "a"), gmsg("a4", "a")))
			for range 2 {
				_, ds := h.recvBodies("q", 10)
				h.ok(rejectCmd("q", "bad", ds[0].GetReceipt()))
			}
			// The DLQ holds a1 (ready) and a2 (waiting behind it): one
			// redrive moves both, in order, behind a3 and a4.
			if st := h.stats("dlq"); st.Ready != 1 || st.Waiting != 1 {
				t.Fatalf("DLQ stats %v: want 1 ready, 1 waiting", st)
			}
			if n := h.ok(redriveCmd("dlq", "", 10)).GetCount(); n != 2 {
				t.Fatalf("redrive moved %d, want 2", n)
			}
			var order []string
			for range 4 {
				got, ds := h.recvBodies("q", 10)
				if len(got) != 1 {
					t.Fatalf("receive %v, want one message of group a", got)
				}
				order = append(order, got[0])
				h.ok(ackCmd("q", ds[0].GetReceipt()))
			}
			if want := []string{"a3", "a4", "a1", "a2"}; !slices.Equal(order, want) {
				t.Fatalf("group a delivered %v, want %v", order, want)
			}
		}},
		{"redrive leaves a dead letter behind a head it does not move", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a"), gmsg("b1", "b")))
			for range 2 {
				_, ds := h.recvBodies("q", 10)
				for _, d := range ds {
					if d.GetGroup() == "a" {
						h.ok(rejectCmd("q", "bad", d.GetReceipt()))
					}
				}
			}
			// Lease the DLQ's head of a: a2 waits behind it and must stay.
			if got, _ := h.recvBodies("dlq", 10); !slices.Equal(got, []string{"a1"}) {
				t.Fatalf("DLQ receive %v, want [a1]", got)
			}
			if n := h.ok(redriveCmd("dlq", "", 10)).GetCount(); n != 0 {
				t.Fatalf("redrive moved %d while the group's head is leased, want 0", n)
			}
		}},
		{"retention expires a group's messages and frees it", func(t *testing.T, h *harness) {
			h.ok(updateQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.RetentionNs = proto.Int64(int64(time.Minute)) })))
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			h.at(30 * time.Second).ok(enq("q", gmsg("a3", "a")))
			h.at(time.Minute).ok(tickCmd())
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a3"}) {
				t.Fatalf("after a1 and a2 expired: %v, want [a3]", got)
			}
		}},
		{"purge empties every group", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a"), gmsg("b1", "b")))
			h.recvBodies("q", 1)
			if n := h.ok(purgeCmd("q")).GetCount(); n != 3 {
				t.Fatalf("purge removed %d, want 3", n)
			}
			if st := h.stats("q"); st.Groups != 0 || st.Waiting != 0 {
				t.Fatalf("stats %v after purge: want no groups", st)
			}
			h.ok(enq("q", gmsg("a4", "a")))
			if got, _ := h.recvBodies("q", 10); !slices.Equal(got, []string{"a4"}) {
				t.Fatalf("after purge: %v, want [a4]", got)
			}
		}},
		{"peek and lookup show the group and who waits", func(t *testing.T, h *harness) {
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			h.recvBodies("q", 10)
			ps, _, err := h.f.Peek("q", PeekOptions{Max: 10})
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != 2 || ps[0].GetState() != fsmpb.PeekState_PEEK_LEASED || ps[1].GetState() != fsmpb.PeekState_PEEK_WAITING || ps[1].GetGroup() != "a" || ps[0].GetGroup() != "a" {
				t.Fatalf("peek %v: want a1 leased and a2 waiting, both of group a", ps)
			}
			ps, _, err = h.f.Peek("q", PeekOptions{Max: 10, State: fsmpb.PeekState_PEEK_WAITING})
			if err != nil || len(ps) != 1 || ps[0].GetId() != 2 {
				t.Fatalf("peek of waiting messages: %v %v, want message 2", ps, err)
			}
			fate, err := h.f.Lookup("q", 2, "")
			if err != nil || fate.GetState() != fsmpb.MessageState_MESSAGE_WAITING || fate.GetGroup() != "a" {
				t.Fatalf("lookup of message 2: %v %v, want waiting in group a", fate, err)
			}
		}},
		{"an emptied group leaves nothing behind", func(t *testing.T, h *harness) {
			for i := range 100 {
				h.ok(enq("q", gmsg("x", fmt.Sprintf("g%d", i))))
			}
			if st := h.stats("q"); st.Groups != 100 {
				t.Fatalf("groups %d, want 100", st.Groups)
			}
			_, ds := h.recvBodies("q", 1000)
			for _, d := range ds {
				h.ok(ackCmd("q", d.GetReceipt()))
			}
			q := h.f.get("q")
			if st := h.stats("q"); st.Groups != 0 || q.groups.Len() != 0 {
				t.Fatalf("after the drain: %d groups, %d entries", st.Groups, q.groups.Len())
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(createWithDLQ("q", "dlq", true))
			c.run(t, h)
		})
	}
}

// A receive takes the lowest ready ids, and a group has one ready message
// at most: the oldest head first. A group with a long backlog gets one
// message per receive and the other groups the rest, so it cannot starve
// them.
func TestGroupFairness(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	var hot []*fsmpb.Message
	for i := range 1000 {
		hot = append(hot, gmsg(fmt.Sprintf("hot%d", i), "hot"))
	}
	h.ok(enq("q", hot...))
	for i := range 20 {
		h.ok(enq("q", gmsg(fmt.Sprintf("c%d", i), fmt.Sprintf("cold%d", i))))
	}
	var cold, hotDone int
	for round := 0; cold < 20; round++ {
		if round >= 5 {
			t.Fatalf("after %d receives of 5, %d of 20 cold groups were served", round, cold)
		}
		got, ds := h.recvBodies("q", 5)
		if len(got) != 5 {
			t.Fatalf("receive %d got %v, want 5 messages", round, got)
		}
		var hots int
		for _, b := range got {
			if strings.HasPrefix(b, "hot") {
				hots++
			} else {
				cold++
			}
		}
		if hots != 1 || got[0] != fmt.Sprintf("hot%d", hotDone) {
			t.Fatalf("receive %d got %v: want the hot group's next (hot%d) once", round, got, hotDone)
		}
		hotDone++
		for _, d := range ds {
			h.ok(ackCmd("q", d.GetReceipt()))
		}
	}
}

// A group key is bounded and printable; a bad one fails the batch before
// anything changes.
func TestGroupValidation(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.fails(enq("q", msg("ok", ""), gmsg("x", strings.Repeat("g", 129))), fsmpb.ErrorCode_INVALID_ARGUMENT, "enqueue.messages[1].group is 129 bytes, limit is 128")
	h.fails(enq("q", gmsg("x", "a\nb")), fsmpb.ErrorCode_INVALID_ARGUMENT, "enqueue.messages[0].group has control byte")
	h.ok(enq("q", gmsg("x", strings.Repeat("g", 128))))
}

// A snapshot keeps each message's group and who waits; the restored FSM
// hashes as the one that wrote it and delivers in the same order.
func TestGroupSnapshot(t *testing.T) {
	h := newHarness(t)
	h.ok(createWithDLQ("q", "dlq", true))
	h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a"), gmsg("b1", "b"), msg("u", ""), gmsg("a3", "a")))
	_, ds := h.recvBodies("q", 2)
	h.ok(rejectCmd("q", "bad", ds[1].GetReceipt())) // b1 goes to the DLQ with its group
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("restored state hashes differently")
	}
	checkInvariants(t, g)
	h2 := &harness{t: t, f: g, now: h.now, rules: Rules, idx: h.idx}
	for _, hh := range []*harness{h, h2} {
		hh.ok(ackCmd("q", ds[0].GetReceipt()))
		if got, _ := hh.recvBodies("q", 10); !slices.Equal(got, []string{"a2", "u"}) {
			t.Fatalf("after the ack of a1: %v, want [a2 u]", got)
		}
		if got, d := hh.recvBodies("dlq", 10); !slices.Equal(got, []string{"b1"}) || d[0].GetGroup() != "b" {
			t.Fatalf("DLQ: %v, want b1 of group b", got)
		}
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("the two FSMs drifted apart")
	}
}

// A snapshot whose groups break the rule is refused: a waiting message
// first in its group, or a second deliverable message of one group.
func TestGroupSnapshotRefusesABrokenGroup(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags [2]uint32
		want  string
	}{
		{"the head waits", [2]uint32{flagWaiting, flagWaiting}, "message 1: first of group \"a\" but waiting"},
		{"two deliverable", [2]uint32{flagReady, flagReady}, "message 2: group \"a\" has a deliverable message before it, but it is not waiting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(createQ("q", nil))
			h.ok(enq("q", gmsg("a1", "a"), gmsg("a2", "a")))
			data := rewriteSnapshot(t, persistBytes(t, h.f), func(r *fsmpb.SnapshotRecord) {
				if m := r.GetMessage(); m != nil {
					m.Flags = tc.flags[m.GetId()-1]
				}
			})
			err := New().Restore(io.NopCloser(bytes.NewReader(data)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// rewriteSnapshot returns a version-1 snapshot with fn applied to each of
// its records, and its trailer made right again.
func rewriteSnapshot(t *testing.T, data []byte, fn func(*fsmpb.SnapshotRecord)) []byte {
	t.Helper()
	out := append([]byte{}, data[:12]...) // magic and version
	rest := data[12:]
	var count uint64
	for {
		n, k := protowire.ConsumeVarint(rest)
		if k < 0 {
			t.Fatal("bad record length")
		}
		rest = rest[k:]
		if n == 0 {
			break
		}
		var r fsmpb.SnapshotRecord
		if err := proto.Unmarshal(rest[:n], &r); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
		fn(&r)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		out = protowire.AppendVarint(out, uint64(len(b)))
		out = append(out, b...)
		count++
	}
	out = protowire.AppendVarint(out, 0)
	out = binary.BigEndian.AppendUint64(out, count)
	return binary.BigEndian.AppendUint32(out, crc32c(out))
}
