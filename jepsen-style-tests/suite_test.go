package jepsen

import (
	"context"
	"testing"
)

// TestJepsen runs the network part of the suite (RunSuite); ./disk runs
// the disk part.
func TestJepsen(t *testing.T) { RunSuite(t, NetworkPart) }

// runMustFail runs a must-fail case (Test*NemesisBitesInTheSuite) with
// a fresh seed, the built server and the usual report folder, and fails
// the test when the case comes out valid although fault (what the case
// broke) holds. It skips outside the long profile, and when available
// (nil: nothing needed) says why what the case needs is missing.
// cfg.Netns asks for network namespaces where this machine has them.
func runMustFail(t *testing.T, cfg CaseConfig, available func() error, fault string) *Result {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: starts a cluster (-short)")
	}
	if !longProfile() {
		t.Skip("skipping: a must-fail case, run with the long profile (-long or QUORUMQ_JEPSEN_LONG=1)")
	}
	if available != nil {
		if err := available(); err != nil {
			t.Skipf("skipping: %v", err)
		}
	}
	if cfg.Netns {
		cfg.Netns, _ = CanUseNetns()
	}
	cfg.Seed, cfg.Bin, cfg.ReportRoot = caseSeed(), binary(t), reportRoot()
	t.Logf("seed %d", cfg.Seed)
	res, err := RunCase(context.Background(), cfg)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Log("\n" + res.Summary())
	if res.Valid {
		t.Fatalf("the case is valid although %s", fault)
	}
	return res
}
