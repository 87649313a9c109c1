package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

// send --group puts messages in a group; recv, peek, get and queue stats
// show groups and the messages waiting behind an earlier one of their
// group; bench --groups spreads its messages over N groups.
func TestCLIGroups(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "orders")
	mustRun(t, sendCmd(), addr, "", "orders", "a1", "--group", "A")
	mustRun(t, sendCmd(), addr, "a2\na3\n", "orders", "--group", "A")
	mustRun(t, sendCmd(), addr, "", "orders", "n1")

	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--max", "10", "--json")), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Body != "a1" || got[0].Group != "A" || got[1].Body != "n1" || got[1].Group != "" {
		t.Fatalf("recv --json = %+v; want a1 of group A and n1 without a group (a2 waits behind a1)", got)
	}

	var p peekJSON
	if err := json.Unmarshal([]byte(mustRun(t, peekCmd(), addr, "", "orders", "--leader", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, m := range p.Messages {
		states = append(states, fmt.Sprintf("%s:%s:%s", m.Body, m.State, m.Group))
	}
	if want := "a1:leased:A a2:waiting:A a3:waiting:A n1:leased:"; strings.Join(states, " ") != want {
		t.Fatalf("peek --json = %s; want %s", strings.Join(states, " "), want)
	}
	text := mustRun(t, peekCmd(), addr, "", "orders", "--leader", "--state", "waiting")
	if !strings.Contains(text, "GROUP") || strings.Count(text, "waiting") != 2 || strings.Contains(text, "a1") {
		t.Errorf("peek --state waiting printed\n%s\nwant a GROUP column and a2, a3 waiting", text)
	}

	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "orders", "--json")), &q); err != nil || q.Waiting != 2 || q.Groups != 1 {
		t.Fatalf("queue stats --json = %+v (%v); want 2 waiting in 1 group", q, err)
	}
	stats := mustRun(t, queueStatsCmd(), addr, "", "orders")
	for _, row := range []string{"waiting", "groups"} {
		if !strings.Contains(stats, row+" ") {
			t.Errorf("queue stats printed\n%s\nwant a %q row", stats, row)
		}
	}
	a2 := fmt.Sprint(p.Messages[1].ID)
	if out := mustRun(t, getCmd(), addr, "", "orders", "--id", a2, "--leader"); !strings.Contains(out, "waiting") || !strings.Contains(out, `group "A"`) {
		t.Errorf("get --id %s printed %q; want it waiting in group \"A\"", a2, out)
	}

	// recv's table shows the group column once a message has a group.
	mustRun(t, ackCmd(), addr, "", "orders", got[0].Receipt)
	if out := mustRun(t, recvCmd(), addr, "", "orders", "--max", "10"); !strings.Contains(out, "GROUP") || !strings.Contains(out, "a2") {
		t.Errorf("recv printed\n%s\nwant a2 with a GROUP column", out)
	}

	// bench --groups: the producers' messages go to g-0 .. g-N-1, in turn.
	mustRun(t, queueCreateCmd(), addr, "", "spread")
	var res benchResult
	out := mustRun(t, benchCmd(), addr, "", "--queue", "spread", "--producers", "1", "--consumers", "0", "--count", "12", "--groups", "3", "--duration", "20s", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Config.Groups != 3 || res.Sent != 12 {
		t.Fatalf("bench --groups 3 --json = %s (%v); want 12 sent over 3 groups", out, err)
	}
	if err := json.Unmarshal([]byte(mustRun(t, peekCmd(), addr, "", "spread", "--leader", "--no-body", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	perGroup := map[string]int{}
	for _, m := range p.Messages {
		perGroup[m.Group]++
	}
	if len(perGroup) != 3 || perGroup["g-0"] != 4 || perGroup["g-1"] != 4 || perGroup["g-2"] != 4 {
		t.Errorf("bench --groups 3 sent messages of groups %v; want 4 each of g-0, g-1, g-2", perGroup)
	}
	// With --prefill the prefilled messages are grouped too, and the
	// consumers drain them in the group order.
	out = mustRun(t, benchCmd(), addr, "", "--prefill", "10", "--groups", "2", "--producers", "0", "--consumers", "3", "--batch", "10", "--duration", "20s")
	if !regexp.MustCompile(`message groups +2 \(g-0 \.\. g-1\)`).MatchString(out) || !regexp.MustCompile(`acked +10 \(0 errors\)`).MatchString(out) {
		t.Errorf("bench --prefill 10 --groups 2 printed\n%s\nwant 10 acked over 2 message groups", out)
	}
	out = mustRun(t, benchCmd(), addr, "", "--producers", "2", "--consumers", "2", "--duration", "1s", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Config.Groups != 0 || res.Acked == 0 {
		t.Errorf("bench without --groups = %s (%v); want messages acked, groups 0", out, err)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--groups", "-1"}, "--groups"},
		{[]string{"--groups", "3", "--queue", "spread", "--producers", "0", "--consumers", "1"}, "--groups"},
	} {
		if _, err := run(t, benchCmd(), addr, "", bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("bench %v = %v; want an error naming %q", bad.args, err, bad.want)
		}
	}
	long := strings.Repeat("g", 129)
	if _, err := run(t, sendCmd(), "127.0.0.1:1", "", "orders", "x", "--group", long); err == nil || !strings.Contains(err.Error(), "--group: group is 129 bytes, limit is 128") {
		t.Errorf("send --group of 129 bytes = %v; want refused naming the limit, before connecting", err)
	}
}
