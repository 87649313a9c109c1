package fsm

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestInvalidCommandsNameFieldAndLimit checks that each bad input is an
// error naming the field and the limit, and changes nothing.
func TestInvalidCommandsNameFieldAndLimit(t *testing.T) {
	const inv = fsmpb.ErrorCode_INVALID_ARGUMENT
	set := func(fn func(s *fsmpb.QueueSettings)) *fsmpb.Command { return createQ("new", settingsOf(fn)) }
	cases := []struct {
		name string
		cmd  *fsmpb.Command
		code fsmpb.ErrorCode
		want string
	}{
		{"no operation", &fsmpb.Command{}, fsmpb.ErrorCode_MALFORMED, "no operation"},
		{"negative now", &fsmpb.Command{NowUnixNano: -1, Op: tickCmd().Op}, inv, "now_unix_nano is -1, limit is 0 to"},
		{"empty queue name", createQ("", nil), inv, "create_queue.name: queue name is empty, want 1 to 128 characters"},
		{"long queue name", createQ(strings.Repeat("x", 129), nil), inv, "limit is 1 to 128"},
		{"bad queue name byte", createQ("a/b", nil), inv, "has byte '/' at 1, allowed are [A-Za-z0-9._-]"},
		{"existing queue", createQ("q", nil), fsmpb.ErrorCode_QUEUE_EXISTS, "already exists"},
		{"visibility too long", set(func(s *fsmpb.QueueSettings) { s.VisibilityTimeoutNs = proto.Int64(int64(13 * time.Hour)) }), inv, "settings.visibility_timeout_ns is 46800000000000 ns, limit is 1ms to 12h0m0s"},
		{"visibility negative", set(func(s *fsmpb.QueueSettings) { s.VisibilityTimeoutNs = proto.Int64(-1) }), inv, "settings.visibility_timeout_ns is -1 ns"},
		{"dedup window too short", set(func(s *fsmpb.QueueSettings) { s.DedupWindowNs = proto.Int64(int64(time.Millisecond)) }), inv, "settings.dedup_window_ns is 1000000 ns, limit is 1s to 168h0m0s"},
		{"retention negative", set(func(s *fsmpb.QueueSettings) { s.RetentionNs = proto.Int64(-5) }), inv, "settings.retention_ns is -5 ns, limit is 1s to 8760h0m0s (or 0 to keep messages forever)"},
		{"max deliveries", set(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1001) }), inv, "settings.max_deliveries is 1001, limit is 0 (unlimited) to 1000"},
		{"dlq is self", set(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String("new") }), inv, "settings.dead_letter_queue must not be the queue itself"},
		{"dlq bad name", set(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String("a b") }), inv, "settings.dead_letter_queue: queue name \"a b\" has byte ' '"},
		{"update unknown queue", updateQ("nope", nil), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "update_queue.name: queue \"nope\" does not exist"},
		{"enqueue unknown queue", enq("nope", msg("a", "")), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "enqueue.queue: queue \"nope\" does not exist"},
		{"enqueue no messages", enq("q"), inv, "enqueue.messages has 0 entries, limit is 1 to 1000"},
		{"enqueue negative delay", enq("q", delayed("a", -time.Second)), inv, "enqueue.messages[0].delay_ns is -1000000000, limit is 0 to 12h0m0s"},
		{"enqueue long delay", enq("q", msg("ok", ""), delayed("a", 13*time.Hour)), inv, "enqueue.messages[1].delay_ns"},
		{"enqueue huge body", enq("q", &fsmpb.Message{Body: make([]byte, MaxBodyBytes+1)}), inv, "enqueue.messages[0].body is 1048577 bytes, limit is 1048576"},
		{"enqueue long dedup id", enq("q", msg("a", strings.Repeat("d", 129))), inv, "enqueue.messages[0].dedup_id is 129 bytes, limit is 128"},
		{"enqueue empty attribute key", enq("q", &fsmpb.Message{Attributes: []*fsmpb.Attribute{{Value: "v"}}}), inv, "enqueue.messages[0].attributes[0].key is 0 bytes, limit is 1 to 256"},
		{"receive max 0", recvCmd(recv("q", 0)), inv, "receive.max is 0, limit is 1 to 1000"},
		{"receive max 1001", recvCmd(recv("q", 1001)), inv, "receive.max is 1001"},
		{"receive visibility", recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, VisibilityNs: -1}), inv, "receive.visibility_ns is -1 ns, limit is 1ms to 12h0m0s (or 0 for the queue's default)"},
		{"receive long request id", recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, RequestId: strings.Repeat("r", 129)}), inv, "receive.request_id is 129 bytes, limit is 128"},
		{"receive unknown queue", recvCmd(recv("nope", 1)), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "receive.queue"},
		{"ack no receipts", ackCmd("q"), inv, "ack.receipts has 0 entries, limit is 1 to 1000"},
		{"ack attempt 0", ackCmd("q", receipt(1, 0)), inv, "ack.receipts[0].attempt is 0, attempts start at 1"},
		{"nack negative delay", nackCmd("q", -1, receipt(1, 1)), inv, "nack.delay_ns is -1, limit is 0 to 12h0m0s"},
		{"extend too long", extendCmd("q", 13*time.Hour, receipt(1, 1)), inv, "extend.visibility_ns is 46800000000000 ns"},
		{"empty transaction", txCmd(nil, nil), inv, "transaction has 0 acks plus enqueues, limit is 1 to 100"},
		{"transaction bad enqueue", txCmd(nil, []*fsmpb.Enqueue{{Queue: "q", Messages: []*fsmpb.Message{delayed("a", -1)}}}), inv, "transaction.enqueues[0].messages[0].delay_ns"},
		{"purge unknown queue", purgeCmd("nope"), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "purge.queue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(createQ("q", nil))
			h.ok(enq("q", msg("a", "d")))
			h.fails(tc.cmd, tc.code, tc.want)
		})
	}
}

