package limits

import (
	"strings"
	"testing"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Each rule accepts its limit and refuses one past it, naming the field.
func TestRulesAcceptTheLimitAndRefuseOnePast(t *testing.T) {
	for _, tc := range []struct {
		name    string
		problem string
		want    string // "" = valid
	}{
		{"128-byte queue name", QueueNameProblem(strings.Repeat("q", 128)), ""},
		{"129-byte queue name", QueueNameProblem(strings.Repeat("q", 129)), "has length 129, limit is 1 to 128"},
		{"empty queue name", QueueNameProblem(""), "queue name is empty"},
		{"queue name with a space", QueueNameProblem("a b"), `has byte ' ' at 1`},
		{"12 h delay", MessageProblem(&fsmpb.Message{DelayNs: int64(MaxDelay)}), ""},
		{"12 h + 1 ns delay", MessageProblem(&fsmpb.Message{DelayNs: int64(MaxDelay) + 1}), "delay_ns is 43200000000001, limit is 0 to 12h0m0s"},
		{"negative delay", MessageProblem(&fsmpb.Message{DelayNs: -1}), "delay_ns is -1"},
		{"1 MiB body", MessageProblem(&fsmpb.Message{Body: make([]byte, MaxBodyBytes)}), ""},
		{"1 MiB + 1 body", MessageProblem(&fsmpb.Message{Body: make([]byte, MaxBodyBytes+1)}), "body is 1048577 bytes, limit is 1048576"},
		{"129-byte dedup ID", MessageProblem(&fsmpb.Message{DedupId: strings.Repeat("d", 129)}), "dedup_id is 129 bytes, limit is 128"},
		{"33 attributes", MessageProblem(&fsmpb.Message{Attributes: make([]*fsmpb.Attribute, 33)}), "attributes has 33 entries, limit is 32"},
		{"256-byte key", MessageProblem(&fsmpb.Message{Attributes: []*fsmpb.Attribute{{Key: strings.Repeat("k", 256)}}}), ""},
		{"empty key", MessageProblem(&fsmpb.Message{Attributes: []*fsmpb.Attribute{{Key: "a"}, {Value: "v"}}}), "attributes[1].key is 0 bytes, limit is 1 to 256"},
		{"4097-byte value", AttributeProblem("k", strings.Repeat("v", 4097)), "value is 4097 bytes, limit is 4096"},
	} {
		if tc.want == "" && tc.problem != "" || tc.want != "" && !strings.Contains(tc.problem, tc.want) {
			t.Errorf("%s: problem %q, want %q", tc.name, tc.problem, tc.want)
		}
	}
}
