package cluster

import (
	"context"
	"strings"
	"testing"
)

func TestStartLocalRefusesALayoutItCannotListenOn(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts LocalOptions
		want string
	}{
		{"no nodes", LocalOptions{N: 0}, "LocalOptions.N 0: want 1..100"},
		{"API ports run into Raft ports", LocalOptions{N: MaxLocalNodes + 1}, "LocalOptions.N 101: want 1..100"},
		{"negative base port", LocalOptions{N: 3, BasePort: -1}, "LocalOptions.BasePort -1: want 0 (free ports) or 1..65133"},
		{"last HTTP API port above 65535", LocalOptions{N: 3, BasePort: MaxLocalBasePort(3) + 1}, "LocalOptions.BasePort 65134: want 0 (free ports) or 1..65133 so that base+402 stays a valid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Dir = t.TempDir()
			lc, err := StartLocal(context.Background(), tc.opts)
			if err == nil {
				lc.Close()
				t.Fatalf("StartLocal(%+v) started a cluster; want an error", tc.opts)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartLocal(%+v) = %v; want %q", tc.opts, err, tc.want)
			}
		})
	}
}
