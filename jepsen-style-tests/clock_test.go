package jepsen

import (
	"testing"
	"time"
)

// TestClockNemesisBitesInTheSuite is the suite's proof that a clock the
// cluster follows breaks leases and dedup, and that the checker says so:
// the servers stamp commands with the leader's wall clock
// (--fake-clock-wall-stamps, the behaviour before cluster time) and the
// leader's clock jumps +1 h. Leases end at once and dedup entries are
// forgotten: the case must be invalid, with early redeliveries and sends
// inside their dedup window enqueued again.
func TestClockNemesisBitesInTheSuite(t *testing.T) {
	res := runMustFail(t, CaseConfig{
		Name:      "clock-wall-stamps",
		Schedule:  Schedule{Nemeses: []Nemesis{&clockJumps{steps: []clockStep{leaderForward}}}, Cycles: 1, Quiet: [2]time.Duration{3 * time.Second, 3 * time.Second}, Fault: [2]time.Duration{5 * time.Second, 5 * time.Second}},
		ExtraArgs: []string{"--fake-clock-wall-stamps", "--log-level", "debug"},
	}, nil, "the leader stamped commands an hour ahead")
	var early, dedup int
	for _, q := range res.Queues {
		early += q.EarlyRedeliveries
		dedup += q.DedupWindowViolations
	}
	if early == 0 || dedup == 0 {
		t.Fatalf("early redeliveries %d, sends enqueued again inside their dedup window %d: the clock nemesis or the checker does not bite", early, dedup)
	}
	t.Logf("the checker reports %d early redeliveries and %d sends enqueued again inside their dedup window", early, dedup)
}
