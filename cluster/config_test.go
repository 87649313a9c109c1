package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A bad node ID stops Start with what is wrong with it.
func TestStartRefusesBadNodeIDsNamingTheProblem(t *testing.T) {
	for _, tc := range []struct {
		id, want string
	}{
		{"", "node ID is empty: want 1..128 characters of [A-Za-z0-9._-]"},
		{"n/1", `node ID "n/1" has '/' at byte 1, allowed are [A-Za-z0-9._-]`},
		{"nö", `node ID "nö" has 'ö' at byte 1, allowed are [A-Za-z0-9._-]`},
		{strings.Repeat("n", 129), `node ID "` + strings.Repeat("n", 129) + `" is 129 bytes, limit is 128`},
	} {
		checkStartRefused(t, Config{NodeID: tc.id, DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", BootstrapExpect: 1}, tc.want)
	}
}

// checkStartRefused starts a node with cfg and fails t unless Start refuses
// it with ErrConfig and the message want.
func checkStartRefused(t *testing.T, cfg Config, want string) {
	t.Helper()
	n, err := Start(context.Background(), cfg)
	if err == nil {
		n.Kill()
		t.Errorf("node %q started, want %q", cfg.NodeID, want)
		return
	}
	if !errors.Is(err, ErrConfig) || err.Error() != ErrConfig.Error()+": "+want {
		t.Errorf("%v, want ErrConfig: %q", err, want)
	}
}