func TestUpdateQueueKeepsUnsetFields(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDepth = proto.Uint64(7) })))
	r := h.ok(updateQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.VisibilityTimeoutNs = proto.Int64(int64(time.Minute)) })))
	got := r.GetQueue().GetSettings()
	if got.GetMaxDepth() != 7 || got.GetVisibilityTimeoutNs() != int64(time.Minute) || got.GetDedupWindowNs() != int64(DefaultDedupWindow) || got.RetentionNs == nil || got.DeadLetterQueue == nil || got.MaxDeliveries == nil {
		t.Fatalf("settings after update: %v", got)
	}
}

func TestCreateIfNotExistsAndEnqueueCreate(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDepth = proto.Uint64(3) })))
	r := h.ok(&fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: "q", IfNotExists: true}}})
	if r.GetQueue().GetSettings().GetMaxDepth() != 3 {
		t.Fatalf("if_not_exists changed the existing queue: %v", r.GetQueue())
	}
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: "auto", CreateQueue: true, Messages: []*fsmpb.Message{msg("a", "")}}}})
	if st := h.stats("auto"); st.Ready != 1 {
		t.Fatalf("auto-created queue stats %v", st)
	}
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_DeleteQueue{DeleteQueue: &fsmpb.DeleteQueue{Name: "auto"}}})
	if _, err := h.f.Queue("auto"); err == nil {
		t.Fatal("deleted queue still there")
	}
	// A recreated queue starts again at id 1.
	r = h.ok(&fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: "auto", CreateQueue: true, Messages: []*fsmpb.Message{msg("a", "")}}}})
	if r.Enqueued[0].MessageId != 1 {
		t.Fatalf("recreated queue gave id %d, want 1", r.Enqueued[0].MessageId)
	}
	if names := h.f.Queues(); len(names) != 2 || names[0].Name != "auto" || names[1].Name != "q" {
		t.Fatalf("Queues() = %v, want [auto q]", names)
	}
}
